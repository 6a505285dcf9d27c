"""SciFact accuracy against memory: test nDCG@10 against bytes per passage (log x), as a PNG.

Reads the report of `benchmarks/scifact.py` (its `memory_table` and rows) and draws, per code
size, the BPR variant chosen on dev (two-stage search), DPR + PQ at equal bytes, DPR + LSH at
equal bits, DPR's post-hoc sign codes (two-stage, at its own 384 bits), the DPR float point and
line (1536 B) and the untrained MiniLM float line; and, dashed, BPR, DPR + PQ and DPR float at every
other budget of the report (`other_budgets`: the same recipes trained longer). The codes learned from
a float teacher and nested codes (benchmarks/scifact_teacher.py, `teacher_series`) join it: MiniLM's
post-hoc sign codes (two-stage), PQ and LSH at 48 B (the untrained teacher compressed after the fact),
one nested model at each of its sizes, and the distilled runs (label-free, with labels), each the run
best on dev at its size.

  python benchmarks/scifact_plot.py            # benchmarks/results/scifact.json -> scifact_memory.png

Needs matplotlib (setup.py extras "test").
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO  # noqa: E402
from benchmarks.scifact_rows import chosen_by_group  # noqa: E402

SERIES = (  # memory_table key, label, matplotlib style
    ("bpr", "BPR, one model a size (chosen on dev)", dict(color="C3", marker="o", lw=2)),
    ("dpr-pq", "DPR + PQ (equal bytes)", dict(color="C0", marker="s")),
    ("dpr-lsh", "DPR + LSH (equal bits)", dict(color="C2", marker="^")),
    ("dpr-sign", "DPR sign codes, two-stage", dict(color="C1", marker="D", ls="none")),
)


# post-hoc compression of MiniLM as released (the label-free teacher): row name, label, style
POST_HOC = (
    ("minilm-sign-two-stage", "MiniLM sign codes, two-stage (post-hoc)", dict(color="C4", marker="v", ls="none")),
    ("minilm-pq", "MiniLM + PQ (post-hoc)", dict(color="C9", marker="P", ls="none")),
    ("minilm-lsh", "MiniLM + LSH (post-hoc)", dict(color="C8", marker="x", ls="none")),
)
# learned from a teacher / nested: group (scifact_rows.teacher_group), label, style
LEARNED = (
    ("nested", "nested BPR (one model, every size)", dict(color="C5", marker="o", ls="-", lw=2)),
    ("free", "distilled from MiniLM, no labels", dict(color="C6", marker="*", ls="none", ms=11)),
    ("label", "BPR + distilled from DPR float", dict(color="C7", marker="h", ls="none", ms=9)),
)


def teacher_series(rows: list[dict]) -> dict[str, list[tuple[float, float]]]:
  """group -> [(bytes per passage, test nDCG@10)] of its runs chosen on dev at each size
  (`scifact_rows.chosen_by_group`)."""
  out: dict[str, list[tuple[float, float]]] = {}
  for (group, size), (_, test) in sorted(chosen_by_group(rows).items(), key=lambda kv: kv[0][1]):
    out.setdefault(group, []).append((size, test["ndcg@10"]))
  return out


def float_row(rows: list[dict], name: str, doc_format: str | None = None) -> dict | None:
  for r in rows:
    if (r["name"] == name and r.get("split", "test") == "test" and not r.get("variant")
        and r.get("doc_format") == doc_format):
      return r
  return None


def plot(result: dict, out: pathlib.Path) -> pathlib.Path:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  table = result["memory_table"]
  fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
  for key, label, style in SERIES:
    pts = [(m["bytes_per_passage"], m[key]["ndcg@10"]) for m in table if m.get(key)]
    if pts:
      ax.plot(*zip(*pts), label=label, **style)
  for steps, other in sorted(result.get("other_budgets", {}).items(), key=lambda kv: int(kv[0])):
    # the same recipes at another budget (scifact.py's "At N steps" table): open markers, dashed
    for key, label, style in SERIES[:2]:
      pts = [(m["bytes_per_passage"], m[key]["ndcg@10"]) for m in other["memory_table"] if m.get(key)]
      if pts:
        ax.plot(*zip(*pts), label=f"{label.split(' (')[0]}, {steps} steps", ls="--", mfc="white",
                **{k: v for k, v in style.items() if k != "lw"})
    dpr_other = next((r for r in result["rows"] if r["name"] == "dpr-flat" and r.get("split", "test") == "test"
                      and r.get("variant") == other["dpr_variant"]), None)
    if dpr_other:
      ax.axhline(dpr_other["ndcg@10"], color="k", ls="-.", lw=0.8,
                 label=f"DPR float, {steps} steps ({dpr_other['ndcg@10']:.4f})")
  for name, label, style in POST_HOC:
    row = float_row(result["rows"], name, "pair")
    if row:
      ax.plot([row["bytes_per_passage"]], [row["ndcg@10"]], label=label, **style)
  learned = teacher_series(result["rows"])
  for group, label, style in LEARNED:
    if learned.get(group):
      ax.plot(*zip(*learned[group]), label=label, **style)
  dpr = float_row(result["rows"], "dpr-flat")
  if dpr:
    ax.axhline(dpr["ndcg@10"], color="k", ls="--", lw=1, label=f"DPR float ({dpr['ndcg@10']:.4f})")
    ax.plot([dpr["bytes_per_passage"]], [dpr["ndcg@10"]], "k*", ms=10)
  minilm = float_row(result["rows"], "minilm-float", "pair")
  if minilm:
    ax.axhline(minilm["ndcg@10"], color="gray", ls=":", lw=1,
               label=f"MiniLM float, untrained ({minilm['ndcg@10']:.4f})")
  ax.set_xscale("log")
  ticks = sorted({m["bytes_per_passage"] for m in table} | ({dpr["bytes_per_passage"]} if dpr else set()))
  ax.set_xticks(ticks)
  ax.set_xticklabels([f"{t:g}" for t in ticks])
  ax.minorticks_off()
  ax.set_xlabel("bytes per passage (log scale)")
  ax.set_ylabel("nDCG@10 (SciFact test)")
  steps = {r.get("train_steps") for r in result["rows"]
           if r["name"] in ("bpr-flat", "dpr-flat") and not r.get("variant")} - {None}  # the main rows' budget
  others = sorted(result.get("other_budgets", {}), key=int)
  ax.set_title("SciFact: accuracy against memory, MiniLM-L6 fine-tuned "
               + (f"{max(steps)} steps" if steps else "")
               + (f" (dashed: {', '.join(others)} steps)" if others else ""), fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, loc="lower right", ncol=2)
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  fig.savefig(tmp, format="png")
  plt.close(fig)
  tmp.replace(out)  # atomic
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--result", default=str(REPO / "benchmarks" / "results" / "scifact.json"))
  p.add_argument("--output", default=None, help="default: scifact_memory.png beside --result")
  args = p.parse_args(argv)
  result_path = pathlib.Path(args.result)
  result = json.loads(result_path.read_text())
  if not result.get("memory_table"):
    raise SystemExit(f"{result_path} has no memory_table; run benchmarks/scifact.py --stage=report")
  out = plot(result, pathlib.Path(args.output) if args.output else result_path.with_name("scifact_memory.png"))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
