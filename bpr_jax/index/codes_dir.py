"""The encode output format: shards, chunks and manifests.

``bpr_jax.encode`` writes it, ``bpr_jax.index`` reads it.  Layout of an
output folder ``C`` (``C`` itself for one shard, ``C/shard_{s:05d}`` for
shard s of many, see ``shard_dir``)::

  chunks/run.json              the inputs and chunk size the chunks belong to
                               (chunks of other inputs are discarded, never resumed)
  chunks/chunk_00000.npz ...   codes, ids (+ embeddings) per chunk, each
                               written atomically; a rerun keeps the chunks
                               that load with the right number of rows
                               (``chunk_ok``) and redoes the others
  codes.npy                    uint8 [N, code_bits/8] (``bpr_jax.codes`` layout)
  ids.npy                      int64 when all ids are integers, else unicode
                               (``bpr_jax.index.ids``)
  embeddings.npy               float32 [N, d], when float embeddings are kept
  manifest.json                format ``bpr-codes-v1``, counts, dims,
                               code_bits, ``{"sha256", "bytes"}`` of each file,
                               shard index and count, and ``"inputs"`` (the
                               model's and the passages' fingerprints and the
                               settings, ``bpr_jax.provenance``); written last,
                               so it marks a finished shard

``merge_chunks`` streams the chunks into the three arrays; ``write_manifest``
finishes a shard.  ``load_codes_dir`` checks and unions the shards of ``C``
in shard order.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

from bpr_jax.index.ids import concat_ids, normalize_ids
from bpr_jax.io import (atomic_savez, atomic_write_json, check_file, file_record, load_npy,
                        read_json, temp_path)

CODES_FORMAT = "bpr-codes-v1"
MANIFEST = "manifest.json"
CHUNK_DIR = "chunks"
CODES_FILE = "codes.npy"
IDS_FILE = "ids.npy"
EMBEDDINGS_FILE = "embeddings.npy"


# ---------------------------------------------------------------------------
# Writing (bpr_jax.encode).


def shard_dir(output: str | os.PathLike, num_shards: int, shard_index: int) -> pathlib.Path:
  """``output`` itself for a single shard, else ``output/shard_{s:05d}``."""
  out = pathlib.Path(output)
  return out if num_shards == 1 else out / f"shard_{shard_index:05d}"


def chunk_path(out_dir: str | os.PathLike, i: int) -> pathlib.Path:
  """Path of chunk ``i`` of a shard folder."""
  return pathlib.Path(out_dir) / CHUNK_DIR / f"chunk_{i:05d}.npz"


def write_chunk(path: str | os.PathLike, codes: np.ndarray, ids: np.ndarray,
                embeddings: np.ndarray | None = None) -> None:
  """Writes one chunk file (.npz: codes, ids [, embeddings]) atomically."""
  codes = np.asarray(codes)
  ids = np.asarray(ids)
  if codes.ndim != 2 or codes.dtype != np.uint8:
    raise ValueError(f"chunk codes must be uint8 [n, bytes], got {codes.dtype} {codes.shape}")
  if ids.shape != (codes.shape[0],):
    raise ValueError(f"chunk has {codes.shape[0]} codes but ids of shape {ids.shape}")
  arrays = {"codes": codes, "ids": ids}
  if embeddings is not None:
    embeddings = np.asarray(embeddings)
    if embeddings.shape[0] != codes.shape[0]:
      raise ValueError(f"chunk has {codes.shape[0]} codes but {embeddings.shape[0]} embeddings")
    arrays["embeddings"] = embeddings
  atomic_savez(path, **arrays)


def chunk_ok(path: str | os.PathLike, rows: int, with_embeddings: bool) -> bool:
  """True when a chunk file exists, loads and holds ``rows`` passages."""
  path = pathlib.Path(path)
  if not path.exists():
    return False
  try:
    with np.load(path, allow_pickle=False) as z:
      ok = z["codes"].shape[0] == rows and z["ids"].shape[0] == rows
      if with_embeddings:
        ok = ok and "embeddings" in z and z["embeddings"].shape[0] == rows
      return bool(ok)
  except Exception:  # pylint: disable=broad-except  # a torn or foreign file: redo it
    return False


def merge_chunks(out_dir: str | os.PathLike, nchunks: int, nrows: int, code_bytes: int,
                 emb_dim: int, with_embeddings: bool) -> dict[str, dict[str, Any]]:
  """Streams chunks 0..nchunks-1 into codes.npy / ids.npy (/ embeddings.npy).

  Each array is written to a temp name, synced, then renamed.  Returns the
  manifest's ``files`` entry: ``{name: {"sha256", "bytes"}}``.
  """
  out_dir = pathlib.Path(out_dir)
  names = [CODES_FILE, IDS_FILE] + ([EMBEDDINGS_FILE] if with_embeddings else [])
  tmps = {n: temp_path(out_dir / n) for n in names}
  try:
    codes = np.lib.format.open_memmap(tmps[CODES_FILE], mode="w+", dtype=np.uint8,
                                      shape=(nrows, code_bytes))
    emb = None
    if with_embeddings:
      emb = np.lib.format.open_memmap(tmps[EMBEDDINGS_FILE], mode="w+", dtype=np.float32,
                                      shape=(nrows, emb_dim))
    id_parts = []
    row = 0
    for i in range(nchunks):
      with np.load(chunk_path(out_dir, i), allow_pickle=False) as z:
        c = z["codes"]
        if row + len(c) > nrows:
          raise ValueError(f"chunks hold more than the expected {nrows} passages")
        codes[row:row + len(c)] = c
        if emb is not None:
          emb[row:row + len(c)] = z["embeddings"]
        id_parts.append(normalize_ids(z["ids"]))
        row += len(c)
    if row != nrows:
      raise ValueError(f"chunks hold {row} passages, expected {nrows}")
    codes.flush()
    del codes
    if emb is not None:
      emb.flush()
      del emb
    with open(tmps[IDS_FILE], "wb") as f:
      np.save(f, concat_ids(id_parts), allow_pickle=False)
    for n in names:
      with open(tmps[n], "rb+") as f:
        os.fsync(f.fileno())
      os.replace(tmps[n], out_dir / n)
  finally:
    for t in tmps.values():
      t.unlink(missing_ok=True)
  return {n: file_record(out_dir / n) for n in names}


def write_manifest(out_dir: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
  """Writes ``manifest.json`` (format set to ``bpr-codes-v1``) last, atomically."""
  full = dict(manifest, format=CODES_FORMAT)
  atomic_write_json(pathlib.Path(out_dir) / MANIFEST, full)
  return full


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
  """The manifest of a finished shard folder, or None when it has none yet."""
  path = pathlib.Path(out_dir) / MANIFEST
  if not path.exists():
    return None
  m = read_json(path)
  if not isinstance(m, dict) or m.get("format") != CODES_FORMAT:
    raise ValueError(f"{path}: not a {CODES_FORMAT} manifest")
  return m


# ---------------------------------------------------------------------------
# Reading (bpr_jax.index).


@dataclasses.dataclass
class CodesDir:
  """Codes, ids and manifests read from an encode output folder."""

  codes: np.ndarray
  ids: np.ndarray
  manifests: list[dict[str, Any]]

  @property
  def code_bits(self) -> int:
    return int(self.codes.shape[1]) * 8


def _shard_dirs(codes_dir: pathlib.Path) -> list[pathlib.Path]:
  if (codes_dir / MANIFEST).exists():
    return [codes_dir]
  shards = sorted(p for p in codes_dir.glob("shard_*") if p.is_dir())
  if not shards:
    raise FileNotFoundError(
        f"{codes_dir}: no manifest.json and no shard_* folders; is it an encode output?")
  return shards


def load_codes_dir(codes_dir: str | os.PathLike, *, verify: bool = True,
                   mmap: bool = False) -> CodesDir:
  """Loads codes and ids from an encode output folder (one or many shards).

  Checks every shard is complete (has a manifest), that shard indexes are
  0..n-1 with no gap, that file sizes and sha256 checksums match the
  manifests (checksums only when ``verify``), and that codes and ids have the
  same length.  Shards are unioned in shard order.
  """
  codes_dir = pathlib.Path(codes_dir)
  if not codes_dir.is_dir():
    raise FileNotFoundError(f"codes folder {codes_dir} does not exist")
  dirs = _shard_dirs(codes_dir)
  codes_parts, id_parts, manifests = [], [], []
  for d in dirs:
    mpath = d / MANIFEST
    if not mpath.exists():
      raise ValueError(f"{d}: shard has no {MANIFEST} (encode did not finish)")
    m = read_json(mpath)
    if m.get("format") != CODES_FORMAT:
      raise ValueError(f"{mpath}: not a {CODES_FORMAT} manifest")
    files = m.get("files", {})
    for name in (CODES_FILE, IDS_FILE):
      check_file(d / name, files.get(name), verify)
    codes = load_npy(d / CODES_FILE, mmap=mmap)
    ids = load_npy(d / IDS_FILE, mmap=False)
    if codes.ndim != 2 or codes.dtype != np.uint8:
      raise ValueError(f"{d}/codes.npy: expected uint8 [N, bytes], got {codes.dtype} {codes.shape}")
    if codes.shape[0] != ids.shape[0]:
      raise ValueError(
          f"{d}: codes has {codes.shape[0]} rows but ids has {ids.shape[0]}")
    if m.get("num_passages", codes.shape[0]) != codes.shape[0]:
      raise ValueError(f"{d}: manifest says {m['num_passages']} passages, codes has {codes.shape[0]}")
    if m.get("code_bits", codes.shape[1] * 8) != codes.shape[1] * 8:
      raise ValueError(f"{d}: manifest code_bits {m['code_bits']} != {codes.shape[1] * 8}")
    codes_parts.append(codes)
    id_parts.append(ids)
    manifests.append(m)
  if len(dirs) > 1 or manifests[0].get("num_shards", 1) > 1:
    num_shards = {m.get("num_shards") for m in manifests}
    if len(num_shards) != 1:
      raise ValueError(f"{codes_dir}: shards disagree on num_shards: {sorted(num_shards)}")
    n = num_shards.pop()
    got = [m.get("shard_index") for m in manifests]
    if got != list(range(n)):
      raise ValueError(f"{codes_dir}: expected shards 0..{n - 1}, found {got}")
  widths = {c.shape[1] for c in codes_parts}
  if len(widths) != 1:
    raise ValueError(f"{codes_dir}: shards have different code widths {sorted(widths)}")
  codes = codes_parts[0] if len(codes_parts) == 1 else np.concatenate(codes_parts)
  return CodesDir(codes=codes, ids=concat_ids(id_parts), manifests=manifests)
