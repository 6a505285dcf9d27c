"""The process environment that makes CPU training steps cheaper: the memory allocator's settings.

On the CPU backend XLA allocates each step's activation buffers (tens to hundreds of MB each)
with malloc, and glibc serves blocks that size with a fresh mmap and returns them with munmap.
Every step then faults its whole working set in again, one 4 KiB page at a time, and the kernel
zeroes each page: measured with MiniLM BPR at batch 16, q 64 / p 256 on a 2-core Xeon, 1.35M
minor page faults and 1.7-2.0 s of system time per step next to 8.2-9.6 s of user time (idle box)
(benchmarks/train_speed.py --what=allocators). Three settings change that, all set before the process
starts, none the default, because none is a safe win:

  jemalloc  LD_PRELOAD=libjemalloc.so.2 with MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
            (`apt install libjemalloc2`): freed pages are never returned and are reused next step
            (system time ~0; 4.58 s/step against 6.06 under glibc in the same 4-worker run). For
            ONE fixed batch shape only: with the pipeline's bucketed shapes each new shape's
            buffers add to what is kept, and a 200-step SciFact run grew past 24 GB and was
            OOM-killed at step ~75. With jemalloc's default decay (10 s) the faults come back.
            With one shape (--config.data.pad_multiple=0) the real SciFact loop stays bounded:
            peak 11.6-14.7 GB in 30-step runs, 11.0-11.4 GB resident from the first steps to
            step 100 (peak 11.8), against 6.5-7.1 GB under glibc, and 1.25x faster than glibc
            with bucketed shapes (6.22 vs 7.80 s/step; benchmarks/train_speed.py --what=loop, AMD EPYC).
  heap      GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1T:glibc.malloc.arena_max=1
            (nothing to install): glibc serves every block from one heap and never trims it, so
            freed buffers are reused (0 faults/step; 4.83 s/step against 7.73 under the default
            in the same run, peak RSS 10.9 GB against 6.4: benchmarks/results/
            train_step_allocators_heap.json; the default's system time rose there to 5.8 s/step,
            1.8-2.1 s without the heap worker's 10.9 GB beside it). For ONE fixed batch shape
            only, as jemalloc: a SciFact run (two question lengths) reached 16 GB by step ~10 and
            20.7 GB at step 21, when it was stopped. With top_pad=1G added even a fixed shape grew
            (10.9 -> 15.8 GB at step 10). The real training loop with one shape
            (--config.data.pad_multiple=0) was killed for memory (23 GB) before its 10th step,
            every time (benchmarks/train_speed.py --what=loop): for the step benchmarks only.
  thp       GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc >= 2.35): 2 MiB transparent huge pages,
            ~150x fewer faults, but the kernel's compaction and zeroing of huge pages made the
            step slower on an idle box (9.72 s against 5.33, system time 10.6 s/step) while it
            was faster under load: measure before using it.

None changes a computed value: the same step gives bit-identical losses.
Accelerator backends allocate device memory through their own allocators; this is for CPU runs.

  eval "$(python benchmarks/cpu_env.py --allocator=jemalloc)"      # one fixed batch shape only
  python benchmarks/train_speed.py --what=allocators                # the comparison, side by side

A benchmark helper, not part of the bpr_jax package: benchmarks/train_speed.py and
benchmarks/scifact.py (--allocator) start their training processes with these settings.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

ALLOCATORS = ("default", "heap", "jemalloc", "thp")
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
THP_TUNABLE = "glibc.malloc.hugetlb=1"
# glibc keeps big blocks in its heap (no mmap per block) and never gives the top of the heap back:
# freed buffers are coalesced and reused next step; the heap stays at the peak working set.
HEAP_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776:glibc.malloc.arena_max=1"
VARIABLES = ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")  # what the settings below set
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2",
)


def find_jemalloc(paths=JEMALLOC_PATHS) -> str | None:
  """The first installed libjemalloc.so.2 of `paths` ($BPR_JEMALLOC first when set), or None."""
  explicit = os.environ.get("BPR_JEMALLOC")
  for path in ((explicit,) if explicit else ()) + tuple(paths):
    if path and os.path.isfile(path):
      return path
  return None


def _prepend(value: str, current: str | None, sep: str) -> str:
  parts = [p for p in (current or "").split(sep) if p]
  return sep.join([value] + [p for p in parts if p != value])


def allocator_env(allocator: str = "default", environ=None, *, jemalloc_paths=JEMALLOC_PATHS) -> dict[str, str]:
  """The variables to set (merged with `environ`'s own) for `allocator`; {} for 'default'.

  Raises ValueError for an unknown allocator, and FileNotFoundError for 'jemalloc' where no
  libjemalloc.so.2 is installed (nothing is changed then).
  """
  if allocator not in ALLOCATORS:
    raise ValueError(f"allocator must be one of {ALLOCATORS}, got {allocator!r}")
  environ = os.environ if environ is None else environ
  if allocator == "heap":
    return {"GLIBC_TUNABLES": _prepend(HEAP_TUNABLES, environ.get("GLIBC_TUNABLES"), ":")}
  if allocator == "thp":
    return {"GLIBC_TUNABLES": _prepend(THP_TUNABLE, environ.get("GLIBC_TUNABLES"), ":")}
  if allocator == "jemalloc":
    lib = find_jemalloc(jemalloc_paths)
    if lib is None:
      raise FileNotFoundError(f"no libjemalloc.so.2 in {', '.join(jemalloc_paths)} (set $BPR_JEMALLOC, or "
                              "install it: apt install libjemalloc2); --allocator=thp needs nothing installed")
    return {"LD_PRELOAD": _prepend(lib, environ.get("LD_PRELOAD"), ":"),
            "MALLOC_CONF": _prepend(JEMALLOC_CONF, environ.get("MALLOC_CONF"), ",")}
  return {}


def without_allocator(environ: dict) -> dict:
  """A copy of `environ` without the variables any of these settings sets (the default allocator)."""
  return {k: v for k, v in environ.items() if k not in VARIABLES}


def with_allocator(environ: dict, allocator: str = "default") -> dict:
  """A copy of `environ` with `allocator`'s settings applied (for subprocesses)."""
  return {**environ, **allocator_env(allocator, environ)}


def active_allocator(environ=None) -> str:
  """Which of these settings `environ` (default: this process's) runs under: jemalloc, thp or default."""
  environ = os.environ if environ is None else environ
  if "jemalloc" in environ.get("LD_PRELOAD", ""):
    return "jemalloc"
  if HEAP_TUNABLES in environ.get("GLIBC_TUNABLES", ""):
    return "heap"
  if THP_TUNABLE in environ.get("GLIBC_TUNABLES", ""):
    return "thp"
  return "default"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Print shell `export` lines of the CPU allocator settings.")
  p.add_argument("--allocator", required=True, choices=ALLOCATORS)
  args = p.parse_args(argv)
  try:
    env = allocator_env(args.allocator)
  except FileNotFoundError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  for key, value in env.items():
    print(f"export {key}={shlex.quote(value)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
