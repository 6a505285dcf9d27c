"""Train-step seconds per step under each memory allocator and XLA CPU setting, side by side in one run.

The allocator is a process setting (LD_PRELOAD, GLIBC_TUNABLES: bpr_jax/cpu_env.py), and so are
XLA's CPU flags (XLA_FLAGS, read when the backend starts), so each VARIANT:ALLOCATOR[:XLA] combination
(XLA one of XLA_PRESETS, default none) runs in its own worker process: the real jitted BPR train step of
benchmarks/train_step_speed.py's variant (same config values, same fixed random batch, same
shapes), started one after another (compile + --warmup steps each), then timed round by round
(A B C .. A B C ..), one worker stepping at a time. Each timed step also records the worker's
minor page faults and user / system CPU seconds (getrusage), so where the time goes shows:
under glibc's default every step faults its activation buffers in again and the kernel zeroes
them. Reported per combination: median seconds per step, faults, user and system seconds per
step, peak resident memory, the final loss (equal across allocators: no value changes), the
speedup against the first combination, and how close the step runs to this CPU's practical peak:
XLA's FLOP count of the compiled step (cost_analysis) over its seconds, against the best rate of a
jitted 2048^3 float32 matmul in the same worker.

  OPENBLAS_NUM_THREADS=1 python benchmarks/train_step_allocators.py
  python benchmarks/train_step_allocators.py --combos=before:default,after:default,after:thp,after:jemalloc

  python benchmarks/train_step_allocators.py --combos=after:default,after:heap --rounds=6 \
      --output=benchmarks/results/train_step_allocators_heap.json
  python benchmarks/train_step_allocators.py --combos=after:default,after:default:onednn --rounds=6 \
      --output=benchmarks/results/train_step_xla_onednn.json

Workers live side by side, so a combination that keeps its memory (heap, jemalloc) leaves the
others less free memory: their system time can rise (see each row's system_s_per_step).
jemalloc needs libjemalloc.so.2 installed (apt install libjemalloc2); its combos are skipped,
and said so, where it is not. Results: benchmarks/results/train_step_allocators.json.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks.common import REPO  # noqa: E402
from bpr_jax import cpu_env  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "train_step_allocators.json"
DEFAULT_COMBOS = "before:default,after:default,after:thp,after:jemalloc"
# XLA CPU settings a worker can add to XLA_FLAGS (flags of jaxlib 0.10's XLA; fastmath changes values)
XLA_PRESETS = {
    "none": "",
    "onednn": "--xla_cpu_use_onednn=true",            # oneDNN matmuls / fusions
    "xnnpack": "--xla_cpu_use_xnnpack=true",          # XNNPACK dots
    "vec512": "--xla_cpu_prefer_vector_width=512",    # 512-bit vectors in XLA's own kernels (AVX-512 CPUs)
    "fastmath": "--xla_cpu_enable_fast_math=true",    # reassociation, approximate functions: other values
    "concurrent": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  """What XLA reaches on this CPU at its best: a jitted float32 n x n matmul, best of `repeats`, GFLOP/s."""
  import time
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return round(2 * n ** 3 / best / 1e9, 1)


def worker(args) -> None:
  """One variant's step, driven over stdin ('step' / 'quit'); one JSON line out per command."""
  import resource
  from benchmarks import train_step_speed as speed
  v = speed.Variant(args.worker, args, speed.VARIANTS[args.worker])
  for _ in range(args.warmup):
    v.step()
  compile_s = sum(v.compiles[-1])
  cost = v.compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  print(json.dumps({"ready": True, "compile_s": round(compile_s, 2), "step_gflop": float((cost or {}).get("flops", 0)) / 1e9,
                    "matmul_gflops": matmul_gflops()}), flush=True)
  for line in sys.stdin:
    if line.strip() != "step":
      break
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    seconds = v.step()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"step_s": seconds, "minflt": r1.ru_minflt - r0.ru_minflt,
                      "utime_s": r1.ru_utime - r0.ru_utime, "stime_s": r1.ru_stime - r0.ru_stime,
                      "loss": v.loss}), flush=True)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(json.dumps({"maxrss_gb": round(peak / 1e6, 2)}), flush=True)


