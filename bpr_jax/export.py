"""Export a model: a training run, a Hugging Face BERT or a pair of DPR encoders, as one folder.

Usage:
  python -m bpr_jax.export --workdir=W --output=E [--step=N]      a training run (default: latest step)
  python -m bpr_jax.export --hf_model=DIR --output=E [--pooling=cls|mean] [--max_length=256]
      one Hugging Face BERT as both encoders (post-hoc sign codes: a baseline); the pooling is
      the model's own (sentence-transformers' pooling config), else [CLS] (printed as a note)
  python -m bpr_jax.export --dpr_question_encoder=Q --dpr_ctx_encoder=C --output=E [--tokenizer=DIR]
      transformers DPRQuestionEncoder / DPRContextEncoder dirs (`save_pretrained`, e.g.
      facebook/dpr-*-single-nq-base); the tokenizer is read from Q unless --tokenizer=DIR

A training run's bpr.json records its nested code sizes (`nested_bits`, from the run's
config.loss.nested_bits; [] when not nested): encode, search, evaluate and serve work at any of
them (`bpr_jax.export_format.code_sizes`).

An existing E exported from the same source is reused (nothing is rewritten); one exported from
another source is refused unless --overwrite, which replaces it atomically.

E is an exported model folder (layout and settings: `bpr_jax.export_format`), read with
`bpr_jax.exported_model.load_exported`. An exported folder also starts training:
--config.model.hf_dir=E loads question_encoder/ and passage_encoder/. Doors out of an export:
`bpr_jax.pyserini` (a folder for Pyserini's BinaryDenseSearcher) and
`bpr_jax.sentence_transformers_export` (two SentenceTransformer dirs).

This module holds exporting a training run (`export_run`, `checkpoint_source`) and the command;
the Hugging Face and DPR importers are `bpr_jax.importers`.
"""
from __future__ import annotations

import pathlib
from typing import Sequence

from absl import flags

from bpr_jax import provenance
from bpr_jax.export_format import PathLike, describe_source, plan_output, recorded_inputs, save_exported
from bpr_jax.importers import import_dpr, import_hf_encoder
from bpr_jax.losses import MODES
from bpr_jax.models.bert import POOLINGS

FLAGS = flags.FLAGS


def checkpoint_source(workdir: PathLike, step: int) -> dict:
  """The "source" record of a training run's export: kind "checkpoint", the workdir, the step,
  a fingerprint of that step's checkpoint files and one of the run's config and tokenizer."""
  from bpr_jax import checkpoints  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir).resolve()
  step_dir, files = checkpoints.step_files(str(workdir), step)
  run_files = [workdir / n for n in ("config.json", "bert_config.json") if (workdir / n).is_file()]
  run_files += [p for p in (workdir / "tokenizer").glob("*") if p.is_file()]
  return {"kind": "checkpoint", "workdir": str(workdir), "step": step,
          "checkpoint": provenance.fingerprint_files(files, step_dir),
          "run": provenance.fingerprint_files(run_files, workdir)}


def export_run(workdir: PathLike, out_dir: PathLike, *, step: int | None = None,
               overwrite: bool = False) -> tuple[str, int]:
  """Exports checkpoint `step` (default: the latest) of a training workdir; returns (action,
  step), action as `plan_output`. A missing workdir or step is refused in one line first."""
  from bpr_jax import checkpoints  # pylint: disable=import-outside-toplevel
  step = checkpoints.resolve_step(str(workdir), step)
  inputs = {"source": checkpoint_source(workdir, step)}
  action = plan_output(out_dir, inputs, overwrite=overwrite)
  if action == "reuse":
    return action, step
  q_model, p_model, tokenizer, settings = checkpoints.restore_encoders(str(workdir), step)
  save_exported(q_model, p_model, tokenizer, settings, out_dir, inputs=inputs)
  return action, step


