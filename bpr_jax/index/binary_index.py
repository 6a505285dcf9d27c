"""A saved binary index: ``save_index`` writes the folder, ``BinaryIndex.load`` reads it.

Folder layout::

  index.faiss   faiss binary index (``write_index_binary``)
  codes.npy     uint8 [N, code_bits/8] packed sign codes, memory-mappable,
                used for stage-2 reranking (hash indexes cannot reconstruct);
                not written for ivf (reranking reads the inverted lists,
                ``bpr_jax.index.ivf``)
  ids.npy       passage ids (``bpr_jax.index.ids``)
  meta.json     kind, code_bits, num_passages, hash settings, sha256 and size
                of every file; written last, so its presence marks a
                complete index

For ivf, memory is the lists' code + 8 bytes per passage (code + row id);
``ids.npy`` is memory-mapped too.  ``build_from_codes_dir`` goes from an
encode output (``bpr_jax.index.codes_dir``) to a saved folder.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Any, Sequence

import numpy as np

from bpr_jax.index.builders import build_index, flat_codes_view, index_settings
from bpr_jax.index.codes_dir import load_codes_dir
from bpr_jax.index.ids import normalize_ids
from bpr_jax.index.ivf import ivf_codes_view, renumber_ivf_file
from bpr_jax.io import (atomic_save_npy, atomic_write_json, check_file, file_record, load_npy,
                        read_json, temp_path)

INDEX_FORMAT = "bpr-index-v1"


def save_index(out_dir: str | os.PathLike, index, codes: np.ndarray, ids: Sequence[Any],
               meta: dict[str, Any] | None = None) -> dict[str, Any]:
  """Saves an index folder (layout in the module docstring); returns meta.

  Every file goes through a temp name and a rename; ``meta.json`` is written
  last with the sha256 of the others.  For ivf, rows are renumbered into
  inverted-list order in the written file (``index`` itself is unchanged) and
  ``ids.npy`` is permuted to match; no ``codes.npy`` is written.
  """
  import faiss  # pylint: disable=import-outside-toplevel

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  codes = np.asarray(codes)
  ids = normalize_ids(ids)
  if codes.shape[0] != ids.shape[0]:
    raise ValueError(f"codes has {codes.shape[0]} rows but ids has {ids.shape[0]}")
  if index.ntotal != codes.shape[0]:
    raise ValueError(f"index holds {index.ntotal} codes but codes has {codes.shape[0]} rows")
  if index.d != codes.shape[1] * 8:
    raise ValueError(f"index dimension {index.d} != code bits {codes.shape[1] * 8}")
  (out / "meta.json").unlink(missing_ok=True)  # an index being rewritten is incomplete
  settings = index_settings(index)
  is_ivf = settings["kind"] == "ivf"
  tmp = temp_path(out / "index.faiss")
  try:
    faiss.write_index_binary(index, str(tmp))
    if is_ivf:
      order = renumber_ivf_file(tmp, index)
      ids = ids[order]
    os.replace(tmp, out / "index.faiss")
  finally:
    tmp.unlink(missing_ok=True)
  if is_ivf:
    (out / "codes.npy").unlink(missing_ok=True)
  else:
    atomic_save_npy(out / "codes.npy", np.ascontiguousarray(codes, dtype=np.uint8))
  atomic_save_npy(out / "ids.npy", ids)
  full = dict(meta or {})
  full.update(settings)
  names = ("index.faiss", "ids.npy") if is_ivf else ("index.faiss", "codes.npy", "ids.npy")
  full.update({
      "format": INDEX_FORMAT,
      "code_bits": int(codes.shape[1] * 8),
      "num_passages": int(codes.shape[0]),
      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "files": {name: file_record(out / name) for name in names},
  })
  atomic_write_json(out / "meta.json", full)
  return full


def _shard_manifests(codes_dir: pathlib.Path) -> list[dict[str, Any]]:
  """The manifests of an encode output's shards in shard order (read only, no arrays)."""
  from bpr_jax.index.codes_dir import MANIFEST, read_manifest  # pylint: disable=import-outside-toplevel

  if not codes_dir.is_dir():
    raise FileNotFoundError(f"codes folder {codes_dir} does not exist")
  if (codes_dir / MANIFEST).exists():
    dirs = [codes_dir]
  else:
    dirs = sorted(p for p in codes_dir.glob("shard_*") if p.is_dir())
    if not dirs:
      raise FileNotFoundError(
          f"{codes_dir}: no manifest.json and no shard_* folders; is it an encode output?")
  manifests = []
  for d in dirs:
    m = read_manifest(d)
    if m is None:
      raise ValueError(f"{d}: shard has no {MANIFEST} (encode did not finish)")
    manifests.append(m)
  return manifests


