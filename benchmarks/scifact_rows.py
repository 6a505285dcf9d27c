"""The SciFact benchmark's row names and its fine-tuned runs' rows, shared by benchmarks/scifact.py
(which measures them) and benchmarks/scifact_report.py (which reports them).

Holds the document formats and row names, the code sizes of the accuracy-against-memory table,
where each fine-tuned run lives (`run_dir`), its rows read from its evaluate results
(`finetuned_rows`, `logged_steps`) and the choice of settings on dev (`select_on_dev`).
"""
from __future__ import annotations

import json
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bpr_jax import evaluate  # noqa: E402

DOC_FORMATS = ("single", "pair")
MAX_LENGTH = 256
ROW_NAMES = ("minilm-float", "minilm-sign", "minilm-sign-two-stage", "minilm-lsh", "minilm-pq",
             "bpr-flat", "bpr-hash", "bpr-no-rerank", "bpr-no-candidates",
             "dpr-flat", "dpr-hnsw", "dpr-lsh", "dpr-pq", "dpr-sign")

# Code sizes of the accuracy-against-memory table (16, 48 and 96 bytes a passage): BPR with
# model.code_bits (384 = MiniLM's own pooled vector, no head), DPR's LSH / PQ at equal size.
CODE_SIZES_BITS = (128, 384, 768)

# evaluate.py row name -> benchmark row name, per (mode, index kind).
FINETUNED_NAMES = {
    ("bpr", "flat"): {"bpr-flat": "bpr-flat", "bpr-flat-no-rerank": "bpr-no-rerank",
                      "bpr-flat-no-candidates": "bpr-no-candidates"},
    ("bpr", "hash"): {"bpr-hash": "bpr-hash"},
    # DPR: float baselines over its float embeddings; dpr-sign = BPR-style two-stage search
    # (Hamming top-1000 + <e_q, sign(e_p)> rerank) over the signs of DPR's embeddings.
    ("dpr", "flat"): {"flat_ip": "dpr-flat", "hnsw": "dpr-hnsw", "lsh": "dpr-lsh", "pq": "dpr-pq",
                      "bpr-flat": "dpr-sign"},
}


def run_dir(work: pathlib.Path, mode: str, tag: str = "") -> pathlib.Path:
  """ft-MODE for the main rows; ft-MODE-TAG for a variant (--tag)."""
  return work / (f"ft-{mode}-{tag}" if tag else f"ft-{mode}")


def logged_steps(train_dir: pathlib.Path) -> list[int]:
  """The steps of the run's metrics.jsonl lines."""
  return [json.loads(l)["step"] for l in (train_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def finetuned_rows(work: pathlib.Path, tag: str = "", split: str = "test") -> list[dict]:
  """Rows of one run (main or --tag) on `split` ('test': eval-KIND.json, 'dev': eval-KIND-dev.json)."""
  rows = []
  for (mode, kind), names in FINETUNED_NAMES.items():
    d = run_dir(work, mode, tag)
    suffix = "-dev" if split == "dev" else ""
    # eval-KIND.json; a nested-code run also has eval-KIND-Nbit.json (its codes' first N bits)
    paths = [d / f"eval-{kind}{suffix}.json"] + sorted(d.glob(f"eval-{kind}-*bit{suffix}.json"))
    paths = [p for p in paths if p.exists() and (split == "dev" or not p.name.endswith("-dev.json"))]
    if not paths:
      continue
    times = json.loads((d / "times.json").read_text())
    config = json.loads((d / "train" / "config.json").read_text())
    steps = logged_steps(d / "train")
    for r in (r for path in paths for r in evaluate.read_results(path)[1]):
      sized = re.fullmatch(r"(.+)-(\d+bit)", r["name"])  # 'lsh-128bit': a baseline at another code size
      base, size = sized.groups() if sized else (r["name"], "")
      key = "pq" if base.startswith("pq") else base  # 'pqB' when N < 256 (B bits)
      if key not in names:
        continue
      row = dict(r, name=names[key] + (f"-{size}" if size else ""), evaluate_row=r["name"], mode=mode, split=split,
                 train_steps=max(steps) if steps else None, batch_size=config["batch_size"],
                 seed=config["seed"], question_max_length=config["data"]["question_max_length"],
                 passage_max_length=config["data"]["passage_max_length"],
                 training_s=round(times["train"]), corpus_encode_s=round(times["encode"]),
                 overrides=json.loads((d / "overrides.json").read_text())
                 if (d / "overrides.json").exists() else [])
      if tag:
        row["variant"] = tag
      rows.append(row)
  return rows


def select_on_dev(rows: list[dict], name: str = "bpr-flat", train_steps: int | None = None) -> list[dict]:
  """Marks, per bytes_per_passage, the test row of the `name` run whose dev nDCG@10 is best.

  `rows` hold both splits (field 'split'); a run is identified by its 'variant' ('' = main). The
  chosen test row gets "selected_on_dev": true (ties: the main run, then the first tag). Test
  numbers never take part in the choice. With `train_steps`, only runs of that budget (the
  reported DPR's) are eligible: a longer BPR run is not compared with a shorter DPR one.
  """
  dev = [r for r in rows if r["name"] == name and r.get("split") == "dev"
         and (train_steps is None or r.get("train_steps") == train_steps)]
  best: dict = {}
  for r in sorted(dev, key=lambda r: (r.get("variant", "") != "", r.get("variant", ""))):
    key = r["bytes_per_passage"]
    if key not in best or r["ndcg@10"] > best[key]["ndcg@10"]:
      best[key] = r
  chosen = {(r["bytes_per_passage"], r.get("variant", "")) for r in best.values()}
  for r in rows:
    if r["name"] == name and r.get("split") == "test":
      r["selected_on_dev"] = (r["bytes_per_passage"], r.get("variant", "")) in chosen
  return rows


def teacher_group(row: dict) -> str | None:
  """'nested', 'free' (label-free distillation), 'label' (labels + a teacher) or None, from the
  fields benchmarks/scifact_teacher.py adds to a fine-tuned row."""
  if row.get("nested_bits"):
    return "nested"
  if row.get("teacher"):
    return "label" if row.get("labels") else "free"
  return None


def chosen_by_group(rows: list[dict]) -> dict[tuple[str, float], tuple[dict, dict]]:
  """(group, bytes per passage) -> (dev row, test row) of the group's two-stage (bpr-flat) run whose
  dev nDCG@10 is best at that size (test never takes part in the choice; runs without a test row
  are left out)."""
  best: dict[tuple[str, float], dict] = {}
  for r in rows:
    group = teacher_group(r)
    if group and r["name"] == "bpr-flat" and r.get("split") == "dev":
      key = (group, r["bytes_per_passage"])
      if key not in best or r["ndcg@10"] > best[key]["ndcg@10"]:
        best[key] = r
  out = {}
  for (group, size), dev in best.items():
    test = next((r for r in rows if r["name"] == "bpr-flat" and r.get("split") == "test"
                 and r.get("variant") == dev.get("variant") and r["bytes_per_passage"] == size), None)
    if test is not None:
      out[(group, size)] = (dev, test)
  return out
