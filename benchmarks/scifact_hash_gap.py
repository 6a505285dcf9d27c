"""How much of a fine-tuned SciFact model's accuracy its binary codes lose (train/test hash gap).

For each fine-tuned run of `benchmarks/scifact.py --stage=finetune` (WORK/ft-bpr, ft-dpr and
the --tag variants ft-MODE-TAG), encodes the 300 SciFact test questions with the run's exported
question encoder and scores every document's saved float embedding (encode --save_float) by:
  float-dot      <e_q, e_p>
  float-cosine   <e_q, e_p> / |e_p|          (question norm does not change the ranking)
  tanh-B         <e_q, tanh(B e_p)>          B = the run's last training beta and 10, 30, 100
  sign           <e_q, sign(e_p)>            (BPR's rerank over all documents; 0 -> +1)
and reports nDCG@10 / Recall@100. The distance between tanh at the final training beta and sign
is the train/test mismatch of BPR's hash layer when it trains with loss.relaxation='tanh'. With
'ste' the forward pass already scores sign(e_p) in training, so there the tanh row is a
counterfactual, and `float_minus_sign_points` (the better float scoring minus sign) is what the
codes lose against the model's own float vectors. Both are recorded for every run.

  OPENBLAS_NUM_THREADS=1 python benchmarks/scifact_hash_gap.py --work_dir=/tmp/scifact-bench

Results: benchmarks/results/scifact_hash_gap.json (and a table on stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, shared_dir, write_result  # noqa: E402
from bpr_jax.codes import binarize  # noqa: E402


def evaluate(scores: np.ndarray, ids: list[str], questions) -> dict:
  """nDCG@10 and Recall@100 of exhaustive scores (BEIR's conventions, pytrec_eval)."""
  from bpr_jax.metrics import beir_evaluate
  top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
  results = {qid: {ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(questions.qids)}
  m = beir_evaluate(questions.qrels, results, [10, 100])
  return {"ndcg@10": round(m["ndcg@10"], 4), "recall@100": round(m["recall@100"], 4)}


def one_run(d: pathlib.Path, beir_dir: pathlib.Path) -> dict:
  from bpr_jax.evaluate import load_beir
  from bpr_jax.exported_model import load_exported
  ids = [str(x) for x in np.load(d / "codes" / "ids.npy").tolist()]
  emb = np.load(d / "codes" / "embeddings.npy")
  questions = load_beir(beir_dir, "test", ids)
  q = load_exported(d / "model").encode_questions(questions.texts)
  metrics = [json.loads(l) for l in (d / "train" / "metrics.jsonl").read_text().splitlines() if l.strip()]
  config = json.loads((d / "train" / "config.json").read_text())
  final_beta = max((m["beta"] for m in metrics if "beta" in m), default=None)
  out = {"mode": config["mode"], "relaxation": config.get("loss", {}).get("relaxation", "tanh"),
         "train_steps": max(m["step"] for m in metrics), "final_logged_beta": final_beta, "scores": {}}
  out["scores"]["float-dot"] = evaluate(q @ emb.T, ids, questions)
  out["scores"]["float-cosine"] = evaluate(q @ (emb / np.linalg.norm(emb, axis=1, keepdims=True)).T,
                                           ids, questions)
  betas = sorted({10.0, 30.0, 100.0} | ({round(final_beta, 2)} if final_beta else set()))
  for b in betas:
    out["scores"][f"tanh-{b:g}"] = evaluate(q @ np.tanh(b * emb).T, ids, questions)
  out["scores"]["sign"] = evaluate(q @ binarize(emb).T, ids, questions)
  if final_beta:  # the train/test mismatch: training-time relaxation minus test-time sign
    tanh_final = out["scores"][f"tanh-{round(final_beta, 2):g}"]["ndcg@10"]
    out["tanh_final_minus_sign_points"] = round(100 * (tanh_final - out["scores"]["sign"]["ndcg@10"]), 2)
  # what the codes lose against the model's own float vectors (both scorings over every document)
  out["float_minus_sign_points"] = round(100 * (max(out["scores"]["float-dot"]["ndcg@10"],
                                                    out["scores"]["float-cosine"]["ndcg@10"])
                                                - out["scores"]["sign"]["ndcg@10"]), 2)
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--work_dir", default=os.environ.get("BPR_SCIFACT_WORK", "/tmp/bpr-scifact-bench"))
  p.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "scifact_hash_gap.json"))
  args = p.parse_args(argv)
  shared = shared_dir()
  work = pathlib.Path(args.work_dir)
  runs = sorted(d for d in work.glob("ft-*") if (d / "codes" / "embeddings.npy").exists()
                and (d / "model").is_dir())
  if not runs:
    raise SystemExit(f"no fine-tuned runs with saved float embeddings under {work}")
  results = {}
  for d in runs:
    results[d.name] = r = one_run(d, shared / "data" / "scifact")
    print(f"{d.name} ({r['mode']}, {r['train_steps']} steps, final beta {r['final_logged_beta']}):")
    for name, v in r["scores"].items():
      print(f"  {name:14s} nDCG@10 {v['ndcg@10']:.4f}  R@100 {v['recall@100']:.4f}")
  out = write_result(args.output, {"benchmark": "scifact_hash_gap", "split": "test", "runs": results})
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
