"""HTTP search service for a trained BPR model and binary passage index.

Size (~540 lines, over the house's ~400): the whole request path (parsing, micro-batching,
the app, warm-up of every shape, the command) reads in one place; the fake backend for load
tests lives in benchmarks/fake_serve.py.

Run:
  python -m bpr_jax.serve --model=EXPORTED_MODEL_DIR --index=INDEX_DIR \
      --passages=psgs_w100.tsv --host=127.0.0.1 --port=8000

API:
  POST /search  {"questions": ["..."], "k": 20}
                -> {"results": [[{"id", "title", "text", "score"}, ...], ...]}
  GET  /health  -> {"status": "ok", "passages": N, ...}
  GET  /        a small search page (bpr_jax/static/index.html); `/?q=...`
                runs that query on load.

Concurrent requests are merged by an asyncio micro-batcher: requests queue up,
a single worker takes up to `max_batch` questions (or what arrived within
`max_wait_ms` of the first), runs one `retriever.search` call plus the passage
lookups in a worker thread, and resolves each request's future with its slice.

`create_app` accepts any retriever object with
`search(questions: list[str], k: int) -> list[list[{"id", "score", "row"?}]]`
and any passage store with `get(ids, rows=..., default=...)` and `len()`, so
tests inject fakes (benchmarks/fake_serve.py) and production injects
`bpr_jax.search.Retriever` and `bpr_jax.passage_store.PassageStore`.

Start-up compiles every shape a request can meet (`warmup`: the question
encoder, and the search for each batch-size and k bucket), so the first
requests are as fast as later ones.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Protocol, Sequence

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

logger = logging.getLogger(__name__)

STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"

Hit = dict[str, Any]


class SearchBackend(Protocol):
  """What the service needs from a retriever."""

  def search(self, questions: list[str], k: int) -> list[list[Hit]]:
    ...


class PassageLookup(Protocol):
  """What the service needs from a passage store."""

  def get(self, ids: Sequence[str], *, rows: Sequence[int] | None = None,
          default: tuple[str, str] | None = None) -> list[tuple[str, str]]:
    ...

  def __len__(self) -> int:
    ...


@dataclasses.dataclass(frozen=True)
class Limits:
  """Request limits; requests beyond them get a 4xx answer with a message."""

  max_questions: int = 1024
  max_k: int = 1000
  default_k: int = 20
  max_body_bytes: int = 1_000_000
  max_question_chars: int = 4096


class Overloaded(RuntimeError):
  """Too many questions are already waiting."""


@dataclasses.dataclass
class _Pending:
  questions: list[str]
  k: int
  future: asyncio.Future[list[list[Hit]]]


class MicroBatcher:
  """Merges concurrent calls into batched calls of `fn` run in one worker thread.

  Args:
    fn: `fn(questions, k) -> per-question result lists` (blocking; runs in a
      thread). Each request gets its own slice, cut to its own k.
    max_batch: most questions per call (a larger request runs alone, in chunks).
    max_wait_ms: how long the first request of a batch waits for company.
    max_pending: most questions queued or running; beyond it `submit` raises
      `Overloaded`.
  """

  def __init__(self, fn: Callable[[list[str], int], list[list[Hit]]], *, max_batch: int = 64,
               max_wait_ms: float = 5.0, max_pending: int = 16384):
    if max_batch < 1:
      raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_wait_ms < 0:
      raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
    self._fn = fn
    self.max_batch = max_batch
    self.max_wait_s = max_wait_ms / 1000.0
    self.max_pending = max_pending
    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpr-search")
    self._loop: asyncio.AbstractEventLoop | None = None
    self._queue: asyncio.Queue[_Pending] | None = None
    self._task: asyncio.Task[None] | None = None
    self._carry: _Pending | None = None
    self.pending_questions = 0
    self.calls = 0
    self.questions_done = 0
    self.recent_batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)

  def _ensure_worker(self) -> asyncio.Queue[_Pending]:
    loop = asyncio.get_running_loop()
    if self._loop is not loop:  # First use, or a new event loop (e.g. a new test client).
      if self._task is not None and not self._task.done():
        try:
          self._task.cancel()
        except RuntimeError:  # Its loop is already closed.
          pass
      self._loop, self._queue, self._carry, self._task = loop, asyncio.Queue(), None, None
    if self._task is None or self._task.done():
      self._task = loop.create_task(self._worker(), name="bpr-micro-batcher")
    assert self._queue is not None
    return self._queue

  async def submit(self, questions: list[str], k: int) -> list[list[Hit]]:
    """Queues one request and waits for its results."""
    if self.pending_questions + len(questions) > self.max_pending:
      raise Overloaded(f"{self.pending_questions} questions are already waiting; try again later")
    queue = self._ensure_worker()
    fut: asyncio.Future[list[list[Hit]]] = asyncio.get_running_loop().create_future()
    self.pending_questions += len(questions)
    try:
      queue.put_nowait(_Pending(questions, k, fut))
      return await fut
    finally:
      self.pending_questions -= len(questions)

  async def _next_batch(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
    first = self._carry if self._carry is not None else await queue.get()
    self._carry = None
    batch, size = [first], len(first.questions)
    deadline = time.monotonic() + self.max_wait_s
    while size < self.max_batch:
      try:
        item = queue.get_nowait()
      except asyncio.QueueEmpty:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          break
        try:
          item = await asyncio.wait_for(queue.get(), remaining)
        except TimeoutError:
          break
      if size + len(item.questions) > self.max_batch:
        self._carry = item
        break
      batch.append(item)
      size += len(item.questions)
    return [p for p in batch if not p.future.done()]  # Drop requests whose client left.

  async def _worker(self) -> None:
    queue = self._queue
    assert queue is not None
    loop = asyncio.get_running_loop()
    while True:
      batch = await self._next_batch(queue)
      if not batch:
        continue
      questions = [q for p in batch for q in p.questions]
      k = max(p.k for p in batch)
      try:
        results: list[list[Hit]] = []
        for i in range(0, len(questions), self.max_batch):  # A big request runs in chunks.
          chunk = questions[i:i + self.max_batch]
          part = await loop.run_in_executor(self._executor, self._fn, chunk, k)
          if len(part) != len(chunk):
            raise RuntimeError(f"search returned {len(part)} result lists for {len(chunk)} questions")
          results.extend(part)
          self.calls += 1
          self.recent_batch_sizes.append(len(chunk))
        if len(results) != len(questions):
          raise RuntimeError(f"search returned {len(results)} result lists for {len(questions)} questions")
      except asyncio.CancelledError:
        for p in batch:
          if not p.future.done():
            p.future.set_exception(RuntimeError("the server is shutting down"))
        raise
      except Exception as e:  # Fail this batch, keep serving.
        logger.exception("search failed for a batch of %d questions", len(questions))
        for p in batch:
          if not p.future.done():
            p.future.set_exception(e)
        continue
      self.questions_done += len(questions)
      start = 0
      for p in batch:
        part = results[start:start + len(p.questions)]
        start += len(p.questions)
        if not p.future.done():
          p.future.set_result([hits[:p.k] for hits in part])

  async def aclose(self) -> None:
    """Stops the worker and fails whatever is still queued."""
    task, self._task = self._task, None
    if task is not None and not task.done():
      task.cancel()
      try:
        await task
      except (asyncio.CancelledError, Exception):
        pass
    pending = [self._carry] if self._carry is not None else []
    self._carry = None
    while self._queue is not None and not self._queue.empty():
      pending.append(self._queue.get_nowait())
    for p in pending:
      if not p.future.done():
        p.future.set_exception(RuntimeError("the server is shutting down"))
    self._executor.shutdown(wait=False, cancel_futures=True)


def _bad(status: int, message: str) -> HTTPException:
  return HTTPException(status_code=status, detail=message)


async def _read_body(request: Request, limit: int) -> bytes:
  """Reads the body, refusing more than `limit` bytes (declared or streamed)."""
  declared = request.headers.get("content-length")
  if declared is not None:
    try:
      size = int(declared)
    except ValueError:
      raise _bad(400, f"invalid Content-Length header {declared!r}") from None
    if size > limit:
      raise _bad(413, f"request body is {size} bytes; the limit is {limit} bytes")
  chunks, total = [], 0
  async for chunk in request.stream():
    total += len(chunk)
    if total > limit:
      raise _bad(413, f"request body is over the limit of {limit} bytes")
    chunks.append(chunk)
  return b"".join(chunks)


def parse_search_request(body: bytes, limits: Limits) -> tuple[list[str], int]:
  """Validates a /search body; raises HTTPException with a clear message."""
  if not body.strip():
    raise _bad(400, 'request body is empty; expected JSON like {"questions": ["..."], "k": 20}')
  try:
    payload = json.loads(body)
  except ValueError as e:
    raise _bad(400, f"request body is not valid JSON: {e}") from None
  if not isinstance(payload, dict):
    raise _bad(422, 'body must be a JSON object like {"questions": ["..."], "k": 20}, '
               f"got {type(payload).__name__}")
  unknown = sorted(set(payload) - {"questions", "k"})
  if unknown:
    raise _bad(422, f"unknown field(s) {unknown}; expected 'questions' and optional 'k'")
  if "questions" not in payload:
    raise _bad(422, "missing field 'questions' (a list of strings)")
  questions = payload["questions"]
  if isinstance(questions, str):
    raise _bad(422, "'questions' must be a list of strings; wrap a single question in a list")
  if not isinstance(questions, list):
    raise _bad(422, f"'questions' must be a list of strings, got {type(questions).__name__}")
  if not questions:
    raise _bad(422, "'questions' is empty; send at least one question")
  if len(questions) > limits.max_questions:
    raise _bad(413, f"too many questions: {len(questions)}; the limit is {limits.max_questions} "
               "per request")
  for i, q in enumerate(questions):
    if not isinstance(q, str):
      raise _bad(422, f"questions[{i}] must be a string, got {type(q).__name__}")
    if not q.strip():
      raise _bad(422, f"questions[{i}] is empty")
    if len(q) > limits.max_question_chars:
      raise _bad(422, f"questions[{i}] has {len(q)} characters; the limit is "
                 f"{limits.max_question_chars}")
  k = payload.get("k", limits.default_k)
  if isinstance(k, bool) or not isinstance(k, int):
    raise _bad(422, f"'k' must be an integer, got {type(k).__name__}")
  if not 1 <= k <= limits.max_k:
    raise _bad(422, f"'k' must be between 1 and {limits.max_k}, got {k}")
  return list(questions), k


def _rss_bytes() -> int | None:
  """Current resident set size of this process (Linux), else None."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return None


