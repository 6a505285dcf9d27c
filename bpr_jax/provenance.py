"""Provenance: what an artifact was made from, and the one overwrite rule of every command.

Every output a command writes (an export's ``bpr.json``, an encode ``manifest.json``, an index
``meta.json``, an evaluation JSON) records its inputs under ``"inputs"``: a fingerprint of each
input (``fingerprint_file`` for a passage file or a folder's files, ``model_fingerprint`` for an
export's weights and settings) and the settings that change the output.  Two records describe
the same inputs when ``changed(old, new)`` is empty; the fingerprints' paths are informative only
(a copied file or a moved export is the same input).

The overwrite rule (``check_output``), the same for export, encode, index and evaluate:

- no existing output: make it;
- an existing output made from the same inputs: reuse it (or resume it);
- one made from other inputs: refuse in one line naming what changed, unless ``overwrite``.

Pieces that must belong together (a model, an index built from its codes, the passage file those
codes were made from) are checked by ``check_belongs`` in evaluate, serve and ``Retriever``.

Fingerprints: a file up to ``FULL_HASH_BYTES`` is hashed whole (sha256); a larger one by its size,
modification time and the sha256 of ``SAMPLE_BLOCKS`` evenly spaced 1 MiB blocks (cheap on a
13 GB Wikipedia TSV; an edit that keeps size and mtime and misses every sampled block is not seen).
Hashes are cached per process by (path, size, mtime).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Iterable, Mapping

PathLike = str | os.PathLike

FULL_HASH_BYTES = 256 << 20
SAMPLE_BLOCKS = 64
BLOCK = 1 << 20
INPUTS = "inputs"

_cache: dict[tuple[str, int, int], dict[str, Any]] = {}


class ProvenanceError(ValueError):
  """An output made from other inputs, or pieces that do not belong together (one line)."""


def _hash_whole(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while True:
      buf = f.read(1 << 22)
      if not buf:
        break
      h.update(buf)
  return h.hexdigest()


def _hash_sampled(path: pathlib.Path, size: int) -> str:
  h = hashlib.sha256(str(size).encode())
  step = max(size // SAMPLE_BLOCKS, BLOCK)
  with open(path, "rb") as f:
    for offset in range(0, size, step):
      f.seek(offset)
      h.update(f.read(BLOCK))
    f.seek(max(size - BLOCK, 0))
    h.update(f.read(BLOCK))
  return h.hexdigest()


def fingerprint_file(path: PathLike) -> dict[str, Any]:
  """``{"path", "bytes", "sha256"}`` of a file (``"sampled": true`` and ``"mtime_ns"`` when large).

  Raises FileNotFoundError when ``path`` is not a file.
  """
  path = pathlib.Path(path).resolve()
  if not path.is_file():
    raise FileNotFoundError(f"not a file: {path}")
  st = path.stat()
  key = (str(path), st.st_size, st.st_mtime_ns)
  if key not in _cache:
    if st.st_size <= FULL_HASH_BYTES:
      _cache[key] = {"bytes": st.st_size, "sha256": _hash_whole(path)}
    else:
      _cache[key] = {"bytes": st.st_size, "sha256": _hash_sampled(path, st.st_size),
                     "sampled": True, "mtime_ns": st.st_mtime_ns}
  return dict(_cache[key], path=str(path))


def fingerprint_files(paths: Iterable[PathLike], root: PathLike) -> dict[str, Any]:
  """One fingerprint of several files: ``{"path": root, "sha256": ..., "files": n}``.

  The hash covers each file's path relative to ``root`` and its own fingerprint, in sorted order.
  """
  root = pathlib.Path(os.path.abspath(root))
  h = hashlib.sha256()
  paths = sorted(pathlib.Path(os.path.abspath(p)) for p in paths)  # symlinks kept: names as given
  for p in paths:
    fp = fingerprint_file(p)
    h.update(json.dumps([os.path.relpath(p, root), fp["bytes"], fp["sha256"]]).encode())
  return {"path": str(root), "sha256": h.hexdigest(), "files": len(paths)}


def fingerprint_passages(spec: PathLike) -> dict[str, Any]:
  """Fingerprint of a passage source: a file (TSV, corpus.jsonl), or a ``tfds:`` name as given."""
  spec = str(spec)
  if spec.startswith("tfds:"):
    return {"path": spec, "sha256": hashlib.sha256(spec.encode()).hexdigest()}
  return fingerprint_file(spec)


def _settings_for_identity(settings: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in settings.items() if k not in (INPUTS, "format_version")}


def model_fingerprint(export_dir: PathLike) -> dict[str, Any]:
  """Fingerprint of an exported model: its weights, configs, tokenizer files and ``bpr.json``
  settings (without the settings' own ``inputs`` record).  ``{"path", "sha256"}``."""
  root = pathlib.Path(export_dir).resolve()
  settings_file = root / "bpr.json"
  if not settings_file.is_file():
    raise FileNotFoundError(f"no bpr.json in {root} (not an exported model dir)")
  files = [p for p in root.rglob("*") if p.is_file() and p.name != "bpr.json"
           and not p.name.startswith(".")]
  inner = fingerprint_files(files, root)
  try:
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{settings_file}: not valid JSON ({e})") from None
  h = hashlib.sha256(inner["sha256"].encode())
  h.update(json.dumps(_settings_for_identity(settings), sort_keys=True).encode())
  return {"path": str(root), "sha256": h.hexdigest()}


def _identity(value: Any) -> Any:
  """A record without the informative fields (paths, mtimes), for comparison."""
  if isinstance(value, Mapping):
    if "sha256" in value:  # a fingerprint: content only
      return {"sha256": value["sha256"], "bytes": value.get("bytes")}
    return {k: _identity(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_identity(v) for v in value]
  return value


def changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
  """Names of the fields whose inputs differ between two ``inputs`` records (sorted).

  A field missing on one side counts as changed; ``old=None`` (no record) changes everything.
  """
  if old is None:
    return sorted(new) or ["(no record)"]
  keys = sorted(set(old) | set(new))
  return [k for k in keys if _identity(old.get(k)) != _identity(new.get(k))]


def _short(value: Any) -> str:
  if isinstance(value, Mapping) and "sha256" in value:
    return f"{value.get('path', '?')} ({str(value['sha256'])[:12]})"
  text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
  return text if len(text) <= 60 else text[:57] + "..."


def describe(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
  """``'field: old -> new; ...'`` for the changed fields (one line)."""
  if old is None:
    return "it has no provenance record"
  parts = []
  for k in changed(old, new):
    a, b = old.get(k), new.get(k)
    if isinstance(a, Mapping) and isinstance(b, Mapping) and "sha256" not in a and "sha256" not in b:
      parts.append(describe({f"{k}.{i}": v for i, v in a.items()}, {f"{k}.{i}": v for i, v in b.items()}))
    else:  # a fingerprint or a value: old -> new
      parts.append(f"{k}: {_short(a)} -> {_short(b)}")
  return "; ".join(parts)


def check_output(path: PathLike, recorded: Mapping[str, Any] | None, current: Mapping[str, Any], *,
                 what: str, overwrite: bool = False) -> str:
  """The overwrite rule: ``"reuse"`` (same inputs), ``"overwrite"`` (other inputs and ``overwrite``)
  or ``"create"`` (``recorded is None and not exists``).

  ``recorded`` is the existing output's ``inputs`` record (None when the output does not exist or
  has none).  Raises ProvenanceError (one line naming what changed) when the output exists, was
  made from other inputs and ``overwrite`` is False.
  """
  path = pathlib.Path(path)
  if not path.exists() or (path.is_dir() and not any(path.iterdir())):
    return "create"
  if recorded is not None and not changed(recorded, current):
    return "reuse"
  if overwrite:
    return "overwrite"
  raise ProvenanceError(
      f"{path} already holds {what} made from other inputs ({describe(recorded, current)}); "
      "pass --overwrite to replace it, or choose another output")


def check_belongs(pieces: str, recorded: Mapping[str, Any] | None, current: Mapping[str, Any], *,
                  allow: bool = False, flag: str = "--allow_mismatch") -> list[str]:
  """Checks that pieces belong together: each field of ``current`` equals ``recorded``'s.

  ``pieces`` names what is checked (``"index I and model M"``).  Only fields present in both are
  compared (an old artifact without a record is not refused).  Returns the changed fields; raises
  ProvenanceError naming them unless ``allow``.
  """
  if recorded is None:
    return []
  common = {k: current[k] for k in current if k in recorded}
  diff = changed({k: recorded[k] for k in common}, common)
  if diff and not allow:
    raise ProvenanceError(
        f"{pieces} do not belong together ({describe({k: recorded[k] for k in diff}, {k: common[k] for k in diff})}); "
        f"pass {flag} to use them anyway")
  return diff


def check_output_folder(out_dir: PathLike, record_file: str, current: Mapping[str, Any], *,
                        what: str, overwrite: bool = False) -> str:
  """``check_output`` for an output folder whose ``record_file`` (JSON) holds its ``inputs``.

  Raises FileExistsError when ``out_dir`` exists and is not a folder; an unreadable record counts
  as no record.
  """
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"--output {out} exists and is not a folder")
  recorded = None
  if (out / record_file).is_file():
    try:
      recorded = json.loads((out / record_file).read_text(encoding="utf-8")).get(INPUTS)
    except (ValueError, AttributeError):
      recorded = None
  return check_output(out, recorded, current, what=what, overwrite=overwrite)