# ----------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str]) -> None:
  """Exports a training workdir, an off-the-shelf HF encoder or a pair of DPR encoders."""
  from bpr_jax import cli  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
  dpr = (FLAGS.dpr_question_encoder, FLAGS.dpr_ctx_encoder)
  if any(dpr) and not all(dpr):
    raise cli.CommandError("give both --dpr_question_encoder and --dpr_ctx_encoder")
  sources = [bool(FLAGS.workdir), bool(FLAGS.hf_model), all(dpr)]
  if sum(sources) != 1:
    raise cli.CommandError("give exactly one of --workdir (a training run), --hf_model (a Hugging "
                           "Face BERT dir) or --dpr_question_encoder with --dpr_ctx_encoder (DPR "
                           "checkpoints)")
  if FLAGS.tokenizer and not all(dpr):
    raise cli.CommandError("--tokenizer goes with --dpr_question_encoder / --dpr_ctx_encoder")
  if FLAGS.step is not None and not FLAGS.workdir:
    raise cli.CommandError("--step goes with --workdir (a training run)")
  if FLAGS.workdir:
    given = [f"--{n}" for n in ("mode", "pooling", "max_length") if FLAGS[n].present]
    if given:
      raise cli.CommandError(f"{', '.join(given)}: not for --workdir (a training run's settings "
                             "come from its config)")
  out = FLAGS.output
  if all(dpr):
    action = import_dpr(dpr, out, tokenizer_dir=FLAGS.tokenizer or None, mode=FLAGS.mode,
                        pooling=FLAGS.pooling or "cls", max_length=FLAGS.max_length,
                        overwrite=FLAGS.overwrite)
    what = f"DPR encoders {dpr[0]} and {dpr[1]}"
  elif FLAGS.hf_model:
    action = import_hf_encoder(FLAGS.hf_model, out, mode=FLAGS.mode, pooling=FLAGS.pooling,
                               max_length=FLAGS.max_length, overwrite=FLAGS.overwrite)
    what = FLAGS.hf_model
  else:
    action, step = export_run(FLAGS.workdir, out, step=FLAGS.step, overwrite=FLAGS.overwrite)
    what = f"{FLAGS.workdir} step {step}"
  if action == "reuse":
    print(f"{out}: already exported from {describe_source(recorded_inputs(out))} (reused)")
  elif action == "overwrite":
    print(f"exported {what} to {out} (replaced the model that was there)")
  else:
    print(f"exported {what} to {out}")


def define_flags() -> None:
  """Defines --workdir, --output and --step (each only if not already defined) and the rest."""
  if "workdir" not in FLAGS:
    flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
  if "output" not in FLAGS:
    flags.DEFINE_string("output", None, "Directory to write the exported model to.")
  if "step" not in FLAGS:
    flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step to export (default: "
                         "the latest).")
  flags.DEFINE_string("hf_model", None, "Instead of --workdir: a Hugging Face BERT dir exported as "
                      "both encoders (post-hoc sign codes; a baseline).")
  flags.DEFINE_string("dpr_question_encoder", None, "Instead of --workdir: a transformers "
                      "DPRQuestionEncoder dir (save_pretrained), with --dpr_ctx_encoder.")
  flags.DEFINE_string("dpr_ctx_encoder", None, "The DPRContextEncoder dir going with "
                      "--dpr_question_encoder.")
  flags.DEFINE_string("tokenizer", None, "With --dpr_*: the tokenizer dir (default: "
                      "--dpr_question_encoder).")
  flags.DEFINE_enum("mode", "bpr", list(MODES), "With --hf_model / --dpr_*: 'bpr' (binary codes) "
                    "or 'dpr' (float vectors) in the export's settings.")
  flags.DEFINE_enum("pooling", None, list(POOLINGS), "With --hf_model / --dpr_*: pooling of the "
                    "encoders (default: --hf_model's own sentence-transformers pooling, else cls; "
                    "DPR: cls).")
  flags.DEFINE_integer("max_length", 256, "With --hf_model / --dpr_*: question and passage max "
                       "length.")
  flags.DEFINE_boolean("overwrite", False, "Replace an existing --output exported from another "
                       "source (one from the same source is reused without it).")
  flags.mark_flags_as_required(["output"])


if __name__ == "__main__":
  from bpr_jax import cli

  cli.run(main, define_flags)
