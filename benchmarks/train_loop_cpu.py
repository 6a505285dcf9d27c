"""Seconds per step of the real SciFact training loop on CPU, before and after the CPU settings, side by side.

benchmarks/train_step_speed.py and train_step_allocators.py time the jitted step alone on a fixed
random batch. This times what a SciFact run does: `python -m bpr_jax.main --config=configs/scifact.py`
(MiniLM BPR, the 48 B recipe: STE, batch 16 with 1 BM25 hard negative, questions <= 64 and passages
<= 256 tokens) on SciFact train minus the seeded dev split (benchmarks/scifact.py's WORK/scifact-split
and hard negatives, made once in --work_dir), a fresh workdir per run, VARIANTS alternating round by
round (A B C .. A B C ..), one at a time. Per run: seconds per step after the first logged interval
(compile and first steps excluded: from metrics.jsonl's examples_per_s, log_every = 10), the whole
process's wall seconds, its peak resident memory (wait4) and its resident memory every 10 s
(rss_gb_trace: whether a kept-pages allocator keeps growing), the final loss. Variants:

  before        configs/scifact.py as it is: attention dropout follows dropout (0.1, BERT's and the
                paper's recipe), batches padded to their longest row rounded up to 32, glibc malloc
  after         model.attention_dropout=0 (what the committed SciFact runs train with)
  after_fixed_jemalloc
                after + data.pad_multiple=0 (one batch shape: q 64 / p 256) under
                `python -m bpr_jax.cpu_env --allocator=jemalloc` (needs libjemalloc2): one shape, so the
                allocator's kept pages stay bounded (bucketed shapes made it grow until it was killed)
  after_fixed_heap
                after + data.pad_multiple=0 under --allocator=heap (glibc tunables only)

A run that fails (killed for memory, say) is recorded with its exit status and peak memory.
Padding and allocator change no value; different padded shapes draw other dropout masks (other
random numbers, same rates), so the losses differ between bucketed and fixed runs.

  OPENBLAS_NUM_THREADS=1 python benchmarks/train_loop_cpu.py --work_dir=/tmp/scifact-bench
  python benchmarks/train_loop_cpu.py --variants=before,after_fixed_jemalloc --steps=30 --rounds=2

Results: benchmarks/results/train_loop_cpu.json (and a table on stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common, scifact  # noqa: E402
from benchmarks.common import REPO, log  # noqa: E402
from bpr_jax import cpu_env  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "train_loop_cpu.json"
RSS_EVERY_S = 10.0  # how often a run's resident memory is sampled (rss_gb_trace: does it keep growing?)
RECIPE = ["mode=bpr", "loss.relaxation=ste"]  # the 48 B recipe (configs/scifact.py docstring)
VARIANTS = {  # name: (config overrides, allocator)
    "before": ([], "default"),
    "after": (["model.attention_dropout=0.0"], "default"),
    "after_fixed_jemalloc": (["model.attention_dropout=0.0", "data.pad_multiple=0"], "jemalloc"),
    "after_fixed_heap": (["model.attention_dropout=0.0", "data.pad_multiple=0"], "heap"),
}


def logged_metrics(metrics_path: pathlib.Path) -> list[dict]:
  """The run's metrics.jsonl lines ([] when it wrote none)."""
  text = metrics_path.read_text() if metrics_path.exists() else ""
  return [json.loads(l) for l in text.splitlines() if l.strip()]


def steady_step_seconds(metrics_path: pathlib.Path, batch: int) -> float | None:
  """Median seconds per step over the logged intervals after the first (which holds the compile)."""
  rates = [m["examples_per_s"] for m in logged_metrics(metrics_path)[1:] if m.get("examples_per_s")]
  return round(statistics.median(batch / r for r in rates), 3) if rates else None


def resident_gb(pid: int) -> float | None:
  """The process's resident memory now (VmRSS), in GiB; None once it is gone."""
  try:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
      if line.startswith("VmRSS:"):
        return round(int(line.split()[1]) / 2**20, 2)
  except OSError:
    return None
  return None


def wait_tracing_rss(pid: int, t0: float, every_s: float = RSS_EVERY_S):
  """Waits for child `pid`; returns (wait status, its rusage, [[seconds since t0, resident GiB], ...])."""
  trace = []
  while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
      return status, usage, trace
    rss = resident_gb(pid)
    if rss is not None:
      trace.append([round(time.perf_counter() - t0), rss])
    time.sleep(every_s)


