"""SciFact runs of binary codes learned from a float teacher (distillation) and nested codes.

Each run goes through the project's commands via `benchmarks/scifact.py --stage=finetune --tag=TAG`
(same seeded train/dev split, batch, budget and evaluation as the other SciFact rows); this script
prints the commands (`commands`) and collects the runs' dev and test rows (`collect`) into
`benchmarks/results/scifact.json` (every row gains `teacher`, `labels`, `code_bits`,
`nested_bits`; rows of a collected tag replace that tag's earlier rows; `teacher_targets`: the
issue's targets checked, `check_targets`) and `benchmarks/results/scifact_teacher.md` (the targets
and a table per split).

  W=/tmp/sf24; S=$BPR_SHARED_DIR
  python benchmarks/scifact_teacher.py commands --work_dir=$W     # the runs, in order
  python benchmarks/scifact_teacher.py collect --work_dir=$W --tags=free48,label48,nested

Runs (all at the main table's budget: 200 steps, batch 16, attention dropout 0):
  free48   label-free: MiniLM as released is the teacher and the student's start; positives and
           hard negatives are the teacher's top-k over the corpus for SciFact's train-split queries
           (qrels unused); loss = distillation only (label_weight 0) of the teacher's cosines into
           the student's cosines cos(e_q, h~p) and cos(h~q, h~p), both at temperature 0.05 (MiniLM's
           training scale); 48 B (the pooled 384 bits).
  label48  with labels: the BPR loss on qrels + BM25 negatives plus distillation (weight 1) from
           the fine-tuned DPR float model of the same budget (ft-dpr).
  nested   with labels: the STE recipe with a 768-bit code head whose loss is averaged over its
           128-, 384- and 768-bit prefixes; one encode, indexed and evaluated at 16, 48 and 96 B.
  free48-v0 (rows only) the first label-free run, at commit 417bed0, when the student's scores were
           inner products at temperature 1 against the teacher's cosines at 0.05: its loss stayed
           at 3.6-5.0 (gradient norm ~100) and it fell below its own start; the run that showed
           the student must be read on the teacher's scale (loss.distill_similarity=cos now
           applies to both).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO  # noqa: E402
from benchmarks.scifact_rows import chosen_by_group, finetuned_rows, run_dir, teacher_group  # noqa: E402
from bpr_jax import io  # noqa: E402

BUDGET = ["--override=num_train_steps=200", "--override=model.attention_dropout=0.0"]


def runs(work: pathlib.Path, dpr_model: pathlib.Path | None = None) -> dict[str, list[str]]:
  """tag -> the `scifact.py --stage=finetune` arguments of each run (label48's teacher: `dpr_model`,
  default the main DPR run's export in `work`)."""
  teacher = work / "teacher-minilm"
  mined = work / "teacher_mined_train.json"
  dpr = dpr_model or run_dir(work, "dpr") / "model"
  return {
      "free48": ["--modes=bpr", *BUDGET, "--override=data.source=dpr_json",
                 f"--override=data.train_path={mined}", f"--override=model.hf_dir={teacher}",
                 f"--override=loss.teacher={teacher}", f"--override=data.teacher_cache_dir={work / 'teacher-cache-minilm'}",
                 "--override=loss.label_weight=0.0",
                 "--override=loss.distill_weight=1.0", "--override=loss.distill_cand_weight=1.0",
                 "--override=loss.distill_similarity=cos", "--override=loss.distill_temperature=0.05"],
      "label48": ["--modes=bpr", *BUDGET, f"--override=loss.teacher={dpr}", "--override=loss.distill_weight=1.0"],
      "nested": ["--modes=bpr", *BUDGET, "--override=loss.relaxation=ste", "--override=model.code_bits=768",
                 "--override=model.code_head_norm=2.5", "--override=loss.nested_bits=128,384,768"],
  }


def print_commands(work: pathlib.Path) -> None:
  py = "python"
  print(f"{py} -m bpr_jax.export --hf_model=$BPR_SHARED_DIR/models/all-MiniLM-L6-v2 --pooling=mean "
        f"--mode=dpr --output={work / 'teacher-minilm'}")
  print(f"{py} benchmarks/scifact.py --stage=finetune --work_dir={work} --modes=dpr {' '.join(BUDGET)}")
  print(f"{py} -m bpr_jax.mine_negatives --teacher={work / 'teacher-minilm'} --beir_dir={work / 'scifact-split'} "
        f"--split=train --similarity=cos --output={work / 'teacher_mined_train.json'}")
  for tag, args in runs(work).items():
    print(f"{py} benchmarks/scifact.py --stage=finetune --work_dir={work} --tag={tag} {' '.join(args)}")


def _override(overrides: list[str], key: str, default=None):
  for o in overrides:
    k, _, v = o.partition("=")
    if k == key:
      return v
  return default


def describe_row(row: dict) -> dict:
  """The row with `teacher`, `labels`, `code_bits` and `nested_bits` (from its run's overrides)."""
  ov = row.get("overrides", [])
  teacher = _override(ov, "loss.teacher")
  label_weight = float(_override(ov, "loss.label_weight", 1.0))
  mined_by_teacher = _override(ov, "data.source") == "dpr_json" and teacher is not None
  nested = _override(ov, "loss.nested_bits", "")
  bits = row.get("bytes_per_passage")
  return dict(row, teacher=pathlib.Path(teacher).parent.name + "/" + pathlib.Path(teacher).name if teacher else None,
              labels=bool(label_weight > 0 and not mined_by_teacher) if row.get("mode") in ("bpr", "dpr") else False,
              code_bits=int(bits * 8) if isinstance(bits, (int, float)) and bits < 1000 else None,
              nested_bits=[int(b) for b in nested.split(",") if b] if nested else [])


# The separately trained recipe of each code size at the main budget (configs/scifact.py bpr16,
# bpr48, bpr96 = these tagged runs of benchmarks/scifact.py) and DPR's PQ row of that size.
SEPARATE = {16.0: "ste-head128", 48.0: "ste", 96.0: "ste-head768"}
DPR_PQ = {16.0: "dpr-pq-128bit", 48.0: "dpr-pq", 96.0: "dpr-pq-768bit"}


def _find(rows: list[dict], name: str, split: str = "test", variant: str = "", size: float | None = None):
  for r in rows:
    if (r["name"] == name and r.get("split", "test") == split and r.get("variant", "") == variant
        and (size is None or r.get("bytes_per_passage") == size)
        and (not name.startswith("minilm") or r.get("doc_format") == "pair")):
      return r
  return None


def check_targets(rows: list[dict]) -> list[dict]:
  """The issue's targets (test nDCG@10; runs chosen on dev) against the rows: one dict per target
  with the measured value, the bar, `met` (None when the run is missing) and the run used."""
  out = []
  chosen_runs = chosen_by_group(rows)  # (group, size) -> (dev row, test row)

  def add(target, run, value, bar, dev_value=None, dev_bar=None, strict=False):
    met = None if value is None or bar is None else (value > bar if strict else value >= bar - 1e-9)
    if met is not None and dev_bar is not None:
      met = met and dev_value is not None and dev_value >= dev_bar - 1e-9
    out.append({"target": target, "run": run, "test": value, "bar": bar, "dev": dev_value, "dev_bar": dev_bar,
                "met": met})

  teacher = _find(rows, "minilm-float")
  t = teacher["ndcg@10"] if teacher else None
  for size, share in ((48.0, 0.99), (16.0, 0.95), (96.0, 1.0)):
    chosen = chosen_runs.get(("free", size))
    add(f"label-free {size:g} B >= {share:.0%} of the teacher's float", chosen[1]["variant"] if chosen else None,
        chosen[1]["ndcg@10"] if chosen else None, round(share * t, 4) if t else None,
        chosen[0]["ndcg@10"] if chosen else None)
  dpr, dpr_dev = _find(rows, "dpr-flat"), _find(rows, "dpr-flat", "dev")
  chosen = chosen_runs.get(("label", 48.0))
  add("with labels 48 B within 1 point of DPR float (test and dev)", chosen[1]["variant"] if chosen else None,
      chosen[1]["ndcg@10"] if chosen else None, round(dpr["ndcg@10"] - 0.01, 4) if dpr else None,
      chosen[0]["ndcg@10"] if chosen else None, round(dpr_dev["ndcg@10"] - 0.01, 4) if dpr_dev else None)
  for size, variant in SEPARATE.items():
    chosen = chosen_runs.get(("nested", size))
    separate, pq = _find(rows, "bpr-flat", "test", variant, size), _find(rows, DPR_PQ[size])
    value, dev = (chosen[1]["ndcg@10"], chosen[0]["ndcg@10"]) if chosen else (None, None)
    run = chosen[1]["variant"] if chosen else None
    add(f"nested {size:g} B within 1 point of the separate recipe ({variant})", run, value,
        round(separate["ndcg@10"] - 0.01, 4) if separate else None, dev)
    add(f"nested {size:g} B above DPR + PQ", run, value, pq["ndcg@10"] if pq else None, dev, strict=True)
  return out


def targets_table(targets: list[dict]) -> list[str]:
  fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
  lines = ["| target | run (chosen on dev) | test | bar | dev | dev bar | met |", "|---|---|---|---|---|---|---|"]
  for t in targets:
    met = "not run" if t["met"] is None else ("yes" if t["met"] else "**no**")
    lines.append(f"| {t['target']} | {t['run'] or '-'} | {fmt(t['test'])} | {fmt(t['bar'])} | {fmt(t['dev'])} | "
                 f"{fmt(t['dev_bar'])} | {met} |")
  return lines


def collect(work: pathlib.Path, tags: list[str], results: pathlib.Path) -> list[dict]:
  path = results / "scifact.json"
  data = io.read_json(path)
  new = [describe_row(r) for tag in tags for split in ("dev", "test") for r in finetuned_rows(work, tag, split)]
  if not new:
    raise SystemExit(f"no evaluated runs for tags {tags} under {work}")
  kept = [r for r in data["rows"] if r.get("variant", "") not in tags]
  data["rows"] = [r if "nested_bits" in r else describe_row(r) for r in kept] + new
  data["teacher_targets"] = targets = check_targets(data["rows"])
  io.atomic_write_json(path, data)
  shown = [r for r in data["rows"] if r["name"] == "bpr-flat" and teacher_group(r)]
  lines = ["# SciFact: codes learned from a float teacher, and nested codes", "",
           "Collected by `python benchmarks/scifact_teacher.py collect` from runs of `benchmarks/scifact.py "
           "--stage=finetune` (commands in the script's docstring). nDCG@10 / Recall@100, two-stage search "
           "(Hamming top-1000, rerank by <e_q, sign(e_p)>).", "", "## Targets (test nDCG@10; runs chosen on dev)", "",
           *targets_table(targets), ""]
  for split in ("dev", "test"):
    lines += [f"## {split}", "", "| run | teacher | labels | nested | bytes | nDCG@10 | Recall@100 |",
              "|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in shown if r["split"] == split),
                    key=lambda r: (r.get("variant", ""), r["bytes_per_passage"])):
      lines.append(f"| {r.get('variant')} | {r['teacher']} | {r['labels']} | "
                   f"{','.join(map(str, r['nested_bits'])) or '-'} | {r['bytes_per_passage']:g} | "
                   f"{r['ndcg@10']:.4f} | {r['recall@100']:.4f} |")
    lines.append("")
  io.atomic_write_text(results / "scifact_teacher.md", "\n".join(lines))
  print("\n".join(lines))
  return new


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("what", choices=("commands", "collect"))
  p.add_argument("--work_dir", required=True)
  p.add_argument("--tags", default="free48,label48,nested")
  p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
  args = p.parse_args(argv)
  work = pathlib.Path(args.work_dir)
  if args.what == "commands":
    print_commands(work)
  else:
    collect(work, [t for t in args.tags.split(",") if t], pathlib.Path(args.results_dir))


if __name__ == "__main__":
  main()
