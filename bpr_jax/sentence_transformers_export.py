"""Writes an exported model as two sentence-transformers models, for questions and passages.

Usage:
  python -m bpr_jax.sentence_transformers_export --model=EXPORT --output=DIR [--overwrite]

EXPORT is an exported model (bpr_jax.export). DIR is written beside its final name and renamed
into place; a DIR made from the same export is reused, one made from another is refused unless
--overwrite. DIR holds:

  question/   SentenceTransformer("DIR/question"): the question encoder
  passage/    SentenceTransformer("DIR/passage"): the passage encoder
  bpr_sentence_transformers.json   the export it was made from (inputs)

Each is the export's encoder dir (config.json, model.safetensors, tokenizer files) plus
modules.json (Transformer -> Pooling), sentence_bert_config.json (max_seq_length = the export's
question / passage max length), 1_Pooling/config.json (the export's pooling: [CLS] or mean) and
config_sentence_transformers.json (similarity "dot": BPR and DPR score by inner product; no
Normalize module). A shared-encoder export gives two identical folders. An export with a code
head (model.code_bits) is refused.

Encode as this project does:

  questions:  question_model.encode(questions)                  [CLS] q [SEP]
  passages:   passage_model.encode([(title, text), ...])        [CLS] title [SEP] text [SEP]
              passage_model.encode([text, ...]) for an empty title   [CLS] text [SEP]

The vectors equal the project's (float tolerance); when a pair needs truncating,
sentence-transformers cuts the longer side first ('longest_first') where the project cuts only
the text, so they agree while the title is no longer than the text left.

Codes: quantize_embeddings(vectors, precision="ubinary") packs vectors > 0 big-endian, the
project packs vectors >= 0 (sign(0) = +1): the codes agree except at a coordinate that is
exactly 0.0, which float encoder outputs essentially never give.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Sequence

from bpr_jax import io

QUESTION_DIR = "question"
PASSAGE_DIR = "passage"
POOLING_DIR = "1_Pooling"
INFO_FILE = "bpr_sentence_transformers.json"
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
]

PathLike = str | os.PathLike


def _write_json(path: pathlib.Path, obj) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")


def pooling_config(pooling: str, dim: int) -> dict:
  """1_Pooling/config.json for 'cls' or 'mean' pooling (keys every version reads)."""
  if pooling not in ("cls", "mean"):
    raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
  return {"word_embedding_dimension": int(dim),
          "pooling_mode_cls_token": pooling == "cls",
          "pooling_mode_mean_tokens": pooling == "mean",
          "pooling_mode_max_tokens": False,
          "pooling_mode_mean_sqrt_len_tokens": False}


def write_st_dir(encoder_dir: PathLike, out_dir: PathLike, *, pooling: str, dim: int,
                 max_seq_length: int) -> None:
  """Copies a HF BERT dir into the existing `out_dir` and adds the sentence-transformers files."""
  encoder_dir, out_dir = pathlib.Path(encoder_dir), pathlib.Path(out_dir)
  for item in sorted(encoder_dir.iterdir()):
    if item.is_file():
      shutil.copyfile(item, out_dir / item.name)
  _write_json(out_dir / "modules.json", MODULES)
  _write_json(out_dir / "sentence_bert_config.json",
              {"max_seq_length": int(max_seq_length), "do_lower_case": False})
  _write_json(out_dir / "config_sentence_transformers.json",
              {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "dot"})
  (out_dir / POOLING_DIR).mkdir()
  _write_json(out_dir / POOLING_DIR / "config.json", pooling_config(pooling, dim))


def export_sentence_transformers(model_dir: PathLike, out_dir: PathLike, *,
                                 overwrite: bool = False) -> dict:
  """Writes `out_dir`/question and `out_dir`/passage from an exported model dir (replacing
  `out_dir` atomically); returns the export's settings.

  The one overwrite rule: an `out_dir` made from the same export is reused (the returned dict
  has "reused": True; nothing is written); one made from another is refused (ProvenanceError)
  unless `overwrite`.
  """
  from bpr_jax import export_format, provenance  # pylint: disable=import-outside-toplevel
  from bpr_jax.models import hf  # pylint: disable=import-outside-toplevel

  model_dir = pathlib.Path(model_dir)
  if not model_dir.is_dir():
    raise FileNotFoundError(f"exported model directory not found: {model_dir}")
  settings = export_format.read_settings(model_dir)
  parts = ((export_format.QUESTION_DIR, QUESTION_DIR, settings["question_max_length"]),
           (export_format.PASSAGE_DIR, PASSAGE_DIR, settings["passage_max_length"]))
  for source, _, _ in parts:
    if not (model_dir / source / hf.CONFIG_FILE).is_file():
      raise FileNotFoundError(f"missing {source}/{hf.CONFIG_FILE} in exported model {model_dir}")
    # A code head (model.code_bits) is refused even when its width equals hidden_size: the
    # vectors would silently lose it. sentence-transformers' LayerNorm module fixes eps at 1e-5
    # (BERT's is 1e-12), so its output would not be this model's vectors.
    head = hf.code_bits_of(hf.load_state_dict(model_dir / source))
    if head:
      raise ValueError(f"{model_dir / source} has a {head}-dim code head (model.code_bits); the "
                       "sentence-transformers export cannot write it (its LayerNorm module has eps "
                       "1e-5, the head's is the encoder's); use the exported model or transformers")
  inputs = {"model": provenance.model_fingerprint(model_dir)}
  out = pathlib.Path(out_dir)
  action = provenance.check_output_folder(out, INFO_FILE, inputs, what="sentence-transformers models",
                                          overwrite=overwrite)
  if action == "reuse":
    return {**settings, "reused": True}
  with io.atomic_directory(out_dir) as tmp:
    for source, name, max_length in parts:
      (tmp / name).mkdir()
      write_st_dir(model_dir / source, tmp / name, pooling=settings["pooling"],
                   dim=settings["hidden_size"], max_seq_length=max_length)
    _write_json(tmp / INFO_FILE, {"source": str(model_dir.resolve()), provenance.INPUTS: inputs})
  return settings


# ---------------------------------------------------------------------------
# Command.


def define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("model", None, "Exported model dir (bpr_jax.export).")
  flags.DEFINE_string("output", None, "Folder to write question/ and passage/ "
                      "sentence-transformers models to.")
  flags.DEFINE_boolean("overwrite", False, "Replace an --output made from another export.")
  flags.mark_flags_as_required(["model", "output"])


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  from bpr_jax import cli  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  settings = export_sentence_transformers(f.model, f.output, overwrite=f.overwrite)
  if settings.get("reused"):
    print(f"{f.output} already holds these sentence-transformers models (same export); reusing it")
    return
  print(f"wrote sentence-transformers models {f.output}/{QUESTION_DIR} and "
        f"{f.output}/{PASSAGE_DIR} ({settings['pooling']} pooling, {settings['hidden_size']}-d)")


if __name__ == "__main__":
  from bpr_jax import cli

  cli.run(main, define_flags)
