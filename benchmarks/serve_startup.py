"""Time from start to first answer of the search service, before and after the start-up rework.

  python benchmarks/serve_startup.py [--workdir=DIR] [--passages_n=1500] [--rounds=2]

Serves the shared all-MiniLM-L6-v2 export (`bpr_jax.export --hf_model=... --pooling=mean`,
question length 256) over a SciFact subset (the first `--passages_n` passages of
$BPR_SHARED_DIR/data/scifact/corpus.jsonl, encoded and indexed once into --workdir, reused when
present) and measures, per start, on 127.0.0.1:

  * `first_health_s`: process start -> the first /health response (any status);
  * `first_search_s`: process start -> the first successful /search response (one question).

Variants, alternating over `--rounds` rounds (order: before, after_cold, after_warm):

  * `before`: the committed service (`git show HEAD:bpr_jax/serve.py`, run from a temp copy with
    this checkout's package): warm-up of every shape before the port is bound;
  * `after_cold`: this service with an empty persistent compilation cache (a fresh folder);
  * `after_warm`: this service restarted on the cache the cold start of the same round filled.

It also records the number of shapes each warm-up compiles (the committed code's
`batch_sizes`/`k_buckets` and `ExportedModel.warmup_questions`' rows x lengths; this code's
`question_shapes` and `search_shapes`) and checks that all variants return the same results
(ids and scores) for a few SciFact questions.  Writes benchmarks/results/serve_startup.json.
Other work on the machine slows every start alike; the load average is recorded with each run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

REPO = common.REPO
QUESTIONS_PER_CHECK = 8


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
  common.log(" ".join(cmd))
  subprocess.run(cmd, cwd=REPO, check=True)


def prepare(workdir: pathlib.Path, n: int) -> dict[str, pathlib.Path]:
  """The MiniLM export, an n-passage SciFact corpus, its codes and flat index (made once)."""
  shared = common.shared_dir()
  workdir.mkdir(parents=True, exist_ok=True)
  p = {"model": workdir / "E", "passages": workdir / "corpus.jsonl", "codes": workdir / "codes",
       "index": workdir / "index"}
  if not (p["model"] / "bpr.json").is_file():
    _run([sys.executable, "-m", "bpr_jax.export", f"--hf_model={shared / 'models' / 'all-MiniLM-L6-v2'}",
          "--pooling=mean", f"--output={p['model']}"])
  if not p["passages"].is_file():
    with open(shared / "data" / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
      lines = [next(f) for _ in range(n)]
    from bpr_jax.io import atomic_write_text
    atomic_write_text(p["passages"], "".join(lines))
  if not (p["index"] / "meta.json").is_file():
    _run([sys.executable, "-m", "bpr_jax.encode", f"--model={p['model']}",
          f"--passages={p['passages']}", f"--output={p['codes']}", "--batch_size=64"])
    _run([sys.executable, "-m", "bpr_jax.index", f"--codes={p['codes']}", f"--output={p['index']}",
          "--kind=flat"])
  return p


def _questions(k: int) -> list[str]:
  path = common.shared_dir() / "data" / "scifact" / "queries.jsonl"
  with open(path, encoding="utf-8") as f:
    return [json.loads(next(f))["text"] for _ in range(k)]


def _request(url: str, body: Any | None, timeout: float) -> tuple[int, Any]:
  data = None if body is None else json.dumps(body).encode()
  req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read() or b"null")


def start_and_time(cmd: list[str], env: dict[str, str], log_path: pathlib.Path,
                   questions: list[str], limit_s: float) -> dict[str, Any]:
  """Starts a server, times its first /health and first /search answers, checks results, stops it."""
  port = int(next(a for a in cmd if a.startswith("--port=")).split("=", 1)[1])
  url = f"http://127.0.0.1:{port}"
  load_before = os.getloadavg()[0]
  t0 = time.monotonic()
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  out: dict[str, Any] = {}
  try:
    deadline = t0 + limit_s
    while "first_health_s" not in out:  # bounded by the deadline
      if proc.poll() is not None:
        raise RuntimeError(f"server exited {proc.returncode}: {log_path.read_text()[-2000:]}")
      try:
        status, body = _request(f"{url}/health", None, timeout=max(1.0, deadline - time.monotonic()))
        out["first_health_s"] = round(time.monotonic() - t0, 3)
        out["first_health_status"] = f"{status} {body.get('status') if isinstance(body, dict) else ''}"
      except OSError:
        if time.monotonic() > deadline:
          raise RuntimeError(f"no /health answer within {limit_s} s") from None
        time.sleep(0.05)
    while "first_search_s" not in out:
      status, body = _request(f"{url}/search", {"questions": questions[:1], "k": 10},
                              timeout=max(1.0, deadline - time.monotonic()))
      if status == 200:
        out["first_search_s"] = round(time.monotonic() - t0, 3)
      elif time.monotonic() > deadline:
        raise RuntimeError(f"/search answered {status} until the deadline: {body}")
      else:
        time.sleep(0.2)
    results, start = [], 0
    for size in (1, 3, QUESTIONS_PER_CHECK - 4):  # three batch sizes over the check questions
      status, body = _request(f"{url}/search", {"questions": questions[start:start + size], "k": 10},
                              timeout=120)
      if status != 200:
        raise RuntimeError(f"/search answered {status}: {body}")
      results.extend(body["results"])
      start += size
    out["results"] = [[(h["id"], h["score"]) for h in hits] for hits in results]
    out["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
  out["server_log"] = [line.split("] ", 1)[-1] for line in log_path.read_text(errors="replace").splitlines()
                       if "shapes in" in line or "Warm-up done" in line]
  return out


def shape_counts(pieces: dict[str, pathlib.Path], old_serve: pathlib.Path, max_batch: int,
                 max_k: int) -> dict[str, Any]:
  """Shapes each warm-up compiles, from the public warm-up functions (nothing is compiled)."""
  from bpr_jax import serve
  from bpr_jax.exported_model import MIN_BUCKET, load_exported
  from bpr_jax.index import BinaryIndex
  from bpr_jax.shapes import next_pow2

  spec = importlib.util.spec_from_file_location("serve_before", old_serve)
  old = importlib.util.module_from_spec(spec)
  sys.modules["serve_before"] = old  # its dataclasses look their module up
  spec.loader.exec_module(old)
  model = load_exported(pieces["model"])
  full = int(model.settings["question_max_length"])
  # ExportedModel.warmup_questions(max_rows=max_batch): its rows x lengths (what the old warm-up ran).
  rows = sorted({min(64, next_pow2(n)) for n in range(1, max_batch + 1)})
  lengths = sorted({min(full, max(MIN_BUCKET, next_pow2(n))) for n in range(1, full + 1)})
  before_q, before_s = len(rows) * len(lengths), len(old.batch_sizes(max_batch)) * len(old.k_buckets(max_k))

  class _R:  # what search_shapes reads
    index = BinaryIndex.load(pieces["index"])

  after_q = len(serve.question_shapes(model, max_batch))
  after_s = len(serve.search_shapes(_R(), max_batch, max_k))
  return {"before": {"question_encoder": before_q, "search": before_s, "total": before_q + before_s,
                     "question_rows": rows, "question_lengths": lengths,
                     "search_batches": old.batch_sizes(max_batch), "k_buckets": old.k_buckets(max_k)},
          "after": {"question_encoder": after_q, "search": after_s, "total": after_q + after_s,
                    "question_rows": serve.question_batch_sizes(max_batch),
                    "question_lengths": lengths, "search_batches": serve.batch_sizes(max_batch),
                    "k_buckets": serve.k_buckets(max_k)}}


def same_results(a: list, b: list) -> dict[str, Any]:
  ids_equal = [[h[0] for h in x] for x in a] == [[h[0] for h in x] for x in b]
  diffs = [abs(s1 - s2) for x, y in zip(a, b) for (_, s1), (_, s2) in zip(x, y)]
  return {"ids_equal": ids_equal, "max_abs_score_diff": max(diffs) if diffs else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default=None, help="Where the export, corpus, codes and index are "
                  "kept (made once); default a temp folder.")
  ap.add_argument("--passages_n", type=int, default=1500)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--limit_s", type=float, default=900.0, help="Most seconds one start may take.")
  ap.add_argument("--output", default=str(common.RESULTS / "serve_startup.json"))
  args = ap.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="serve_startup.") as tmp_name:
    tmp = pathlib.Path(tmp_name)
    pieces = prepare(pathlib.Path(args.workdir) if args.workdir else tmp / "work", args.passages_n)
    old_serve = tmp / "serve_before.py"
    old_serve.write_text(subprocess.run(["git", "show", "HEAD:bpr_jax/serve.py"], cwd=REPO, check=True,
                                        capture_output=True, text=True).stdout)
    (tmp / "static").mkdir()  # the committed service reads its page beside its own file
    (tmp / "static" / "index.html").write_text((REPO / "bpr_jax" / "static" / "index.html").read_text())
    questions = _questions(QUESTIONS_PER_CHECK)
    shapes = shape_counts(pieces, old_serve, 64, 1000)
    common.log(f"shapes compiled at warm-up: before {shapes['before']['total']}, after {shapes['after']['total']}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["BPR_CACHE_DIR"] = str(tmp / "bpr_cache")
    common_flags = [f"--model={pieces['model']}", f"--index={pieces['index']}",
                    f"--passages={pieces['passages']}", "--host=127.0.0.1", "--log_level=warning"]
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
      jax_cache = tmp / f"jax_cache_{r}"
      for variant in ("before", "after_cold", "after_warm"):
        port = _free_port()
        if variant == "before":
          cmd = [sys.executable, str(old_serve), *common_flags, f"--port={port}",
                 f"--passage_cache_dir={tmp / 'pidx_before'}"]
        else:
          cmd = [sys.executable, "-m", "bpr_jax.serve", *common_flags, f"--port={port}",
                 f"--compilation_cache_dir={jax_cache}", "--warmup_wait_s=900"]
        common.log(f"round {r + 1}/{args.rounds}: {variant}")
        res = start_and_time(cmd, env, tmp / f"{variant}_{r}.log", questions, args.limit_s)
        res.update(variant=variant, round=r + 1)
        runs.append(res)
        common.log(f"  first /health {res['first_health_s']} s ({res['first_health_status']}), "
                   f"first /search {res['first_search_s']} s, load {res['load_avg_1m']}")
  base = next(x["results"] for x in runs if x["variant"] == "before")
  summary = {}
  for variant in ("before", "after_cold", "after_warm"):
    mine = [x for x in runs if x["variant"] == variant]
    summary[variant] = {
        "first_health_s": [x["first_health_s"] for x in mine],
        "first_search_s": [x["first_search_s"] for x in mine],
        "results_vs_before": [same_results(base, x["results"]) for x in mine],
    }
  result = {
      "what": "process start -> first /health and first successful /search answer (127.0.0.1)",
      "model": "all-MiniLM-L6-v2 export (--pooling=mean, question_max_length 256)",
      "passages": args.passages_n, "rounds": args.rounds, "shapes": shapes, "summary": summary,
      "runs": [{k: v for k, v in x.items() if k != "results"} for x in runs],
      "note": ("other jobs shared the machine's CPUs during the runs (see load_avg_1m); the "
               "variants alternate so each sees the same load"),
      "machine": common.machine_info(with_jax=False),
  }
  path = common.write_result(args.output, result)
  print(json.dumps({"shapes": {k: v["total"] for k, v in shapes.items()}, "summary": {
      k: {m: v[m] for m in ("first_health_s", "first_search_s")} for k, v in summary.items()}}, indent=1))
  common.log(f"wrote {path}")
  return result


if __name__ == "__main__":
  main()