def run_once(name: str, work: pathlib.Path, beir: pathlib.Path, env: dict, steps: int) -> dict:
  """One fresh training run of variant `name`; its figures."""
  overrides, allocator = VARIANTS[name]
  run = work / "train-loop-cpu" / name
  shutil.rmtree(run, ignore_errors=True)
  run.parent.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "bpr_jax.main", "--config=configs/scifact.py", f"--workdir={run}",
         f"--config.data.beir_dir={beir}", f"--config.data.token_cache_dir={work / 'token_cache'}",
         f"--config.num_train_steps={steps}", f"--config.checkpoint_every={10 * steps}"]
  cmd += [f"--config.{o}" for o in RECIPE + overrides]
  log(f"{name}: {' '.join(cmd[1:])} (allocator {allocator})")
  t0 = time.perf_counter()
  with open(work / f"train-loop-cpu-{name}.log", "a", encoding="utf-8") as f:
    clean = {k: v for k, v in env.items() if k not in cpu_env.VARIABLES}  # 'default' means glibc's own
    proc = subprocess.Popen(cmd, cwd=REPO, env=cpu_env.with_allocator(clean, allocator), stdout=f,
                            stderr=subprocess.STDOUT)
    status, usage, trace = wait_tracing_rss(proc.pid, t0)
  wall = time.perf_counter() - t0
  code = os.waitstatus_to_exitcode(status)
  metrics = run / "metrics.jsonl"
  last = (logged_metrics(metrics) or [{}])[-1]
  batch = json.loads((run / "config.json").read_text())["batch_size"] if last else 0  # config.json precedes metrics
  return {"variant": name, "exit_code": code, "wall_s": round(wall, 1), "steps_done": last.get("step", 0),
          "step_s": steady_step_seconds(metrics, batch) if last else None, "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
          "user_s": round(usage.ru_utime, 1), "system_s": round(usage.ru_stime, 1), "final_loss": last.get("loss"),
          "rss_gb_trace": trace}


def summarize(runs: list[dict], names: list[str]) -> list[dict]:
  """Per variant: median step seconds and wall, worst peak memory, speedup against the first variant."""
  rows = []
  for name in names:
    mine = [r for r in runs if r["variant"] == name]
    ok = [r for r in mine if r["exit_code"] == 0 and r["step_s"]]
    rows.append({"variant": name, "overrides": VARIANTS[name][0], "allocator": VARIANTS[name][1],
                 "runs": len(mine), "failed": len(mine) - len(ok),
                 "step_s_median": round(statistics.median(r["step_s"] for r in ok), 3) if ok else None,
                 "wall_s_median": round(statistics.median(r["wall_s"] for r in ok), 1) if ok else None,
                 "peak_rss_gb_max": max(r["peak_rss_gb"] for r in mine) if mine else None,
                 "exit_codes": [r["exit_code"] for r in mine]})
  base = rows[0]["step_s_median"] if rows else None
  for row in rows:
    row["speedup_vs_first"] = round(base / row["step_s_median"], 2) if base and row["step_s_median"] else None
  return rows


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--work_dir", default="/tmp/scifact-bench")
  p.add_argument("--variants", default="before,after,after_fixed_jemalloc")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--output", default=str(RESULTS))
  p.add_argument("--note", default="")
  args = p.parse_args(argv)
  names = [v for v in args.variants.split(",") if v]
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    raise SystemExit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
  if args.steps < 20:
    raise SystemExit("--steps must be >= 20 (two logged intervals of 10: the first holds the compile)")
  for name in names:
    cpu_env.allocator_env(VARIANTS[name][1])  # FileNotFoundError now, not after an hour, if jemalloc is missing
  work = pathlib.Path(args.work_dir)
  beir, env = scifact.prepare_train_data(work)
  runs = []
  for round_ in range(args.rounds):
    for name in names:
      runs.append({"round": round_, **run_once(name, work, beir, env, args.steps)})
      log(json.dumps(runs[-1]))
  rows = summarize(runs, names)
  out = {"benchmark": "train_loop_cpu", "steps": args.steps, "rounds": args.rounds, "recipe": RECIPE,
         "command": "python benchmarks/train_loop_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
         "note": args.note, "machine": common.machine_info(with_jax=False), "rows": rows, "runs": runs}
  pathlib.Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
  print("| variant | s/step (median) | speedup | whole-process wall s | peak RSS GB | exit codes |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['variant']} | {r['step_s_median']} | {r['speedup_vs_first']} | {r['wall_s_median']} | "
          f"{r['peak_rss_gb_max']} | {r['exit_codes']} |")
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
