"""Importers: a Hugging Face BERT or a pair of DPR encoders as an exported model folder.

`import_hf_encoder` exports one Hugging Face BERT as both encoders (post-hoc sign codes: a
baseline), pooling as the model's own sentence-transformers config says (`hf_pooling`);
`import_dpr` exports transformers DPRQuestionEncoder / DPRContextEncoder checkpoints. Each
records where it came from in bpr.json (`hf_source`, `dpr_source`) and follows the overwrite
rule of `bpr_jax.export_format.plan_output`. The command is `python -m bpr_jax.export`.
"""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Any, Sequence

from bpr_jax import provenance
from bpr_jax.export_format import PathLike, plan_output, save_exported
from bpr_jax.losses import MODES
from bpr_jax.models import hf
from bpr_jax.models.bert import POOLINGS, BertConfig
from bpr_jax.tokenization import Tokenizer


def hf_pooling(model_dir: PathLike, pooling: str | None = None) -> tuple[str, str | None]:
  """(the pooling to export `model_dir` with, a one-line note or None).

  `pooling=None` reads the model's own (`hf.read_pooling`: sentence-transformers' pooling
  config); a model without one pools [CLS], with a note saying so. An explicit `pooling` that
  differs from the model's file is used as asked, with a note. A mode bpr-jax cannot do (max,
  ...) raises ValueError unless `pooling` is given.
  """
  if pooling is not None and pooling not in POOLINGS:
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  file = hf.pooling_file(model_dir)
  if pooling is None:
    own = hf.read_pooling(model_dir)
    if own is None:
      return "cls", (f"{model_dir} has no sentence-transformers pooling config; pooling 'cls' "
                     "(pass --pooling=mean for a mean-pooled model)")
    return own, None
  if file is not None:
    own = hf.pooling_of(file)
    if own != pooling:
      return pooling, f"{file} pools {own!r}; exporting with pooling {pooling!r} as asked"
  return pooling, None


def hf_source(model_dir: PathLike, *, mode: str, pooling: str, max_length: int) -> dict:
  """The "source" record of an `--hf_model` export: kind "hf", a fingerprint of the model's
  weights, config and tokenizer files, and the settings it was exported with."""
  model_dir = pathlib.Path(model_dir)
  return {"kind": "hf", "model": provenance.fingerprint_files(hf.model_files(model_dir), model_dir),
          "pooling": pooling, "max_length": max_length, "mode": mode}


