"""bpr_jax: Binary Passage Retriever (BPR) in JAX/Flax.

The Python API is ``Retriever`` (``bpr_jax.search.Retriever``)::

  from bpr_jax import Retriever
  r = Retriever.load(model=EXPORT, index=INDEX, passages=PASSAGES)
  hits = r.search(["who wrote hamlet?"], k=10)
  # hits[0]: [{"id", "title", "text", "score", "row"}, ...], best first

``import bpr_jax`` is cheap: ``Retriever`` (and with it JAX) is imported on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Retriever"]

_LAZY = {"Retriever": "bpr_jax.search"}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    import importlib  # pylint: disable=import-outside-toplevel
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'bpr_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
