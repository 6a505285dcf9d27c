"""A deterministic stand-in retriever for the search service, and a server around it.

Test and load-test scaffolding (no model, no index), kept out of the bpr_jax package:
tests/test_serve*.py use it, and benchmarks/serve_load.py --fake starts it (from the repository root).

  python -m tests.fake_serve --passages=P [--port=8000 --delay_ms=2 --per_question_ms=0.05]

serves `bpr_jax.serve.create_app(FakeRetriever, PassageStore)` with uvicorn.
"""
from __future__ import annotations

import argparse
import logging
import threading
import time
import zlib
from typing import Any, Sequence

Hit = dict[str, Any]


class FakeRetriever:
  """A deterministic stand-in retriever for tests and load tests (no model).

  Question q gets the k passages at rows crc32(q) % n, +1, ... with scores
  100, 99, ... (independent of k). Batch sizes of all calls are recorded in
  `calls`.
  """

  def __init__(self, ids: Sequence[str], *, delay_ms: float = 0.0, per_question_ms: float = 0.0):
    if not ids:
      raise ValueError("FakeRetriever needs at least one passage id")
    self.ids = list(ids)
    self.delay_s = delay_ms / 1000.0
    self.per_question_s = per_question_ms / 1000.0
    self.calls: list[int] = []
    self._lock = threading.Lock()

  @classmethod
  def from_store(cls, store: Any, **kwargs: Any) -> "FakeRetriever":
    return cls([store.id_at(r) for r in range(len(store))], **kwargs)

  def search(self, questions: list[str], k: int) -> list[list[Hit]]:
    with self._lock:
      self.calls.append(len(questions))
    if self.delay_s or self.per_question_s:
      time.sleep(self.delay_s + self.per_question_s * len(questions))
    n = len(self.ids)
    out = []
    for q in questions:
      base = zlib.crc32(q.encode("utf-8")) % n
      rows = [(base + j) % n for j in range(min(k, n))]
      out.append([{"id": self.ids[r], "score": 100.0 - j, "row": r} for j, r in enumerate(rows)])
    return out


def main(argv: Sequence[str] | None = None) -> None:
  import uvicorn

  from bpr_jax.passage_store import PassageStore
  from bpr_jax.serve import Limits, create_app

  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--passages", required=True, help="Passage file (DPR TSV or BEIR corpus.jsonl).")
  p.add_argument("--passage_cache_dir", default=None)
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--max_batch", type=int, default=64)
  p.add_argument("--max_wait_ms", type=float, default=5.0)
  p.add_argument("--max_pending", type=int, default=16384)
  p.add_argument("--delay_ms", type=float, default=0.0, help="Time per search call.")
  p.add_argument("--per_question_ms", type=float, default=0.0, help="Extra time per question.")
  p.add_argument("--log_level", default="info")
  args = p.parse_args(argv)
  if args.host not in ("127.0.0.1", "localhost", "::1"):
    p.error("the fake server listens on loopback only")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  store = PassageStore(args.passages, cache_dir=args.passage_cache_dir)
  retriever = FakeRetriever.from_store(store, delay_ms=args.delay_ms, per_question_ms=args.per_question_ms)
  logging.warning("Serving with the FAKE retriever (no model): results are not meaningful")
  app = create_app(retriever, store, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                   max_pending=args.max_pending, limits=Limits())
  uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
  main()
