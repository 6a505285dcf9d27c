"""HTTP search service for an exported BPR model, its binary passage index and passage file.

Usage:
  python -m bpr_jax.serve --model=EXPORT_DIR --index=INDEX_DIR --passages=PASSAGES \\
      [--host=127.0.0.1 --port=8000] [--compilation_cache_dir=DIR] [--allow_mismatch]

PASSAGES is the DPR TSV or BEIR corpus.jsonl the index was encoded from.

Start-up, in this order, so that a mistake is one line (`error: ...`, exit 2) within seconds:
  1. the port is bound (`error: port 8000 on 127.0.0.1 is in use`);
  2. the model, index and passage file must exist and belong together (the index's meta.json
     records the model and passages its codes were made from; `--allow_mismatch` serves
     them anyway);
  3. the passage file's offset index is read or built (`bpr_jax.passage_store`, kept under
     `--passage_cache_dir`, default `$BPR_CACHE_DIR/passages` or `~/.cache/bpr_jax/passages`;
     duplicate ids are refused) and its passage count must equal the index's;
  4. the model and index load and the service answers at once, while a background thread
     compiles every shape a request can meet (the warm-up).

During the warm-up GET /health answers 503 with Retry-After and
`{"status": "warming_up", "compiled": i, "shapes": n, ...}` (a readiness probe waits), then
200 `{"status": "ok", ...}`.  A POST /search sent during the warm-up waits for it to end (at
most `--warmup_wait_s`, then 503 with Retry-After), so every answer is as fast as later ones.

Compiled shapes go to JAX's persistent compilation cache (`--compilation_cache_dir`, default
`$BPR_CACHE_DIR/jax` or `~/.cache/bpr_jax/jax`; empty turns it off), so a restart loads them
instead of compiling.  The shapes are few: the question encoder sees batches of 1, 4, 16 or 64
rows (a batch is padded by repeating its last question; `question_batch_sizes`) times its
length buckets, and the search's batch sizes times k buckets 32, 256 and `--max_k`
(`k_buckets`; results are cut back to each request's k).

API:
  POST /search  {"questions": ["..."], "k": 20}
                -> {"results": [[{"id", "title", "text", "score"}, ...], ...]}
  GET  /health  -> {"status": "ok" | "warming_up" | "warmup_failed", "passages": N, ...}
  GET  /        a small search page (bpr_jax/static/index.html); `/?q=...` runs that query.

Library use: `create_app(retriever, passage_store, warmup=...)` serves any retriever with
`search(questions, k) -> [[{"id", "score", "row"?}, ...], ...]` and any passage store with
`get(ids, rows=..., default=...)` and `len()` (tests/fake_serve.py has fakes).  Concurrent
requests are merged by `MicroBatcher`: up to `max_batch` questions (or what arrived within
`max_wait_ms` of the first) go to one `search` call in a worker thread.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import pathlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Protocol, Sequence

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

logger = logging.getLogger("bpr_jax.serve")  # also when run as __main__

STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"

Hit = dict[str, Any]
Progress = Callable[[int, int], None]


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


# ----------------------------------------------------------------------------- shapes
# Every jitted shape is compiled once (at warm-up, or loaded from the persistent cache), so a
# request's sizes are rounded up to a few buckets:
#   * k: 32, 256, ..., max_k (x8 steps); a batch searches with its k bucket and each request's
#     results are cut back to its own k (the first k of a top-k' list are the top k);
#   * question-encoder rows: 1, 4, 16, 64 (x4 steps, at most ENCODER_BATCH); a batch is padded
#     by repeating its last question, whose result is dropped (rows are encoded independently);
#   * search batch sizes: the powers of two of `bpr_jax.search.rerank_candidates`' blocks.
MIN_K_BUCKET = 32
K_BUCKET_STEP = 8
ENCODER_BATCH = 64  # `ExportedModel.encode_questions`' default chunk of rows
ROW_BUCKET_STEP = 4


def k_bucket(k: int, max_k: int) -> int:
  """The k a batch asking for `k` searches with (>= k; 32, 256, ... at most max_k)."""
  b = MIN_K_BUCKET
  while b < k:
    b *= K_BUCKET_STEP
  return max(k, min(b, max_k))


def k_buckets(max_k: int) -> list[int]:
  """Every value `k_bucket` returns for k in 1..max_k."""
  out, b = set(), MIN_K_BUCKET
  while b < max_k:
    out.add(b)
    b *= K_BUCKET_STEP
  out.add(max_k)
  return sorted(out)


def batch_sizes(max_batch: int) -> list[int]:
  """Batch sizes whose search shapes cover every batch of 1..max_batch questions (powers of
  two, and max_batch)."""
  out, b = {max_batch}, 1
  while b < max_batch:
    out.add(b)
    b *= 2
  return sorted(out)


def question_batch_sizes(max_batch: int) -> list[int]:
  """The row counts the question encoder is called with for batches of 1..max_batch questions:
  1, 4, 16, ... up to the power of two covering min(max_batch, ENCODER_BATCH)."""
  cap = 1 << max(0, (min(max_batch, ENCODER_BATCH) - 1).bit_length())
  out, b = {cap}, 1
  while b < cap:
    out.add(b)
    b *= ROW_BUCKET_STEP
  return sorted(out)


def question_bucket(n: int, sizes: Sequence[int]) -> int:
  """The rows a batch of `n` questions is padded to (n itself beyond the largest size)."""
  return next((s for s in sizes if s >= n), n)


class PaddedQuestions:
  """Wraps a question encoder so that every call sees one of a few row counts.

  `encode_questions(texts)` pads `texts` to `question_bucket(len(texts), sizes)` by repeating
  the last question and returns the first `len(texts)` embeddings; other attributes are the
  wrapped model's.
  """

  def __init__(self, model: Any, sizes: Sequence[int]):
    self.model = model
    self.sizes = sorted(sizes)

  def __getattr__(self, name: str) -> Any:
    return getattr(self.model, name)

  def encode_questions(self, texts: Sequence[str], batch_size: int = ENCODER_BATCH) -> Any:
    texts = list(texts)
    n = len(texts)
    rows = question_bucket(n, self.sizes)
    if n and rows > n:
      texts = texts + [texts[-1]] * (rows - n)
    return self.model.encode_questions(texts, batch_size)[:n]


def _question_lengths(model: Any) -> list[int]:
  """The length buckets `ExportedModel.encode_questions` pads a batch to."""
  from bpr_jax.exported_model import MIN_BUCKET  # pylint: disable=import-outside-toplevel
  from bpr_jax.shapes import next_pow2  # pylint: disable=import-outside-toplevel

  full = int(model.settings["question_max_length"])
  return sorted({min(full, max(MIN_BUCKET, next_pow2(n))) for n in range(1, full + 1)})


def _question_of_length(model: Any, length: int) -> str:
  """A question that tokenises to `length` tokens ([CLS] a a ... [SEP]), or as near as it gets."""
  full = int(model.settings["question_max_length"])
  words = max(1, length - 2)
  for _ in range(4):
    text = " ".join(["a"] * words)
    used = int(model.tokenizer.questions([text], full)["attention_mask"].sum())
    if used == length or used >= full:
      break
    words = max(1, words + length - used)
  return text


def question_shapes(model: Any, max_batch: int) -> list[tuple[int, int]]:
  """The (rows, length) shapes the question encoder compiles for, behind `PaddedQuestions`;
  empty when `model` is not an exported model (no tokenizer or settings)."""
  if not (hasattr(model, "tokenizer") and isinstance(getattr(model, "settings", None), dict)
          and "question_max_length" in model.settings):
    return []
  return [(r, n) for r in question_batch_sizes(max_batch) for n in _question_lengths(model)]


def search_shapes(retriever: Any, max_batch: int, max_k: int) -> list[tuple[int, int]]:
  """The (batch, k) shapes of the two-stage search; empty without a binary index."""
  index = getattr(retriever, "index", None)
  if index is None or not hasattr(index, "code_bits"):
    return []
  return [(b, k) for b in batch_sizes(max_batch) for k in k_buckets(max_k)]


def warmup(retriever: Any, max_batch: int, max_k: int, progress: Progress | None = None) -> int:
  """Compiles every shape a request can meet: the question encoder (`question_shapes`) and the
  two-stage search (`search_shapes`); calls `progress(compiled, shapes)` after each and returns
  the number of shapes run.  An exported model's shapes are compiled without running the
  encoder (`ExportedModel.compile_questions`), so a restart on a filled compilation cache only
  loads them; another model is run once per shape."""
  model = getattr(retriever, "model", None)
  inner = model.model if isinstance(model, PaddedQuestions) else model
  q_shapes = question_shapes(inner, max_batch)
  s_shapes = search_shapes(retriever, max_batch, max_k)
  total = len(q_shapes) + len(s_shapes)
  done = 0
  if progress is not None:
    progress(0, total)
  start = time.perf_counter()
  compile_only = hasattr(inner, "compile_questions")
  for rows, length in q_shapes:
    if compile_only:  # compiled (or loaded from the persistent cache) without encoding anything
      inner.compile_questions(rows, length)
    else:
      inner.encode_questions([_question_of_length(inner, length)] * rows)
    done += 1
    if progress is not None:
      progress(done, total)
  if q_shapes:
    logger.info("Question encoder: %d shapes in %.1f s", len(q_shapes), time.perf_counter() - start)
  if not q_shapes and model is not None and hasattr(model, "warmup_questions"):
    model.warmup_questions(max_batch)
  if not s_shapes:
    return done
  import numpy as np  # pylint: disable=import-outside-toplevel

  from bpr_jax.search import two_stage_search  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  rng = np.random.default_rng(0)
  for b, k in s_shapes:
    q = rng.standard_normal((b, retriever.index.code_bits)).astype(np.float32)
    two_stage_search(q, retriever.index, k=k, l=getattr(retriever, "l", 1000),
                     rerank=getattr(retriever, "rerank", True),
                     candidates=getattr(retriever, "candidates", True))
    done += 1
    if progress is not None:
      progress(done, total)
  logger.info("Search: %d (batch, k) shapes in %.1f s", len(s_shapes), time.perf_counter() - t0)
  return done


class Warmup:
  """The service's warm-up: `fn(progress)` run once in a background thread.

  `state` is "warming_up" until `fn` returns, then "ok" (or "warmup_failed", with `error`, when
  it raised: requests are still served, compiling on demand).  With `fn` None it is "ok" at once.
  """

  def __init__(self, fn: Callable[[Progress], Any] | None = None):
    self._fn = fn
    self.compiled = 0
    self.shapes = 0
    self.error: str | None = None
    self.seconds: float | None = None
    self._t0: float | None = None
    self._done = threading.Event()
    self._lock = threading.Lock()
    self._thread: threading.Thread | None = None
    if fn is None:
      self._done.set()

  def start(self) -> None:
    """Starts the thread (once)."""
    with self._lock:
      if self._thread is not None or self._fn is None:
        return
      self._t0 = time.perf_counter()
      self._thread = threading.Thread(target=self._run, name="bpr-warmup", daemon=True)
      self._thread.start()

  def _run(self) -> None:
    assert self._fn is not None and self._t0 is not None
    try:
      self._fn(self._progress)
    except Exception as e:  # pylint: disable=broad-except
      logger.exception("warm-up failed; serving without it (shapes compile on first use)")
      self.error = f"{type(e).__name__}: {e}"
    finally:
      self.seconds = round(time.perf_counter() - self._t0, 3)
      if self.error is None:
        logger.info("Warm-up done: %d shapes in %.1f s", self.compiled, self.seconds)
      self._done.set()

  def _progress(self, compiled: int, shapes: int) -> None:
    self.compiled, self.shapes = compiled, shapes

  @property
  def done(self) -> bool:
    return self._done.is_set()

  @property
  def state(self) -> str:
    if not self.done:
      return "warming_up"
    return "warmup_failed" if self.error else "ok"

  def wait(self, timeout: float | None = None) -> bool:
    """Blocks until the warm-up ended (True) or `timeout` seconds passed (False)."""
    return self._done.wait(timeout)

  def retry_after(self) -> int:
    """Seconds a client should wait before asking again (an estimate of the time left)."""
    if self.done or self._t0 is None or not self.compiled or not self.shapes:
      return 1 if self.done else 5
    elapsed = time.perf_counter() - self._t0
    left = elapsed / self.compiled * max(self.shapes - self.compiled, 0)
    return int(min(max(math.ceil(left), 1), 60))

  def report(self) -> dict[str, Any]:
    return {"state": self.state, "compiled": self.compiled, "shapes": self.shapes,
            "seconds": self.seconds, "error": self.error}


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
               static_dir: str | os.PathLike[str] | None = None,
               warmup: Callable[[Progress], Any] | None = None,
               warmup_wait_s: float = 120.0) -> FastAPI:
  """Builds the FastAPI app around a retriever and a passage store.

  `warmup(progress)`, when given, runs in a background thread from the app's start-up (or its
  first request); until it returns /health answers 503 "warming_up" and /search waits for it
  (at most `warmup_wait_s`, then 503 with Retry-After).  The app's `state.warmup` is the
  `Warmup`.
  """
  limits = limits or Limits()
  index_html = pathlib.Path(static_dir or STATIC_DIR) / "index.html"
  if not index_html.is_file():
    raise FileNotFoundError(f"search page not found: {index_html}")
  page = index_html.read_text(encoding="utf-8")
  batcher = MicroBatcher(make_search_fn(retriever, passage_store, limits.max_k), max_batch=max_batch,
                         max_wait_ms=max_wait_ms, max_pending=max_pending)
  warm = Warmup(warmup)
  started = time.time()

  @contextlib.asynccontextmanager
  async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    warm.start()
    yield
    await batcher.aclose()

  app = FastAPI(title="BPR search", version="1", lifespan=lifespan)
  app.state.batcher = batcher
  app.state.limits = limits
  app.state.warmup = warm

  @app.get("/", response_class=HTMLResponse)
  async def index() -> HTMLResponse:
    return HTMLResponse(page)

  @app.get("/health")
  async def health() -> JSONResponse:
    warm.start()
    sizes = list(batcher.recent_batch_sizes)
    body = {
        "status": warm.state,
        "compiled": warm.compiled,
        "shapes": warm.shapes,
        "warmup": warm.report(),
        "passages": len(passage_store),
        "pending_questions": batcher.pending_questions,
        "search_calls": batcher.calls,
        "questions_served": batcher.questions_done,
        "mean_recent_batch": (sum(sizes) / len(sizes)) if sizes else 0.0,
        "max_batch": batcher.max_batch,
        "uptime_s": round(time.time() - started, 3),
        "rss_bytes": _rss_bytes(),
        "limits": dataclasses.asdict(limits),
    }
    if not warm.done:
      return JSONResponse(body, status_code=503, headers={"Retry-After": str(warm.retry_after())})
    return JSONResponse(body)

  @app.post("/search")
  async def search(request: Request) -> JSONResponse:
    body = await _read_body(request, limits.max_body_bytes)
    questions, k = parse_search_request(body, limits)
    if not warm.done:
      warm.start()
      deadline = time.monotonic() + warmup_wait_s
      while not warm.done and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
      if not warm.done:
        return JSONResponse(
            {"detail": f"the service is warming up ({warm.compiled} of {warm.shapes} shapes "
                       "compiled); try again later"},
            status_code=503, headers={"Retry-After": str(warm.retry_after())})
    try:
      results = await batcher.submit(questions, k)
    except Overloaded as e:
      raise _bad(503, str(e)) from None
    except Exception as e:  # The batch failed; this request answers 500, the server goes on.
      raise _bad(500, f"search failed: {type(e).__name__}: {e}") from None
    return JSONResponse({"results": results})

  return app


# ----------------------------------------------------------------------------- the command


def bind_socket(host: str, port: int) -> socket.socket:
  """A listening TCP socket on host:port; a port in use is a one-line CommandError."""
  from bpr_jax.cli import CommandError  # pylint: disable=import-outside-toplevel

  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
  except OSError as e:
    sock.close()
    if e.errno == errno.EADDRINUSE:
      raise CommandError(f"port {port} on {host} is in use; stop what holds it or pass "
                         "another --port") from None
    raise CommandError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
  sock.set_inheritable(True)
  return sock


def default_compilation_cache_dir() -> pathlib.Path:
  """`$BPR_CACHE_DIR/jax`, else `~/.cache/bpr_jax/jax`."""
  from bpr_jax.passage_store import cache_root  # pylint: disable=import-outside-toplevel
  return cache_root() / "jax"


def enable_compilation_cache(cache_dir: str | os.PathLike[str]) -> pathlib.Path:
  """Turns on JAX's persistent compilation cache in `cache_dir` for every compiled shape (no
  minimum compile time or size), so a restarted service loads its shapes instead of compiling."""
  import jax  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(cache_dir).expanduser().resolve()
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def check_inputs(model: str, index: str, passages: str, *, allow_mismatch: bool = False) -> dict:
  """Checks, before anything loads, that the model, index and passage file exist and belong
  together (`provenance.check_belongs` on the index's meta.json); returns the index's meta."""
  from bpr_jax import provenance  # pylint: disable=import-outside-toplevel

  model_dir, index_dir, passage_file = pathlib.Path(model), pathlib.Path(index), pathlib.Path(passages)
  if not model_dir.is_dir():
    raise FileNotFoundError(f"--model {model}: no such folder (an export of bpr_jax.export)")
  if not (model_dir / "bpr.json").is_file():
    raise FileNotFoundError(f"--model {model}: no bpr.json (not an exported model folder)")
  if not index_dir.is_dir():
    raise FileNotFoundError(f"--index {index}: no such folder (an index of bpr_jax.index)")
  meta_file = index_dir / "meta.json"
  if not meta_file.is_file():
    raise FileNotFoundError(f"--index {index}: no meta.json (not a complete index folder)")
  if not passage_file.is_file():
    raise FileNotFoundError(f"--passages {passages}: no such file")
  try:
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise ValueError(f"{meta_file}: not valid JSON ({e})") from None
  recorded = meta.get(provenance.INPUTS) or {}
  provenance.check_belongs(
      f"index {index}, model {model} and passages {passages}",
      {k: recorded[k] for k in ("model", "passages") if k in recorded} or None,
      {"model": provenance.model_fingerprint(model_dir),
       "passages": provenance.fingerprint_passages(passage_file)},
      allow=allow_mismatch)
  return meta


def check_sizes(count: int | None, store: Any, passages: str, index: str) -> None:
  """Fails when the index and the passage file are not the same corpus (count None: skip)."""
  if count is not None and int(count) != len(store):
    raise ValueError(f"the passage file {passages} has {len(store)} passages but the index "
                     f"{index} has {count}; serve the passage file the index was built from")


def _load_retriever(model: str, index: str, l: int | None, allow_mismatch: bool) -> SearchBackend:
  """The real retriever; passage text is looked up by the service, not by it."""
  from bpr_jax.search import Retriever  # Imported here: pulls in JAX.

  kwargs: dict[str, Any] = {} if l is None else {"l": l}
  if allow_mismatch:
    kwargs["allow_mismatch"] = True
  return Retriever.from_paths(model, index, **kwargs)


def main(argv: Sequence[str]) -> None:
  """Binds the port, checks and loads the pieces, and serves (see the module docstring)."""
  del argv
  from absl import flags

  from bpr_jax.cli import CommandError

  f = flags.FLAGS
  for name in ("model", "index", "passages"):
    if not f[name].value:
      raise CommandError(f"--{name} is required (see --help)")
  for name in ("max_batch", "max_k", "max_questions"):
    if f[name].value < 1:
      raise CommandError(f"--{name} must be >= 1, got {f[name].value}")
  logging.getLogger("bpr_jax").setLevel(logging.INFO)
  sock = bind_socket(f.host, f.port)  # Before anything slow: a port in use fails at once.
  try:
    meta = check_inputs(f.model, f.index, f.passages, allow_mismatch=f.allow_mismatch)
    from bpr_jax.passage_store import PassageStore

    store = PassageStore(f.passages, cache_dir=f.passage_cache_dir or None)
    check_sizes(meta.get("num_passages"), store, f.passages, f.index)
    logger.info("Passages: %d (offset index %s)", len(store), store.index_dir)
    if f.compilation_cache_dir != "":
      cache = enable_compilation_cache(f.compilation_cache_dir or default_compilation_cache_dir())
      logger.info("Compilation cache: %s", cache)
    retriever = _load_retriever(f.model, f.index, f.l, f.allow_mismatch)
    check_sizes(getattr(getattr(retriever, "index", None), "ntotal", None), store, f.passages, f.index)
    model = getattr(retriever, "model", None)
    if model is not None and hasattr(model, "encode_questions"):
      retriever.model = PaddedQuestions(model, question_batch_sizes(f.max_batch))  # type: ignore[attr-defined]
    limits = Limits(max_questions=f.max_questions, max_k=f.max_k, max_body_bytes=f.max_body_bytes)
    warm = None
    if f.warmup:
      def warm(progress: Progress) -> None:
        warmup(retriever, f.max_batch, f.max_k, progress)
    app = create_app(retriever, store, max_batch=f.max_batch, max_wait_ms=f.max_wait_ms,
                     max_pending=f.max_pending, limits=limits, warmup=warm,
                     warmup_wait_s=f.warmup_wait_s)
  except BaseException:
    sock.close()
    raise
  import uvicorn  # pylint: disable=import-outside-toplevel

  host = f"[{f.host}]" if ":" in f.host else f.host
  print(f"Serving on http://{host}:{f.port}/ (warm-up {'running' if f.warmup else 'off'}; "
        "GET /health for its progress)", flush=True)
  config = uvicorn.Config(app, log_level=f.log_level, access_log=f.access_log)
  uvicorn.Server(config).run(sockets=[sock])


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_string("model", None, "Exported model folder (bpr_jax.export).")
  flags.DEFINE_string("index", None, "Binary passage index folder (bpr_jax.index).")
  flags.DEFINE_string("passages", None, "The passage file the index was encoded from: DPR TSV "
                      "(id, text, title) or BEIR corpus.jsonl.")
  flags.DEFINE_string("passage_cache_dir", None, "Where the passage file's offset index is kept; "
                      "default $BPR_CACHE_DIR/passages or ~/.cache/bpr_jax/passages.")
  flags.DEFINE_string("compilation_cache_dir", None, "JAX's persistent compilation cache, so a "
                      "restart does not compile again; default $BPR_CACHE_DIR/jax or "
                      "~/.cache/bpr_jax/jax; empty turns it off.")
  flags.DEFINE_boolean("allow_mismatch", False, "Serve a model, index and passage file that do "
                       "not belong together (the index records what its codes were made from).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
  flags.DEFINE_integer("port", 8000, "Port to listen on.")
  flags.DEFINE_integer("max_batch", 64, "Most questions per search call.")
  flags.DEFINE_boolean("warmup", True, "Compile every shape a request can meet, in the "
                       "background after start-up (/search waits for it).")
  flags.DEFINE_float("warmup_wait_s", 120.0, "How long a /search sent during the warm-up waits "
                     "for it before answering 503 with Retry-After.")
  flags.DEFINE_float("max_wait_ms", 5.0, "How long a batch waits for more requests.")
  flags.DEFINE_integer("max_pending", 16384, "Most queued questions before answering 503.")
  flags.DEFINE_integer("max_questions", 1024, "Most questions per request.")
  flags.DEFINE_integer("max_k", 1000, "Largest k a request may ask for.")
  flags.DEFINE_integer("max_body_bytes", 1_000_000, "Largest request body.")
  flags.DEFINE_integer("l", None, "Candidates re-ranked per question (Retriever l); default: its own.")
  flags.DEFINE_string("log_level", "info", "uvicorn log level.")
  flags.DEFINE_bool("access_log", False, "Log every request.")


if __name__ == "__main__":
  from bpr_jax import cli

  cli.run(main, _define_flags)