class Worker:
  def __init__(self, variant: str, allocator: str, args, xla: str = "none"):
    self.variant, self.allocator, self.xla, self.steps = variant, allocator, xla, []
    self.env = cpu_env.with_allocator(cpu_env.without_allocator(dict(os.environ)), allocator)
    if XLA_PRESETS[xla]:
      self.env["XLA_FLAGS"] = (self.env.get("XLA_FLAGS", "") + " " + XLA_PRESETS[xla]).strip()
    cmd = [sys.executable, __file__, f"--worker={variant}", f"--batch={args.batch}", f"--q_len={args.q_len}",
           f"--p_len={args.p_len}", f"--negatives={args.negatives}", f"--warmup={args.warmup}"]
    self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
    self.ready = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f"worker {self.name} died (rc {self.proc.wait()})")
    return json.loads(line)

  @property
  def name(self) -> str:
    return f"{self.variant}:{self.allocator}" + (f":{self.xla}" if self.xla != "none" else "")

  def step(self) -> dict:
    self.proc.stdin.write("step\n")
    self.proc.stdin.flush()
    out = self._read()
    self.steps.append(out)
    return out

  def close(self) -> dict:
    self.proc.stdin.write("quit\n")
    self.proc.stdin.flush()
    out = self._read()
    self.proc.wait()
    return out

  def row(self, peak: dict) -> dict:
    med = lambda k: statistics.median(s[k] for s in self.steps)  # noqa: E731
    gflop, matmul = self.ready.get("step_gflop", 0.0), self.ready.get("matmul_gflops")
    return {"variant": self.variant, "allocator": self.allocator, "xla": self.xla,
            "env": {k: self.env[k] for k in cpu_env.VARIABLES + ("XLA_FLAGS",) if k in self.env},
            "compile_s": self.ready["compile_s"], "step_s_median": round(med("step_s"), 4),
            "step_s_all": [round(s["step_s"], 4) for s in self.steps],
            "minor_faults_per_step": int(med("minflt")), "user_s_per_step": round(med("utime_s"), 3),
            "system_s_per_step": round(med("stime_s"), 3), "maxrss_gb": peak["maxrss_gb"],
            # XLA's own FLOP count of the compiled step, the rate reached, and that rate against
            # the same process's best float32 matmul (what is left to gain on this CPU)
            "step_gflop": round(gflop, 1), "gflops": round(gflop / med("step_s"), 1), "matmul_gflops": matmul,
            "of_matmul": round(gflop / med("step_s") / matmul, 3) if matmul else None,
            "final_loss": self.steps[-1]["loss"]}


def parse_combos(text: str) -> list[tuple[str, str, str]]:
  """'after:default:onednn,before' -> [('after', 'default', 'onednn'), ('before', 'default', 'none')]."""
  from benchmarks.train_step_speed import VARIANTS
  combos = []
  for item in filter(None, text.split(",")):
    variant, allocator, xla = (item.split(":") + ["", ""])[:3]
    allocator, xla = allocator or "default", xla or "none"
    if variant not in VARIANTS or allocator not in cpu_env.ALLOCATORS or xla not in XLA_PRESETS or item.count(":") > 2:
      raise SystemExit(f"bad combo {item!r}: VARIANT:ALLOCATOR[:XLA] with VARIANT in {', '.join(VARIANTS)}, "
                       f"ALLOCATOR in {', '.join(cpu_env.ALLOCATORS)} and XLA in {', '.join(XLA_PRESETS)}")
    combos.append((variant, allocator, xla))
  return combos


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--combos", default=DEFAULT_COMBOS, help="comma list of VARIANT:ALLOCATOR[:XLA]")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--q_len", type=int, default=64)
  p.add_argument("--p_len", type=int, default=256)
  p.add_argument("--negatives", type=int, default=1)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--output", default=str(RESULTS))
  p.add_argument("--note", default="")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    return worker(args)
  combos, skipped = [], []
  for variant, allocator, xla in parse_combos(args.combos):
    if allocator == "jemalloc" and cpu_env.find_jemalloc() is None:
      skipped.append(f"{variant}:{allocator} (no libjemalloc.so.2 installed)")
      continue
    combos.append((variant, allocator, xla))
  for s in skipped:
    common.log(f"skipped {s}")
  workers = []
  for variant, allocator, xla in combos:
    common.log(f"{variant}:{allocator}:{xla}: starting (compile + {args.warmup} warm-up steps)")
    workers.append(Worker(variant, allocator, args, xla))
  for r in range(args.rounds):
    for w in workers:
      s = w.step()
      common.log(f"round {r}: {w.name} {s['step_s']:.3f}s, {s['minflt']} faults, "
                 f"sys {s['stime_s']:.2f}s")
  rows = [w.row(w.close()) for w in workers]
  base = rows[0]["step_s_median"] if rows else None
  lines = ["| combo | step_s_median | speedup | faults/step | user_s | system_s | maxrss_gb | GFLOP/s (of matmul) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    r["speedup_vs_first"] = round(base / r["step_s_median"], 2)
    lines.append(f"| {r['variant']}:{r['allocator']}" + (f":{r['xla']}" if r["xla"] != "none" else "")
                 + f" | {r['step_s_median']} | {r['speedup_vs_first']} | "
                 f"{r['minor_faults_per_step']} | {r['user_s_per_step']} | {r['system_s_per_step']} | {r['maxrss_gb']} | "
                 f"{r['gflops']} ({r['of_matmul']}) |")
  result = {"benchmark": "train_step_allocators", "model": "all-MiniLM-L6-v2", "mode": "bpr",
            "batch": args.batch, "question_length": args.q_len, "passage_length": args.p_len,
            "num_hard_negatives": args.negatives, "warmup_steps": args.warmup, "rounds": args.rounds,
            "skipped": skipped, "machine": common.machine_info(with_jax=False), "load_average": os.getloadavg(),
            "command": "python benchmarks/train_step_allocators.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "note": args.note, "rows": rows}
  out = common.write_result(args.output, result)
  print("\n".join(lines))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