# A batch searches with its k rounded up to one of a few buckets (16, 32, ..., and max_k) and
# cuts each request's results back to its own k: the rerank is compiled per k, so this keeps
# the shapes few enough for `warmup` to compile them all at start-up.
MIN_K_BUCKET = 16


def k_bucket(k: int, max_k: int) -> int:
  """The k a batch asking for `k` searches with (>= k, a power of two >= 16, at most max_k)."""
  b = MIN_K_BUCKET
  while b < k:
    b *= 2
  return max(k, min(b, max_k))


def k_buckets(max_k: int) -> list[int]:
  """Every value `k_bucket` returns for k in 1..max_k."""
  out, b = set(), MIN_K_BUCKET
  while b < max_k:
    out.add(b)
    b *= 2
  out.add(max_k)
  return sorted(out)


def batch_sizes(max_batch: int) -> list[int]:
  """Batch sizes whose shapes cover every batch of 1..max_batch questions (powers of two, max_batch)."""
  out, b = {max_batch}, 1
  while b < max_batch:
    out.add(b)
    b *= 2
  return sorted(out)


def warmup(retriever: Any, max_batch: int, max_k: int) -> int:
  """Compiles, before serving, every shape a request can meet: the question encoder
  (`warmup_questions`) and the two-stage search for each batch-size and k bucket, so the
  first requests are as fast as later ones. Returns the number of search shapes run."""
  start = time.perf_counter()
  model = getattr(retriever, "model", None)
  if hasattr(model, "warmup_questions"):
    shapes = model.warmup_questions(max_batch)
    logger.info("Compiled the question encoder for %d shapes in %.1f s", shapes, time.perf_counter() - start)
  index = getattr(retriever, "index", None)
  if index is None or not hasattr(index, "code_bits"):
    return 0
  import numpy as np  # pylint: disable=import-outside-toplevel

  from bpr_jax.search import two_stage_search  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  rng = np.random.default_rng(0)
  n = 0
  for b in batch_sizes(max_batch):
    q = rng.standard_normal((b, index.code_bits)).astype(np.float32)
    for k in k_buckets(max_k):
      two_stage_search(q, index, k=k, l=getattr(retriever, "l", 1000),
                       rerank=getattr(retriever, "rerank", True),
                       candidates=getattr(retriever, "candidates", True))
      n += 1
  logger.info("Compiled the search for %d (batch, k) shapes in %.1f s", n, time.perf_counter() - t0)
  return n


