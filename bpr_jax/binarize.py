"""Binary codes for a float model you already have: a float teacher and a corpus in, a binary index out.

Usage::

  python -m bpr_jax.export --hf_model=MODEL --mode=dpr --output=T     # the teacher (its own pooling)
  python -m bpr_jax.binarize --teacher=T --passages=corpus.jsonl --questions=questions.txt --output=OUT
  python -m bpr_jax.serve --model=OUT/model --index=OUT/index --passages=corpus.jsonl

  [--beir_dir=B --split=train instead of --questions: the split's queries, their labels unused]
  [--config=configs/binarize.py --config.FIELD=VALUE ...] [--top_k=100 --num_hard_negatives=30]
  [--batch_size=N] [--overwrite]

No labels are needed: the teacher ranks the corpus for each question (its top-1 is the positive,
the next ranks the hard negatives: ``mine_negatives --teacher``), a BPR student starting from the
teacher's weights learns the teacher's scores (``configs/binarize.py``, the label-free recipe),
and the student is exported, encodes the corpus into binary codes and they are indexed (flat,
exact Hamming). OUT holds each step's output, each recording what it was made from::

  mined.json (+ mined.json.inputs.json)   the teacher's training data
  train/                                  the training workdir (checkpoints, metrics.jsonl;
                                          binarize.json: the mined data it was trained on)
  model/                                  the exported student (bpr.json)
  codes/                                  uint8 codes of the corpus (encode)
  index/                                  the binary index (serve and evaluate take it)

Run again, finished steps are reused and an interrupted one resumes (training from its last
checkpoint); a step whose inputs changed (another teacher, corpus, questions or setting) is refused
in one line naming what changed, unless ``--overwrite``, which redoes it and every step after it
(training starts again when the data were mined again or its settings changed). The student's pooling and lengths are the
teacher's (its bpr.json) unless given with --config. Bad input (no teacher export, an unreadable
corpus, an empty questions file, a config field that does not exist) is refused before any step.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import sys
import time
from typing import Sequence

from absl import flags
from ml_collections import config_flags

_CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / "configs" / "binarize.py"

FLAGS = flags.FLAGS
TRAINED_ON = "binarize.json"  # in OUT/train: the inputs record of the mined data it trains on


def define_flags() -> None:
  flags.DEFINE_string("teacher", None, "The float teacher: an exported model folder (bpr_jax.export, e.g. "
                      "--hf_model for a sentence-transformers model, or a trained dpr run).")
  flags.DEFINE_string("passages", None, "The corpus: passage TSV (id, text, title) or JSONL.")
  flags.DEFINE_string("questions", None, "Training questions, one per line (or id<TAB>question); no labels.")
  flags.DEFINE_string("beir_dir", None, "Instead of --questions/--passages: a BEIR folder whose --split "
                      "queries are the questions (their qrels unused) and corpus.jsonl the corpus.")
  flags.DEFINE_string("split", "train", "qrels split of --beir_dir whose queries are used.")
  flags.DEFINE_string("output", None, "Output folder (mined.json, train/, model/, codes/, index/).")
  flags.DEFINE_integer("top_k", 100, "Passages the teacher ranks per question.")
  flags.DEFINE_integer("num_hard_negatives", 30, "Hard negatives kept per question (the teacher's ranks 2..).")
  flags.DEFINE_integer("batch_size", None, "Encoding batch size (default: encode's).")
  flags.DEFINE_bool("overwrite", False, "Redo a step whose output was made from other inputs.")
  from bpr_jax.config_errors import one_line_config_errors  # pylint: disable=import-outside-toplevel
  if not any(a == "--config" or a.startswith("--config=") for a in sys.argv[1:]):
    # the default recipe goes through the flag's parse, so its overrides get one-line errors too
    # (a flag default is parsed when defined, before one_line_config_errors could check it)
    sys.argv.insert(1, f"--config={_CONFIG_FILE}")
  one_line_config_errors(config_flags.DEFINE_config_file(
      "config", None, f"The student's training recipe (default {_CONFIG_FILE.parent.name}/{_CONFIG_FILE.name}); "
      "override a field with --config.FIELD=VALUE.", lock_config=False))
  flags.mark_flags_as_required(["teacher", "output"])


def student_config(config, teacher: str, mined: str, given: set[str]):
  """`config` with the teacher, its own settings (pooling, lengths, unless in `given`) and the mined
  data filled in; validated (one-line ValueError) before any work."""
  from bpr_jax.export_format import read_settings  # pylint: disable=import-outside-toplevel
  from bpr_jax.train import validate_config  # pylint: disable=import-outside-toplevel
  settings = read_settings(teacher)
  config = config.copy_and_resolve_references()
  config.model.hf_dir = config.loss.teacher = os.path.abspath(teacher)
  config.data.source, config.data.train_path = "dpr_json", os.path.abspath(mined)
  for field, key in (("model.pooling", "pooling"), ("data.question_max_length", "question_max_length"),
                     ("data.passage_max_length", "passage_max_length")):
    if field not in given and settings.get(key) is not None:
      group, leaf = field.split(".")
      config[group][leaf] = settings[key]
  validate_config(config)
  return config


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: Sequence[str]) -> None:
  from bpr_jax import mine_negatives  # pylint: disable=import-outside-toplevel
  from bpr_jax.cli import CommandError  # pylint: disable=import-outside-toplevel
  from bpr_jax.data.passages import scan_passages  # pylint: disable=import-outside-toplevel
  from bpr_jax.export_format import read_settings  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
  out = pathlib.Path(FLAGS.output)
  if out.exists() and not out.is_dir():
    raise CommandError(f"--output {out} exists and is not a folder")
  if bool(FLAGS.beir_dir) == bool(FLAGS.questions):
    raise CommandError("give --questions (with --passages) or --beir_dir (its --split queries, labels unused)")
  passages = FLAGS.passages or (os.path.join(FLAGS.beir_dir, "corpus.jsonl") if FLAGS.beir_dir else None)
  if not passages:
    raise CommandError("--questions needs --passages (the corpus)")
  for flag, path in (("teacher", FLAGS.teacher), ("passages", passages), ("questions", FLAGS.questions),
                     ("beir_dir", FLAGS.beir_dir)):
    if path and not os.path.exists(path):
      raise CommandError(f"--{flag}={path}: no such file or folder")
  read_settings(FLAGS.teacher)  # an export (bpr.json), or one line saying why not
  if FLAGS.questions and not any(line.strip() for line in open(FLAGS.questions, encoding="utf-8")):
    raise CommandError(f"--questions={FLAGS.questions}: no questions in the file")
  scan_passages(passages)  # FILE:LINE: fault, before the teacher encodes anything
  if FLAGS.top_k < 1 + FLAGS.num_hard_negatives:
    raise CommandError(f"--top_k {FLAGS.top_k} is below 1 + --num_hard_negatives {FLAGS.num_hard_negatives}")
  from bpr_jax.config_errors import overridden_fields  # pylint: disable=import-outside-toplevel
  mined = str(out / "mined.json")
  config = student_config(FLAGS.config, FLAGS.teacher, mined, set(overridden_fields(sys.argv, "config")))

  settings = {"num_hard_negatives": FLAGS.num_hard_negatives, "top_k": FLAGS.top_k, "skip_ranks": 0,
              "similarity": config.loss.distill_similarity}
  inputs = mine_negatives.mining_inputs(beir_dir=FLAGS.beir_dir, split=FLAGS.split,
                                        passages=FLAGS.passages, questions=FLAGS.questions,
                                        teacher=FLAGS.teacher, settings=settings)
  mined_action = mine_negatives.check_mined(mined, inputs, FLAGS.overwrite)
  if mined_action == "reuse":
    _log(f"1/5 mine: {mined} already mined from the same inputs; reused")
  else:
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
      _log(f"1/5 mine: the teacher ranks {passages} for each question")
      records, stats = mine_negatives.mine_teacher(
          FLAGS.teacher, beir_dir=FLAGS.beir_dir, split=FLAGS.split, questions_path=FLAGS.questions,
          passages_path=FLAGS.passages, top_k=FLAGS.top_k, num_hard_negatives=FLAGS.num_hard_negatives,
          similarity=settings["similarity"])
      mine_negatives.write_mined(mined, records, inputs)
    except BaseException:
      if created and not any(out.iterdir()):
        out.rmdir()  # nothing left behind by a run that made nothing
      raise
    _log(f"1/5 mine: {stats.num_written} questions in {stats.seconds:.0f}s -> {mined}")

  from bpr_jax import io, provenance, run_config, train  # pylint: disable=import-outside-toplevel
  workdir = out / "train"
  record, step = workdir / TRAINED_ON, None
  if workdir.exists():
    # a run with other settings, or trained on other mined data (TRAINED_ON), is not resumed
    try:
      step, refused = run_config.check_resume(config, str(workdir)), None
    except run_config.TrainingError as e:
      step, refused = None, str(e).rstrip(".")
    if step is not None and not refused:
      trained_on = io.read_json(record).get("mined") if record.is_file() else None
      if provenance.changed(trained_on, inputs):
        refused = f"{workdir} was trained on other data ({provenance.describe(trained_on, inputs)})"
    if refused:
      if not FLAGS.overwrite:
        raise CommandError(f"{refused}; pass --overwrite to train again, or choose another --output")
      _log(f"2/5 train: {refused}; starting again (--overwrite)")
      shutil.rmtree(workdir)
  if step is None or not record.is_file():  # a new run: record what it trains on
    workdir.mkdir(parents=True, exist_ok=True)
    io.atomic_write_json(record, {"mined": inputs})
  _log(f"2/5 train: {workdir} (resumes from its last checkpoint)")
  train.train_and_evaluate(config, str(workdir))

  from bpr_jax.export import export_run  # pylint: disable=import-outside-toplevel
  action, step = export_run(workdir, out / "model", overwrite=FLAGS.overwrite)
  _log(f"3/5 export: step {step} -> {out / 'model'} ({action})")

  from bpr_jax.encode import encode_corpus  # pylint: disable=import-outside-toplevel
  from bpr_jax.exported_model import load_exported  # pylint: disable=import-outside-toplevel
  _log(f"4/5 encode: {passages} -> {out / 'codes'}")
  encode_corpus(load_exported(out / "model"), passages, out / "codes", model_path=out / "model",
                batch_size=FLAGS.batch_size, overwrite=FLAGS.overwrite)

  from bpr_jax.index.binary_index import build_from_codes_dir  # pylint: disable=import-outside-toplevel
  meta = build_from_codes_dir(out / "codes", out / "index", "flat", overwrite=FLAGS.overwrite, log=_log)
  _log(f"5/5 index: {meta['num_passages']} passages x {meta['code_bits']} bits -> {out / 'index'}")
  print(f"serve it: python -m bpr_jax.serve --model={out / 'model'} --index={out / 'index'} --passages={passages}")


if __name__ == "__main__":
  from bpr_jax import cli

  cli.run(main, define_flags)