def codes_fingerprint(codes_dir: str | os.PathLike,
                      manifests: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
  """``{"path", "sha256"}`` of an encode output: sha256 over each shard manifest's codes.npy and
  ids.npy sha256, in shard order (no array is read)."""
  import hashlib  # pylint: disable=import-outside-toplevel

  codes_dir = pathlib.Path(codes_dir).resolve()
  if manifests is None:
    manifests = _shard_manifests(codes_dir)
  h = hashlib.sha256()
  for m in manifests:
    files = m.get("files") or {}
    for name in ("codes.npy", "ids.npy"):
      record = files.get(name) or {}
      if "sha256" not in record:
        raise ValueError(f"{codes_dir}: a shard manifest has no sha256 for {name}")
      h.update(f"{name}:{record['sha256']};".encode())
  return {"path": str(codes_dir), "sha256": h.hexdigest()}


def index_inputs(codes_dir: str | os.PathLike, kind: str, *,
                 manifests: Sequence[dict[str, Any]] | None = None,
                 **params: int | None) -> dict[str, Any]:
  """The ``inputs`` record of an index built from ``codes_dir`` (``bpr_jax.provenance``).

  ``{"codes": codes_fingerprint, "model", "passages" (from the encode manifests' own inputs,
  when they have them), "settings": {"kind", and each parameter given}}``.  Shards that disagree
  on their model or passages are refused.
  """
  from bpr_jax.provenance import INPUTS, changed  # pylint: disable=import-outside-toplevel

  codes_dir = pathlib.Path(codes_dir).resolve()
  if manifests is None:
    manifests = _shard_manifests(codes_dir)
  inputs: dict[str, Any] = {"codes": codes_fingerprint(codes_dir, manifests)}
  for key in ("model", "passages"):
    values = [(m.get(INPUTS) or {}).get(key) for m in manifests]
    if values[0] is None:
      continue
    for i, v in enumerate(values[1:], 1):
      if v is None or changed({key: values[0]}, {key: v}):
        raise ValueError(f"{codes_dir}: shard {i} was encoded from another {key} than shard 0")
    inputs[key] = values[0]
  settings: dict[str, Any] = {"kind": kind}
  settings.update({k: int(v) for k, v in sorted(params.items()) if v is not None})
  inputs["settings"] = settings
  return inputs


def check_prefix_bits(manifests: Sequence[dict[str, Any]], bits: int, codes_dir: Any = "the codes") -> int | None:
  """``bits`` for an index of the first ``bits`` bits of the codes in ``manifests``; None when that is
  the whole code.  A one-line ValueError unless ``bits`` is a multiple of 8 no wider than the codes
  and, when the model they were encoded with can be read, one of the sizes it records
  (``export_format.code_sizes``: its nested_bits and whole code)."""
  from bpr_jax.export_format import check_code_size, read_settings  # pylint: disable=import-outside-toplevel

  width = int(manifests[0].get("code_bits", 0))
  if bits <= 0 or bits % 8 or (width and bits > width):
    raise ValueError(f"--code_bits={bits}: give a positive multiple of 8 no wider than the {width}-bit codes "
                     f"in {codes_dir}")
  model = manifests[0].get("model")
  if model and (pathlib.Path(model) / "bpr.json").is_file():
    check_code_size(read_settings(model), bits, f"model {model} (which encoded {codes_dir})")
  return None if bits == width else int(bits)


_INDEX_FILES = ("index.faiss", "codes.npy", "ids.npy", "meta.json")


def _incomplete_index(out: pathlib.Path) -> bool:
  """A folder holding only pieces of an index without its meta.json (a run that died)."""
  if not out.is_dir() or (out / "meta.json").exists():
    return False
  return all(p.name in _INDEX_FILES or p.name.startswith(tuple(f"{n}." for n in _INDEX_FILES))
             for p in out.iterdir())


def build_from_codes_dir(codes_dir: str | os.PathLike, out_dir: str | os.PathLike, kind: str,
                         *, hash_bits: int | None = None, nflip: int | None = None,
                         nhash: int | None = None, nlist: int | None = None,
                         nprobe: int | None = None, train_size: int | None = None,
                         verify: bool = True, overwrite: bool = False,
                         code_bits: int | None = None, log: Any = None) -> dict[str, Any]:
  """Reads an encode output, builds an index of ``kind`` and saves it; returns its meta.

  ``code_bits``: index only the first N bits of each code (the first N/8 bytes), for a model
  trained with nested codes: one encode gives every size it records (``check_prefix_bits``).

  The one overwrite rule (``bpr_jax.provenance.check_output``): an index at ``out_dir`` built
  from the same codes and settings is reused (``log`` gets one line; nothing is rebuilt); one
  built from other inputs is refused unless ``overwrite``.  The folder is written beside
  ``out_dir`` and renamed into place, so a failed build leaves the old one untouched.
  ``meta.json`` records ``inputs`` (``index_inputs``).
  """
  from bpr_jax import provenance  # pylint: disable=import-outside-toplevel
  from bpr_jax.io import atomic_directory  # pylint: disable=import-outside-toplevel

  codes_dir = pathlib.Path(codes_dir)
  out = pathlib.Path(out_dir)
  manifests = _shard_manifests(codes_dir)
  if code_bits is not None:
    code_bits = check_prefix_bits(manifests, code_bits, codes_dir)
  inputs = index_inputs(codes_dir, kind, manifests=manifests, hash_bits=hash_bits, nflip=nflip,
                        nhash=nhash, nlist=nlist, nprobe=nprobe, train_size=train_size,
                        code_bits=code_bits)
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"--output {out} exists and is not a folder")
  recorded = None
  if (out / "meta.json").is_file():
    try:
      recorded = read_json(out / "meta.json").get(provenance.INPUTS)
    except (ValueError, AttributeError):
      recorded = None
  if not _incomplete_index(out):
    action = provenance.check_output(out, recorded, inputs, what="an index", overwrite=overwrite)
    if action == "reuse":
      meta = read_json(out / "meta.json")
      if log is not None:
        log(f"{out} already holds this index (same codes and settings); reusing it")
      return meta
  src = load_codes_dir(codes_dir, verify=verify)
  if code_bits is not None and code_bits < src.code_bits:
    src.codes = np.ascontiguousarray(src.codes[:, :code_bits // 8])
  index = build_index(src.codes, kind, hash_bits=hash_bits, nflip=nflip, nhash=nhash,
                      nlist=nlist, nprobe=nprobe, train_size=train_size)
  first = src.manifests[0]
  meta = {
      "source": str(codes_dir.resolve()),
      "model": first.get("model"),
      "passages": first.get("passages"),
      "num_shards": len(src.manifests),
      provenance.INPUTS: inputs,
  }
  with atomic_directory(out) as tmp:
    meta = save_index(tmp, index, src.codes, src.ids, meta)
  return meta


@dataclasses.dataclass
class BinaryIndex:
  """A loaded binary index.

  Attributes:
    index: the faiss binary index (stage-1 candidates).
    codes: uint8 [N, code_bits/8] codes for reranking.  For ``flat`` this is a
      zero-copy view of the faiss index's own storage (no second copy in
      memory); for a loaded ``ivf`` an ``IVFListCodes`` reading the inverted
      lists; otherwise ``codes.npy``, memory-mapped when ``mmap``.
    ids: passage ids [N] (int64 or unicode); row i has id ``ids[i]``.
    meta: the contents of ``meta.json`` (``code_bits``, ``kind``, ...).
    path: the folder it was loaded from (None when built in memory).
  """

  index: Any
  codes: np.ndarray
  ids: np.ndarray
  meta: dict[str, Any]
  path: pathlib.Path | None = None

  @property
  def code_bits(self) -> int:
    return int(self.meta["code_bits"])

  @property
  def kind(self) -> str:
    return str(self.meta["kind"])

  @property
  def ntotal(self) -> int:
    return int(self.codes.shape[0])

  @property
  def bytes_per_passage(self) -> float:
    return self.code_bits / 8

  @property
  def nprobe(self) -> int | None:
    """ivf lists probed per question (None for other kinds)."""
    return int(self.index.nprobe) if self.kind == "ivf" else None

  @nprobe.setter
  def nprobe(self, value: int) -> None:
    if self.kind != "ivf":
      raise ValueError(f"nprobe applies to ivf indexes, not {self.kind}")
    if not 1 <= int(value) <= int(self.index.nlist):
      raise ValueError(f"nprobe must be in [1, nlist={int(self.index.nlist)}], got {value}")
    self.index.nprobe = int(value)

  def memory_bytes(self) -> int:
    """Bytes held for search: faiss index + ids (+ codes when stored apart).

    For ivf the codes live in the inverted lists (counted in the faiss file).
    """
    if self.path is not None and (self.path / "index.faiss").exists():
      faiss_bytes = (self.path / "index.faiss").stat().st_size
    else:
      faiss_bytes = self.ntotal * self.code_bits // 8
      if self.kind == "ivf":
        faiss_bytes += 8 * self.ntotal + int(self.index.nlist) * self.code_bits // 8
    extra = 0 if self.kind in ("flat", "ivf") else int(self.codes.nbytes)
    return int(faiss_bytes + self.ids.nbytes + extra)

  def ids_of(self, rows: np.ndarray) -> list[str]:
    """Passage ids (as str) for an array of rows; row -1 gives ""."""
    rows = np.asarray(rows).reshape(-1)
    return ["" if r < 0 else str(self.ids[r]) for r in rows.tolist()]

  @classmethod
  def from_arrays(cls, codes: np.ndarray, ids: Sequence[Any] | None = None, kind: str = "flat",
                  **kwargs) -> "BinaryIndex":
    """Builds an in-memory index (tests, benchmarks).

    For ivf, ``codes`` stays a separate in-memory array (rows in input order);
    only a saved and loaded ivf index reranks from its inverted lists.
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    ids = normalize_ids(np.arange(codes.shape[0]) if ids is None else ids)
    if ids.shape[0] != codes.shape[0]:
      raise ValueError(f"codes has {codes.shape[0]} rows but ids has {ids.shape[0]}")
    index = build_index(codes, kind, **kwargs)
    meta = dict(index_settings(index), code_bits=codes.shape[1] * 8,
                num_passages=codes.shape[0], format=INDEX_FORMAT)
    if kind == "flat":
      codes = flat_codes_view(index, codes.shape[1])
    return cls(index=index, codes=codes, ids=ids, meta=meta)

  @classmethod
  def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> "BinaryIndex":
    """Loads an index folder written by ``save_index``.

    Raises clear errors for a missing or incomplete folder, truncated files,
    checksum mismatches (sha256 checked when ``verify``) and length mismatches.
    """
    import faiss  # pylint: disable=import-outside-toplevel

    path = pathlib.Path(path)
    mpath = path / "meta.json"
    if not mpath.exists():
      raise FileNotFoundError(f"{path}: no meta.json; not a (complete) BPR index folder")
    meta = read_json(mpath)
    if meta.get("format") != INDEX_FORMAT:
      raise ValueError(f"{mpath}: not a {INDEX_FORMAT} index")
    files = meta.get("files", {})
    is_ivf = meta.get("kind") == "ivf"
    names = ("index.faiss", "ids.npy") if is_ivf else ("index.faiss", "codes.npy", "ids.npy")
    for name in names:
      check_file(path / name, files.get(name), verify)
    ids = load_npy(path / "ids.npy", mmap=mmap and is_ivf)
    try:
      flags_ = faiss.IO_FLAG_MMAP_IFC if (is_ivf and mmap) else 0
      index = faiss.read_index_binary(str(path / "index.faiss"), flags_)
    except RuntimeError as e:
      raise ValueError(f"{path}/index.faiss: cannot read faiss index ({e})") from None
    nbytes = meta["code_bits"] // 8
    if index.d != meta["code_bits"]:
      raise ValueError(f"{path}: faiss index has d={index.d}, meta says {meta['code_bits']}")
    if meta["kind"] == "flat":
      codes = flat_codes_view(index, nbytes)
    elif meta["kind"] == "ivf":
      if not isinstance(index, faiss.IndexBinaryIVF):
        raise ValueError(f"{path}: meta says ivf but index.faiss is {type(index).__name__}")
      codes = ivf_codes_view(path / "index.faiss", index)
      codes.check_ids()
      if "nprobe" in meta:
        index.nprobe = int(meta["nprobe"])
    else:
      codes = load_npy(path / "codes.npy", mmap=mmap)
    if codes.ndim != 2 or codes.shape[1] != nbytes:
      raise ValueError(f"{path}: codes shape {codes.shape} does not match code_bits {meta['code_bits']}")
    if not codes.shape[0] == ids.shape[0] == index.ntotal == meta["num_passages"]:
      raise ValueError(
          f"{path}: length mismatch: codes {codes.shape[0]}, ids {ids.shape[0]}, "
          f"index {index.ntotal}, meta {meta['num_passages']}")
    return cls(index=index, codes=codes, ids=ids, meta=meta, path=path)