def make_search_fn(retriever: SearchBackend, passage_store: PassageLookup,
                   max_k: int | None = None) -> Callable[[list[str], int], list[list[Hit]]]:
  """The blocking function the batcher runs: search, then fetch passage text (by id, the row
  only a hint). With `max_k`, the search runs with `k_bucket(k, max_k)` and is cut to k."""
  warned = threading.Event()

  def run(questions: list[str], k: int) -> list[list[Hit]]:
    kk = k if max_k is None else k_bucket(k, max_k)
    raw = [hits[:k] for hits in retriever.search(questions, kk)]
    flat = [h for hits in raw for h in hits]
    ids = [str(h["id"]) for h in flat]
    rows = [int(h["row"]) if h.get("row") is not None else -1 for h in flat]
    texts = passage_store.get(ids, rows=rows, default=("", ""))
    missing = [i for i, (title, text) in zip(ids, texts) if not title and not text]
    if missing and not warned.is_set():
      warned.set()
      logger.warning("passage text not found for id(s) %s (further misses are not logged)",
                     missing[:5])
    out: list[list[Hit]] = []
    it = iter(zip(flat, texts))
    for hits in raw:
      cur = []
      for _ in hits:
        h, (title, text) = next(it)
        cur.append({"id": str(h["id"]), "title": title, "text": text, "score": float(h["score"])})
      out.append(cur)
    return out

  return run


