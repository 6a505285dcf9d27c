"""Retrieval systems as `bpr_jax.evaluate` times and scores them.

A `System` is a search function ``(q_emb [B, d], k) -> (scores [B, k], rows [B, k])`` (`SearchFn`)
with its memory figures and the passage id of each row; `bpr_systems` gives BPR's two-stage search
over a binary index (``search.two_stage_search``, what ``Retriever.search`` runs) and its two
ablations. The research baselines (`bpr_jax.baselines`) build `System`s too.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from bpr_jax.index import BinaryIndex
from bpr_jax.search import two_stage_search

# (q_emb [B, d], k) -> (scores [B, k] float32, rows [B, k] int64; -1 where missing)
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class System:
  """One evaluated retrieval system."""

  name: str
  search: SearchFn
  bytes_per_passage: float
  index_bytes: int
  ids: np.ndarray  # row -> passage id of the rows `search` returns


def bpr_systems(index: BinaryIndex, l: int) -> list[System]:
  """The binary index two-stage search and its two ablations."""
  base = f"bpr-{index.kind}"
  bpp = index.bytes_per_passage
  mem = index.memory_bytes()

  def make(rerank: bool, candidates: bool) -> SearchFn:
    return lambda q, k: two_stage_search(q, index, k=k, l=l, rerank=rerank,
                                         candidates=candidates)

  ids = index.ids
  return [
      System(base, make(True, True), bpp, mem, ids),
      System(f"{base}-no-rerank", make(False, True), bpp, mem, ids),
      System(f"{base}-no-candidates", make(True, False), bpp, int(index.codes.nbytes + index.ids.nbytes),
             ids),
  ]
