"""Passage ids: one array type for every index and encode output.

Ids are stored as int64 when every id is a canonical integer (``"17"``, not
``"017"`` or ``"+17"``), else as a fixed-width unicode array; both load
without pickle.  Row i of codes, index and ids always describe one passage.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def normalize_ids(ids: Sequence[Any] | np.ndarray) -> np.ndarray:
  """Passage ids as int64 when all are canonical integers, else unicode."""
  arr = np.asarray(ids)
  if arr.ndim != 1:
    raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
  if arr.dtype.kind in "iu":
    return arr.astype(np.int64)
  strs = [str(x) for x in arr.tolist()]
  try:
    ints = [int(s) for s in strs]
  except ValueError:
    ints = None
  if ints is not None and all(str(i) == s for i, s in zip(ints, strs)) and (
      not ints or (min(ints) >= -(2**63) and max(ints) < 2**63)):
    return np.asarray(ints, dtype=np.int64)
  if not strs:
    return np.zeros((0,), dtype=np.int64)
  return np.asarray(strs, dtype=str)


def concat_ids(parts: Sequence[np.ndarray]) -> np.ndarray:
  """Concatenates id arrays; mixes of int and str ids become str."""
  if not parts:
    return np.zeros((0,), dtype=np.int64)
  if all(p.dtype.kind in "iu" for p in parts):
    return np.concatenate([p.astype(np.int64) for p in parts])
  return np.concatenate([p.astype(str) for p in parts])