def create_app(retriever: SearchBackend, passage_store: PassageLookup, *, max_batch: int = 64,
               max_wait_ms: float = 5.0, max_pending: int = 16384, limits: Limits | None = None,
               static_dir: str | os.PathLike[str] | None = None) -> FastAPI:
  """Builds the FastAPI app around a retriever and a passage store."""
  limits = limits or Limits()
  index_html = pathlib.Path(static_dir or STATIC_DIR) / "index.html"
  if not index_html.is_file():
    raise FileNotFoundError(f"search page not found: {index_html}")
  page = index_html.read_text(encoding="utf-8")
  batcher = MicroBatcher(make_search_fn(retriever, passage_store, limits.max_k), max_batch=max_batch,
                         max_wait_ms=max_wait_ms, max_pending=max_pending)
  started = time.time()

  @contextlib.asynccontextmanager
  async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    await batcher.aclose()

  app = FastAPI(title="BPR search", version="1", lifespan=lifespan)
  app.state.batcher = batcher
  app.state.limits = limits

  @app.get("/", response_class=HTMLResponse)
  async def index() -> HTMLResponse:
    return HTMLResponse(page)

  @app.get("/health")
  async def health() -> JSONResponse:
    sizes = list(batcher.recent_batch_sizes)
    return JSONResponse({
        "status": "ok",
        "passages": len(passage_store),
        "pending_questions": batcher.pending_questions,
        "search_calls": batcher.calls,
        "questions_served": batcher.questions_done,
        "mean_recent_batch": (sum(sizes) / len(sizes)) if sizes else 0.0,
        "max_batch": batcher.max_batch,
        "uptime_s": round(time.time() - started, 3),
        "rss_bytes": _rss_bytes(),
        "limits": dataclasses.asdict(limits),
    })

  @app.post("/search")
  async def search(request: Request) -> JSONResponse:
    body = await _read_body(request, limits.max_body_bytes)
    questions, k = parse_search_request(body, limits)
    try:
      results = await batcher.submit(questions, k)
    except Overloaded as e:
      raise _bad(503, str(e)) from None
    except Exception as e:  # The batch failed; this request answers 500, the server goes on.
      raise _bad(500, f"search failed: {type(e).__name__}: {e}") from None
    return JSONResponse({"results": results})

  return app


