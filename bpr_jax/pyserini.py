"""Writes a BPR index and its question encoder as a folder for Pyserini's binary dense search.

Usage:
  python -m bpr_jax.pyserini --index=INDEX --model=EXPORT --output=DIR [--overwrite]

INDEX is a folder written by bpr_jax.index; EXPORT the exported model (bpr_jax.export) whose
codes it holds (a model other than the one the index records is refused unless
--allow_mismatch). DIR is written beside its final name and renamed into place; a DIR made from
the same index and model is reused, one made from others is refused unless --overwrite.

DIR holds:

  index              faiss IndexBinaryIDMap over an IndexBinaryFlat of the passages' sign codes
                     (faiss.read_index_binary)
  docid              the passage ids, one a line, in the index's row order
  query_encoder/     the question encoder as a transformers DPRQuestionEncoder
                     (config.json, model.safetensors, tokenizer files)
  bpr_pyserini.json  num_passages, code_bits, faiss_ids, the source index, and the inputs

Search it with Pyserini:

  from pyserini.search.faiss import BinaryDenseSearcher, BprQueryEncoder
  searcher = BinaryDenseSearcher(DIR, BprQueryEncoder(encoder_dir=f"{DIR}/query_encoder"))
  hits = searcher.search("who wrote ...", k=10, binary_k=1000, rerank=True)

BinaryDenseSearcher loads only `index` and returns str(faiss id) as each hit's docid: the faiss
ids are the passage ids themselves when every id is a canonical decimal integer
(faiss_ids = "docid"), else the row numbers (faiss_ids = "row": line `row` of `docid` is the
passage id). Its rerank reconstructs codes from the wrapped index, so the index is always flat
(exact Hamming, whatever kind INDEX is). BprQueryEncoder takes DPRQuestionEncoder's
pooler_output (the [CLS] hidden state) and sets a bit where it is >= 0: the project's codes
(bpr_jax.codes). It does not truncate questions, so the vectors are the project's for questions
within the export's question_max_length tokens.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Sequence

import numpy as np

from bpr_jax import io

INDEX_FILE = "index"
DOCID_FILE = "docid"
ENCODER_DIR = "query_encoder"
INFO_FILE = "bpr_pyserini.json"
_CANONICAL_INT = re.compile(r"^(0|-?[1-9][0-9]*)$")
_INT64_MAX = np.iinfo(np.int64).max

PathLike = str | os.PathLike


def faiss_ids(ids: Sequence) -> tuple[np.ndarray, str]:
  """(int64 faiss ids, 'docid' | 'row') for passage ids in row order."""
  ids = np.asarray(ids)
  if ids.dtype.kind in "iu":
    if ids.size and (ids.min() < -_INT64_MAX or ids.max() > _INT64_MAX):
      return np.arange(len(ids), dtype=np.int64), "row"
    out = ids.astype(np.int64)
  else:
    text = [str(i) for i in ids.tolist()]
    if not all(_CANONICAL_INT.match(t) and abs(int(t)) <= _INT64_MAX for t in text):
      return np.arange(len(ids), dtype=np.int64), "row"
    out = np.array([int(t) for t in text], dtype=np.int64)
  if len(np.unique(out)) != len(out) or (out == -1).any():  # -1 is faiss's "no hit"
    return np.arange(len(ids), dtype=np.int64), "row"
  return out, "docid"


def build_faiss_index(codes: np.ndarray, ids: np.ndarray):
  """IndexBinaryIDMap(IndexBinaryFlat) holding codes [N, d/8] under int64 ids [N]."""
  import faiss  # pylint: disable=import-outside-toplevel

  codes = np.ascontiguousarray(codes, dtype=np.uint8)
  index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(codes.shape[1] * 8))
  step = 1 << 20
  for s in range(0, codes.shape[0], step):
    index.add_with_ids(codes[s:s + step], np.ascontiguousarray(ids[s:s + step], dtype=np.int64))
  return index


def _docid_text(ids: Sequence) -> str:
  lines = [str(i) for i in np.asarray(ids).tolist()]
  for row, line in enumerate(lines):
    if not line or "\n" in line or "\r" in line or line != line.strip():
      raise ValueError(f"passage id at row {row} ({line!r}) cannot be written as one line of the "
                       "docid file (empty, surrounding spaces or a line break)")
  return "".join(line + "\n" for line in lines)


def write_pyserini(index, model, out_dir: PathLike, inputs: dict | None = None) -> dict:
  """Writes the Pyserini folder (module docstring) for a loaded `BinaryIndex` and
  `ExportedModel`, recording `inputs` (`pyserini_inputs`) when given; replaces `out_dir`
  atomically; returns the info dict."""
  import faiss  # pylint: disable=import-outside-toplevel

  from bpr_jax.models import hf  # pylint: disable=import-outside-toplevel

  settings = model.settings
  encoder = model.question_encoder
  if settings["pooling"] != "cls":
    raise ValueError(f"Pyserini's BprQueryEncoder uses DPRQuestionEncoder's pooler_output ([CLS]); "
                     f"this model uses {settings['pooling']!r} pooling")
  if encoder.code_bits:
    raise ValueError(f"the question encoder has a {encoder.code_bits}-dim code head; Pyserini's "
                     "BprQueryEncoder (DPRQuestionEncoder) cannot apply it")
  if index.code_bits != encoder.config.hidden_size:
    raise ValueError(f"index has {index.code_bits}-bit codes but the question encoder gives "
                     f"{encoder.config.hidden_size}-d vectors (BinaryDenseSearcher needs them equal: "
                     "is this index from this model?)")
  codes = np.asarray(index.codes)  # row order (ivf: the saved index's renumbered rows)
  ids = np.asarray(index.ids)
  if codes.shape[0] != ids.shape[0]:
    raise ValueError(f"index has {codes.shape[0]} codes but {ids.shape[0]} ids")
  docids = _docid_text(ids)
  numeric, kind = faiss_ids(ids)
  info = {"num_passages": int(codes.shape[0]), "code_bits": int(index.code_bits),
          "faiss_ids": kind, "source_index_kind": index.kind,
          "source_index": str(index.path) if index.path is not None else None,
          "question_max_length": int(settings["question_max_length"])}
  if inputs is not None:
    from bpr_jax import provenance  # pylint: disable=import-outside-toplevel
    info[provenance.INPUTS] = inputs
  with io.atomic_directory(out_dir) as tmp:
    faiss.write_index_binary(build_faiss_index(codes, numeric), str(tmp / INDEX_FILE))
    (tmp / DOCID_FILE).write_text(docids, encoding="utf-8")
    (tmp / ENCODER_DIR).mkdir()
    hf.write_dpr_files(encoder, tmp / ENCODER_DIR, kind="question", tokenizer=model.tokenizer)
    with open(tmp / INFO_FILE, "w", encoding="utf-8") as f:
      json.dump(info, f, indent=2, sort_keys=True)
      f.write("\n")
  return info


def pyserini_inputs(index_dir: PathLike, model_dir: PathLike) -> dict:
  """What a Pyserini folder is made from: the index (its meta.json records every file's sha256)
  and the exported model."""
  from bpr_jax import provenance  # pylint: disable=import-outside-toplevel

  return {"index": provenance.fingerprint_file(os.path.join(index_dir, "meta.json")),
          "model": provenance.model_fingerprint(model_dir)}


def export_pyserini(index_dir: PathLike, model_dir: PathLike, out_dir: PathLike, *,
                    overwrite: bool = False, allow_mismatch: bool = False) -> tuple[dict, str]:
  """Loads an index folder and an exported model and writes the Pyserini folder.

  Returns (info, action): action is "reuse" when `out_dir` already holds the folder made from
  the same index and model (nothing is written), else "create" or "overwrite". Raises
  ProvenanceError when the index records another model (unless `allow_mismatch`) or when
  `out_dir` holds a folder made from other inputs (unless `overwrite`).
  """
  from bpr_jax import provenance  # pylint: disable=import-outside-toplevel
  from bpr_jax.exported_model import load_exported  # pylint: disable=import-outside-toplevel
  from bpr_jax.index import BinaryIndex  # pylint: disable=import-outside-toplevel

  index = BinaryIndex.load(index_dir)
  inputs = pyserini_inputs(index_dir, model_dir)
  recorded_model = (index.meta.get(provenance.INPUTS) or {}).get("model")
  provenance.check_belongs(f"index {index_dir} and model {model_dir}",
                           {"model": recorded_model} if recorded_model else None,
                           {"model": inputs["model"]}, allow=allow_mismatch)
  out = pathlib.Path(out_dir)
  action = provenance.check_output_folder(out, INFO_FILE, inputs, what="a Pyserini folder",
                                          overwrite=overwrite)
  if action == "reuse":
    return io.read_json(out / INFO_FILE), action
  model = load_exported(model_dir)
  return write_pyserini(index, model, out_dir, inputs=inputs), action


# ---------------------------------------------------------------------------
# Command.


def define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("index", None, "Index folder written by bpr_jax.index.")
  flags.DEFINE_string("model", None, "Exported model (bpr_jax.export) the index was encoded with.")
  flags.DEFINE_string("output", None, "Folder to write for Pyserini's BinaryDenseSearcher.")
  flags.DEFINE_boolean("overwrite", False, "Replace an --output made from another index or model.")
  flags.DEFINE_boolean("allow_mismatch", False, "Use a model other than the one the index records.")
  flags.mark_flags_as_required(["index", "model", "output"])


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  from bpr_jax import cli, console  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  console.quiet_libraries()
  info, action = export_pyserini(f.index, f.model, f.output, overwrite=f.overwrite,
                                 allow_mismatch=f.allow_mismatch)
  if action == "reuse":
    print(f"{f.output} already holds this Pyserini folder (same index and model); reusing it")
    return
  print(f"wrote {info['num_passages']} passages x {info['code_bits']} bits (faiss ids: "
        f"{info['faiss_ids']}) and the question encoder for Pyserini to {f.output}")


if __name__ == "__main__":
  from bpr_jax import cli

  cli.run(main, define_flags)