def import_hf_encoder(model_dir: PathLike, out_dir: PathLike, *, mode: str = "bpr",
                      pooling: str | None = None, max_length: int = 256,
                      overwrite: bool = False) -> str:
  """Exports an off-the-shelf Hugging Face BERT as both encoders (shared weights).

  For baselines: its sign codes are post-hoc binarisation (e.g. sentence-transformers'
  binary quantisation) served by the same index, search and service as a trained BPR model.
  `pooling=None` uses the model's own (see `hf_pooling`; notes go to stderr). An existing
  `out_dir` follows `plan_output`; returns "create", "reuse" or "overwrite".
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if not pathlib.Path(model_dir).is_dir():
    raise FileNotFoundError(f"model directory not found: {model_dir}")
  pooling, note = hf_pooling(model_dir, pooling)
  if note:
    print(f"note: {note}", file=sys.stderr)
  inputs = {"source": hf_source(model_dir, mode=mode, pooling=pooling, max_length=max_length)}
  action = plan_output(out_dir, inputs, overwrite=overwrite)
  if action == "reuse":
    return action
  encoder = hf.load_bert(model_dir, pooling=pooling)
  hidden = encoder.config.hidden_size
  settings = {
      "mode": mode, "pooling": pooling, "question_max_length": max_length,
      "passage_max_length": max_length, "code_bits": hidden,
      "hidden_size": hidden, "shared_encoder": True,
  }
  save_exported(encoder, encoder, Tokenizer.from_dir(model_dir), settings, out_dir, inputs=inputs)
  return action


def _dpr_config(checkpoint: PathLike) -> BertConfig:
  """The BertConfig of a DPR checkpoint: config.json in it, or beside the file."""
  path = pathlib.Path(checkpoint)
  folder = path if path.is_dir() else path.parent
  file = folder / hf.CONFIG_FILE
  if not file.is_file():
    raise FileNotFoundError(f"no {hf.CONFIG_FILE} for DPR checkpoint {path} (looked in {folder})")
  return BertConfig.from_json(file)


def _tokenizer_for(source: PathLike, tokenizer_dir: PathLike | None) -> Tokenizer:
  folder = pathlib.Path(tokenizer_dir if tokenizer_dir is not None else source)
  if not folder.is_dir():
    folder = folder.parent
  try:
    return Tokenizer.from_dir(folder)
  except FileNotFoundError as e:
    hint = "" if tokenizer_dir is not None else (
        " (a checkpoint saved by model.save_pretrained has no tokenizer: pass --tokenizer=DIR "
        "holding vocab.txt or tokenizer.json, e.g. the DPR question encoder's own hub dir)")
    raise FileNotFoundError(f"{e}{hint}") from None


def _dpr_files(source: PathLike) -> tuple[pathlib.Path, list[pathlib.Path]]:
  """(folder, weights and config.json) of a DPR checkpoint dir or weights file."""
  path = pathlib.Path(source)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  folder = path if path.is_dir() else path.parent
  weights = hf.weights_file(path) if path.is_dir() else path
  files = [weights] + [folder / hf.CONFIG_FILE] * (folder / hf.CONFIG_FILE).is_file()
  return folder, files


def _tokenizer_files(folder: PathLike) -> list[pathlib.Path]:
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    folder = folder.parent
  return [folder / n for n in hf.TOKENIZER_FILES if (folder / n).is_file()]


def dpr_source(checkpoint: PathLike | Sequence[PathLike], *, tokenizer_dir: PathLike | None = None,
               mode: str = "bpr", pooling: str = "cls", max_length: int = 256) -> dict:
  """The "source" record of a DPR import: kind "dpr", fingerprints of the checkpoint(s) and the
  tokenizer files, and the settings given (pooling, max_length, mode)."""
  pair = not isinstance(checkpoint, (str, os.PathLike))
  record: dict[str, Any] = {"kind": "dpr"}
  if pair:
    q_source, p_source = list(checkpoint)
    for key, source in (("question_encoder", q_source), ("ctx_encoder", p_source)):
      folder, files = _dpr_files(source)
      record[key] = provenance.fingerprint_files(files, folder)
  else:
    q_source = checkpoint
    folder, files = _dpr_files(checkpoint)
    record["checkpoint"] = provenance.fingerprint_files(files, folder)
  tok_folder = pathlib.Path(tokenizer_dir if tokenizer_dir is not None else q_source)
  tok_folder = tok_folder if tok_folder.is_dir() else tok_folder.parent
  record["tokenizer"] = provenance.fingerprint_files(_tokenizer_files(tok_folder), tok_folder)
  record.update(pooling=pooling, max_length=max_length, mode=mode)
  return record


def import_dpr(checkpoint: PathLike | Sequence[PathLike], out_dir: PathLike, *,
               tokenizer_dir: PathLike | None = None, mode: str = "bpr", pooling: str = "cls",
               max_length: int = 256, overwrite: bool = False) -> str:
  """Builds an exported dir from a published DPR/BPR checkpoint in transformers DPR naming.

  `checkpoint`: a dir (or weights file with config.json beside it) holding both
  encoders, or a (question, passage) pair of DPRQuestionEncoder /
  DPRContextEncoder dirs as written by `save_pretrained`. The tokenizer comes from
  `tokenizer_dir`, else from the (question) checkpoint dir. code_bits = hidden_size
  (as in training exports). DPR pools [CLS]; 'mean' is accepted for checkpoints
  trained that way. An existing `out_dir` follows `plan_output` (reused when exported from the
  same source); returns "create", "reuse" or "overwrite".
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if pooling not in POOLINGS:
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  pair = not isinstance(checkpoint, (str, os.PathLike))
  if pair:
    checkpoint = list(checkpoint)
    if len(checkpoint) != 2:
      raise ValueError(f"expected (question, passage) checkpoints, got {len(checkpoint)}")
  inputs = {"source": dpr_source(checkpoint, tokenizer_dir=tokenizer_dir, mode=mode, pooling=pooling,
                                 max_length=max_length)}
  action = plan_output(out_dir, inputs, overwrite=overwrite)
  if action == "reuse":
    return action
  q_state, p_state = hf.load_dpr_checkpoint(checkpoint)
  q_source, p_source = (checkpoint[0], checkpoint[1]) if pair else (checkpoint, checkpoint)
  tokenizer = _tokenizer_for(q_source, tokenizer_dir)
  encoders = []
  for source, state in ((q_source, q_state), (p_source, p_state)):
    try:
      encoders.append(hf.bert_from_state_dict(_dpr_config(source), state, pooling=pooling))
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None
  hidden = encoders[0].config.hidden_size
  if encoders[1].config.hidden_size != hidden:
    raise ValueError(f"question encoder hidden size {hidden} != passage encoder hidden size "
                     f"{encoders[1].config.hidden_size}")
  if tokenizer.vocab_size > encoders[0].config.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the encoders' vocab_size is "
                     f"{encoders[0].config.vocab_size} (wrong --tokenizer?)")
  settings = {
      "mode": mode, "pooling": pooling, "question_max_length": max_length,
      "passage_max_length": max_length, "code_bits": hidden,
      "hidden_size": hidden, "shared_encoder": False,
  }
  save_exported(encoders[0], encoders[1], tokenizer, settings, out_dir, inputs=inputs)
  return action