def _load_retriever(model: str, index: str, l: int | None) -> SearchBackend:
  """The real retriever; passage text is looked up by the service, not by it."""
  from bpr_jax.search import Retriever  # Imported here: pulls in JAX.

  kwargs = {} if l is None else {"l": l}
  return Retriever.from_paths(model, index, **kwargs)


def _check_sizes(retriever: Any, store: Any) -> None:
  """Fails early when the index and the passage file are not the same corpus."""
  index = getattr(retriever, "index", None)
  ntotal = getattr(index, "ntotal", None)
  if ntotal is not None and int(ntotal) != len(store):
    raise ValueError(f"the passage file has {len(store)} passages but the index has {ntotal}; "
                     "serve the passage file the index was built from")


def main(argv: Sequence[str]) -> None:
  del argv
  import uvicorn
  from absl import flags

  from bpr_jax.passage_store import PassageStore

  f = flags.FLAGS
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  if not f.passages:
    raise app_usage_error("--passages is required (DPR TSV or BEIR corpus.jsonl)")
  if not f.model or not f.index:
    raise app_usage_error("--model and --index are required")
  cache_dir = f.passage_cache_dir or (f.index if f.index and os.path.isdir(f.index)
                                      and os.access(f.index, os.W_OK) else None)
  store = PassageStore(f.passages, cache_dir=cache_dir)
  logger.info("Passage store: %d passages (offset index in %s)", len(store), store.index_dir)
  retriever = _load_retriever(f.model, f.index, f.l)
  _check_sizes(retriever, store)
  if f.warmup:
    warmup(retriever, f.max_batch, f.max_k)
  limits = Limits(max_questions=f.max_questions, max_k=f.max_k, max_body_bytes=f.max_body_bytes)
  app = create_app(retriever, store, max_batch=f.max_batch, max_wait_ms=f.max_wait_ms,
                   max_pending=f.max_pending, limits=limits)
  logger.info("Serving on http://%s:%d/", f.host, f.port)
  uvicorn.run(app, host=f.host, port=f.port, log_level=f.log_level, access_log=f.access_log)


def app_usage_error(message: str) -> Exception:
  from absl import app as absl_app

  return absl_app.UsageError(message)


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_string("model", None, "Exported question-encoder folder (bpr_jax.export).")
  flags.DEFINE_string("index", None, "Binary passage index folder.")
  flags.DEFINE_string("passages", None, "Passage file: DPR TSV (id, text, title) or BEIR corpus.jsonl.")
  flags.DEFINE_string("passage_cache_dir", None,
                      "Where to keep the passage offset index; default: the index folder if "
                      "writable, else beside the passage file, else ~/.cache/bpr_jax.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
  flags.DEFINE_integer("port", 8000, "Port to listen on.")
  flags.DEFINE_integer("max_batch", 64, "Most questions per encoder call.")
  flags.DEFINE_boolean("warmup", True, "Compile the question encoder and the rerank for every shape a "
                       "request can meet, at start-up.")
  flags.DEFINE_float("max_wait_ms", 5.0, "How long a batch waits for more requests.")
  flags.DEFINE_integer("max_pending", 16384, "Most queued questions before answering 503.")
  flags.DEFINE_integer("max_questions", 1024, "Most questions per request.")
  flags.DEFINE_integer("max_k", 1000, "Largest k a request may ask for.")
  flags.DEFINE_integer("max_body_bytes", 1_000_000, "Largest request body.")
  flags.DEFINE_integer("l", None, "Candidates re-ranked per question (Retriever l); default: its own.")
  flags.DEFINE_string("log_level", "info", "uvicorn log level.")
  flags.DEFINE_bool("access_log", False, "Log every request.")


if __name__ == "__main__":
  from absl import app as _absl_app

  _define_flags()
  _absl_app.run(main)
