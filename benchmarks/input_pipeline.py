"""Host input rate of the training pipeline against the step rate of bert-base BPR on 8 H100.

  PYTHONPATH=. BPR_SHARED_DIR=/work/shared python benchmarks/input_pipeline.py \
      [--rounds=3 --before_batches=4 --after_batches=100]

Text: SciFact (BEIR) arranged as DPR-style examples: every one of the 1,109 claims is a
question, its first qrels document (or a seeded random one for claims without qrels) the
positive and 30 seeded random documents the hard-negative pool (DPR's BM25 pools hold ~30).
Tokenizer: all-MiniLM-L6-v2's, the bert-base-uncased WordPiece vocabulary.
Batch shape: configs/nq.py (global batch 128, questions and passages at most 256 tokens,
one hard negative), through the real `pipeline.TrainBatches`.

before: what every step did until now: tokenise the step's 128 questions and 256 passages,
        padded to 256 (`TrainBatches.examples` + `Tokenizer`, TOKENIZERS_PARALLELISM=false as
        bpr_jax.main set it).
after:  token tables made once (`data/token_cache.py`, timed separately as `cache_build_s`),
        then per step: picks, gather, pad to the bucket (`data.pad_multiple`, 32), read
        through `TrainBatches.iterate` (prefetch thread) as train.py does.
Rounds alternate before / after; rates are medians over rounds.

required_batches_per_s = 1 / step time, step time = step FLOPs / (8 * 989e12 * 0.45):
  step FLOPs = 6 * params * tokens + attention, tokens = 128 * Lq + 256 * Lp,
  attention = 12 * layers * hidden * (128 * Lq^2 + 256 * Lp^2) (QK^T and AV, 2 * 2 * L^2 * d
  forward per layer and sequence, x3 for backward), params = bert-base with embeddings (the
  issue's 18 ms figure). Reported at the maximum lengths (Lq = Lp = 256, the step as it was)
  and at the mean bucketed lengths of the measured batches (the faster step that bucketing
  makes, which the host must then keep up with).

Also the padded fraction of the batches' tokens before and after, on these SciFact examples
and on the DPR-format fixture (tests/fixtures/dpr_small.json, 4 examples).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bpr_jax.data import pipeline  # noqa: E402
from bpr_jax.data.examples import Example, Passage  # noqa: E402
from bpr_jax.data.token_cache import num_buckets  # noqa: E402
from bpr_jax.tokenization import Tokenizer  # noqa: E402

H100_BF16_DENSE = 989e12
MFU = 0.45
DEVICES = 8
POOL = 30


class ListSource:
  def __init__(self, name: str, examples: list[Example]):
    self.name, self._examples = name, examples

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, i: int) -> Example:
    return self._examples[i]


def scifact_examples(scifact: pathlib.Path, seed: int = 0) -> list[Example]:
  docs = []
  with open(scifact / "corpus.jsonl", encoding="utf-8") as f:
    for line in f:
      d = json.loads(line)
      docs.append(Passage(str(d["_id"]), d.get("title", ""), d.get("text", "")))
  by_id = {p.id: p for p in docs}
  qrels: dict[str, list[str]] = {}
  for split in ("train", "test"):
    with open(scifact / "qrels" / f"{split}.tsv", encoding="utf-8") as f:
      next(f)
      for line in f:
        qid, did, score = line.rstrip("\n").split("\t")[:3]
        if int(score) > 0 and did in by_id:
          qrels.setdefault(qid, []).append(did)
  rng = np.random.default_rng(seed)
  out = []
  with open(scifact / "queries.jsonl", encoding="utf-8") as f:
    for line in f:
      q = json.loads(line)
      qid = str(q["_id"])
      pos = [by_id[d] for d in qrels.get(qid, [])] or [docs[int(rng.integers(len(docs)))]]
      negs = tuple(docs[int(i)] for i in rng.choice(len(docs), POOL, replace=False))
      out.append(Example(q["text"], (), tuple(pos), (), negs, qid))
  return out


def dpr_fixture_examples() -> list[Example]:
  from bpr_jax.data.dpr import DprJsonSource  # pylint: disable=import-outside-toplevel
  src = DprJsonSource(REPO / "tests" / "fixtures" / "dpr_small.json")
  return [src[i] for i in range(len(src))]


def step_flops(lq: float, lp: float, *, batch: int = 128, passages: int = 256, params: float,
               layers: int = 12, hidden: int = 768) -> float:
  tokens = batch * lq + passages * lp
  attention = 12.0 * layers * hidden * (batch * lq ** 2 + passages * lp ** 2)
  return 6.0 * params * tokens + attention


def bert_base_params(vocab: int = 30522, hidden: int = 768, layers: int = 12, inter: int = 3072,
                     positions: int = 512) -> int:
  emb = vocab * hidden + positions * hidden + 2 * hidden + 2 * hidden
  layer = 4 * (hidden * hidden + hidden) + 2 * 2 * hidden + hidden * inter + inter + inter * hidden + hidden
  return emb + layers * layer


def old_batch(batches: pipeline.TrainBatches, step: int) -> dict[str, np.ndarray]:
  """The per-step tokenisation the pipeline did before token tables."""
  cfg = batches.config
  examples, positives, negatives = batches.examples(step)
  tokens = {"q": batches.tokenizer.questions([e.question for e in examples], cfg.question_max_length),
            "pos": pipeline.tokenize_passages(batches.tokenizer, positives, cfg.passage_max_length),
            "neg": pipeline.tokenize_passages(batches.tokenizer, negatives, cfg.passage_max_length)}
  return {f"{prefix}_{field}": t[field] for prefix, t in tokens.items() for field in pipeline.FIELDS}


def padding_stats(batches: pipeline.TrainBatches, steps, max_q: int, max_p: int) -> dict:
  """Padded fraction of the tokens of these steps' batches, at max length and bucketed."""
  real_q = real_p = slots_q = slots_p = 0
  rows_q = rows_p = 0
  lq, lp = [], []
  for s in steps:
    b = batches.batch(s)
    real_q += int(b["q_attention_mask"].sum())
    real_p += int(b["pos_attention_mask"].sum() + b["neg_attention_mask"].sum())
    slots_q += b["q_input_ids"].size
    slots_p += b["pos_input_ids"].size + b["neg_input_ids"].size
    rows_q += b["q_input_ids"].shape[0]
    rows_p += b["pos_input_ids"].shape[0] + b["neg_input_ids"].shape[0]
    lq.append(b["q_input_ids"].shape[1])
    lp.append(b["pos_input_ids"].shape[1])
  fixed_q, fixed_p = rows_q * max_q, rows_p * max_p
  return {
      "batches": len(lq),
      "questions_padded_fraction_before": round(1 - real_q / fixed_q, 4),
      "questions_padded_fraction_after": round(1 - real_q / slots_q, 4),
      "passages_padded_fraction_before": round(1 - real_p / fixed_p, 4),
      "passages_padded_fraction_after": round(1 - real_p / slots_p, 4),
      "all_padded_fraction_before": round(1 - (real_q + real_p) / (fixed_q + fixed_p), 4),
      "all_padded_fraction_after": round(1 - (real_q + real_p) / (slots_q + slots_p), 4),
      "mean_question_tokens": round(real_q / rows_q, 2),
      "mean_passage_tokens": round(real_p / rows_p, 2),
      "question_lengths_used": sorted(set(lq)),
      "passage_lengths_used": sorted(set(lp)),
      "step_shapes_used": len(set(zip(lq, lp))),
      "mean_padded_question_length": round(float(np.mean(lq)), 2),
      "mean_padded_passage_length": round(float(np.mean(lp)), 2),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shared", default=os.environ.get("BPR_SHARED_DIR", str(REPO.parent / "shared")))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--before_batches", type=int, default=4)
  parser.add_argument("--after_batches", type=int, default=100)
  parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "input_pipeline.json"))
  args = parser.parse_args()
  shared = pathlib.Path(args.shared)
  sys.path.insert(0, str(REPO))
  from configs import nq  # pylint: disable=import-outside-toplevel
  c = nq.get_config()
  tokenizer = Tokenizer.from_dir(shared / "models" / "all-MiniLM-L6-v2")
  source = ListSource("scifact-as-dpr", scifact_examples(shared / "data" / "scifact"))
  cfg = pipeline.PipelineConfig(
      global_batch_size=c.batch_size, question_max_length=c.data.question_max_length,
      passage_max_length=c.data.passage_max_length, num_hard_negatives=c.data.num_hard_negatives,
      seed=c.seed, shuffle_positives=c.data.shuffle_positives, pad_multiple=c.data.pad_multiple)

  os.environ["TOKENIZERS_PARALLELISM"] = "true"
  t0 = time.perf_counter()
  batches = pipeline.TrainBatches(source, tokenizer, cfg)
  cache_build_s = time.perf_counter() - t0
  tokens = batches.tokens

  before_rates, after_rates, after_direct_rates = [], [], []
  step = 0
  for r in range(args.rounds):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    t0 = time.perf_counter()
    for s in range(step, step + args.before_batches):
      old_batch(batches, s)
    before_rates.append(args.before_batches / (time.perf_counter() - t0))
    step += args.before_batches
    t0 = time.perf_counter()
    for _ in batches.iterate(step, step + args.after_batches, prefetch=c.prefetch):
      pass
    after_rates.append(args.after_batches / (time.perf_counter() - t0))
    step += args.after_batches
    t0 = time.perf_counter()
    for s in range(step, step + args.after_batches):
      batches.batch(s)
    after_direct_rates.append(args.after_batches / (time.perf_counter() - t0))
    step += args.after_batches
    print(f"round {r}: before {before_rates[-1]:.2f} batches/s, after {after_rates[-1]:.1f} batches/s "
          f"(iterate) / {after_direct_rates[-1]:.1f} (batch())", flush=True)
  # The new batches equal the old tokenisation cut to the bucket (checked on a few steps).
  for s in (0, 1, 2):
    new, old = batches.batch(s), old_batch(batches, s)
    for k, v in new.items():
      assert np.array_equal(v, old[k][:, :v.shape[1]]), k
      assert not old[k][:, v.shape[1]:].any(), k  # only padding (id 0) was cut

  pad = padding_stats(batches, range(0, 2 * batches.steps_per_epoch), cfg.question_max_length, cfg.passage_max_length)
  fixture = ListSource("dpr_small.json", dpr_fixture_examples())
  fcfg = pipeline.PipelineConfig(global_batch_size=4, question_max_length=cfg.question_max_length,
                                 passage_max_length=cfg.passage_max_length, num_hard_negatives=1,
                                 pad_multiple=cfg.pad_multiple)
  fixture_pad = padding_stats(pipeline.TrainBatches(fixture, tokenizer, fcfg), range(4),
                              cfg.question_max_length, cfg.passage_max_length)

  params = bert_base_params()
  peak = DEVICES * H100_BF16_DENSE * MFU
  flops_max = step_flops(cfg.question_max_length, cfg.passage_max_length, params=params)
  flops_bucketed = step_flops(pad["mean_padded_question_length"], pad["mean_padded_passage_length"], params=params)
  required = peak / flops_max
  required_bucketed = peak / flops_bucketed
  host = statistics.median(after_rates)
  result = {
      "benchmark": "input_pipeline",
      "command": "PYTHONPATH=. BPR_SHARED_DIR=/work/shared python benchmarks/input_pipeline.py "
                 + " ".join(sys.argv[1:]),
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "note": "2 cores shared with other jobs while measured"},
      "data": "SciFact claims as questions (1,109), first qrels doc as positive, 30 random docs as the "
              "hard-negative pool; tokenizer all-MiniLM-L6-v2 (bert-base-uncased vocab)",
      "batch_shape": {"global_batch_size": cfg.global_batch_size, "question_max_length": cfg.question_max_length,
                      "passage_max_length": cfg.passage_max_length, "num_hard_negatives": cfg.num_hard_negatives,
                      "pad_multiple": cfg.pad_multiple,
                      "compiled_shapes_per_input": num_buckets(cfg.pad_multiple, cfg.passage_max_length),
                      "source": "configs/nq.py"},
      "cache_build_s": round(cache_build_s, 2),
      "cache_rows": {"questions": len(tokens.questions), "passages": len(tokens.passages),
                     "tokens": int(tokens.questions.ids.size + tokens.passages.ids.size)},
      "host_batches_per_s": round(host, 1),
      "host_batches_per_s_rounds": [round(x, 1) for x in after_rates],
      "host_batches_per_s_batch_call_rounds": [round(x, 1) for x in after_direct_rates],
      "before_host_batches_per_s": round(statistics.median(before_rates), 3),
      "before_host_batches_per_s_rounds": [round(x, 3) for x in before_rates],
      "required_batches_per_s": round(required, 1),
      "ratio": round(host / required, 2),
      "before_ratio": round(statistics.median(before_rates) / required, 4),
      "required_batches_per_s_bucketed": round(required_bucketed, 1),
      "ratio_bucketed": round(host / required_bucketed, 2),
      "required_assumptions": {
          "formula": "required = 8 * 989e12 * 0.45 / step_flops; step_flops = 6 * params * (128 * Lq + 256 * Lp) "
                     "+ 12 * layers * hidden * (128 * Lq^2 + 256 * Lp^2)",
          "params": params, "layers": 12, "hidden": 768, "devices": DEVICES,
          "peak_flops_per_device": H100_BF16_DENSE, "mfu": MFU,
          "step_flops_max_lengths": flops_max, "step_ms_max_lengths": round(1e3 / required, 2),
          "step_flops_bucketed": flops_bucketed, "step_ms_bucketed": round(1e3 / required_bucketed, 2),
          "bucketed_lengths": [pad["mean_padded_question_length"], pad["mean_padded_passage_length"]],
      },
      "padding_scifact_as_dpr": pad,
      "padding_dpr_fixture": fixture_pad,
  }
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  tmp = args.output + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
  os.replace(tmp, args.output)
  print(json.dumps({k: result[k] for k in ("host_batches_per_s", "before_host_batches_per_s", "required_batches_per_s",
                                           "ratio", "required_batches_per_s_bucketed", "ratio_bucketed",
                                           "cache_build_s")}, indent=1))


if __name__ == "__main__":
  main()
