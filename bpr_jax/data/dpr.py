"""DPR retriever training JSON (`biencoder-nq-train.json` and friends).

Holds the streaming JSON scanner, record validation and the byte-span cache of this format.

The file is a top-level JSON array of records

  {"question": str, "answers": [str, ...],
   "positive_ctxs": [ctx, ...], "negative_ctxs": [ctx, ...],
   "hard_negative_ctxs": [ctx, ...]}

with ctx = {"title": str, "text": str, "passage_id" | "psg_id" | "id": str|int}.
DPR's NQ train file is about 7 GB, so `DprJsonSource` streams it once with the
C JSON decoder, validates every record and keeps only the byte span of each
record; `__getitem__` re-reads and decodes one span.
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
import re
import threading
from typing import Any, Iterator

import numpy as np
from absl import logging

from bpr_jax.data.examples import DataError, Example, Passage, check_index, data_error, snippet, tsv_rows

_WS = re.compile(r"[ \t\n\r]*")
_ID_KEYS = ("passage_id", "psg_id", "id")
_CTX_LISTS = ("positive_ctxs", "negative_ctxs", "hard_negative_ctxs")
_DECODER = json.JSONDecoder()
_INDEX_VERSION = 1


class RecordError(ValueError):
  """A record that parses as JSON but does not have the DPR shape."""


def _ctx_to_passage(ctx: Any, where: str) -> Passage:
  if not isinstance(ctx, dict):
    raise RecordError(f"{where} is a {type(ctx).__name__}, expected an object")
  text = ctx.get("text")
  if not isinstance(text, str):
    raise RecordError(f"{where}.text is {'missing' if text is None else type(text).__name__}, expected a string")
  title = ctx.get("title", "")
  if title is None:
    title = ""
  if not isinstance(title, str):
    raise RecordError(f"{where}.title is a {type(title).__name__}, expected a string")
  pid = ""
  for key in _ID_KEYS:
    value = ctx.get(key)
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, (str, int)):
      raise RecordError(f"{where}.{key} is a {type(value).__name__}, expected a string or integer")
    pid = str(value)
    break
  return Passage(id=pid, title=title, text=text)


def record_to_example(record: Any) -> Example:
  """Validates one decoded DPR record and converts it; raises RecordError."""
  if not isinstance(record, dict):
    raise RecordError(f"record is a {type(record).__name__}, expected an object")
  question = record.get("question")
  if question is None:
    raise RecordError("missing 'question'")
  if not isinstance(question, str):
    raise RecordError(f"'question' is a {type(question).__name__}, expected a string")
  if not question.strip():
    raise RecordError("empty 'question'")
  answers = record.get("answers", [])
  if answers is None:
    answers = []
  if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
    raise RecordError("'answers' must be a list of strings")
  lists = {}
  for key in _CTX_LISTS:
    value = record.get(key, [])
    if value is None:
      value = []
    if not isinstance(value, list):
      raise RecordError(f"'{key}' is a {type(value).__name__}, expected a list")
    lists[key] = tuple(_ctx_to_passage(c, f"{key}[{j}]") for j, c in enumerate(value))
  if not lists["positive_ctxs"]:
    raise RecordError("no positive passage ('positive_ctxs' is missing or empty)")
  qid = record.get("qid", record.get("id", ""))
  qid = "" if qid is None or isinstance(qid, (dict, list)) else str(qid)
  return Example(
      question=question,
      answers=tuple(answers),
      positives=lists["positive_ctxs"],
      negatives=lists["negative_ctxs"],
      hard_negatives=lists["hard_negative_ctxs"],
      qid=qid,
  )


def _question_of(record: Any) -> str:
  if isinstance(record, dict) and isinstance(record.get("question"), str):
    return record["question"]
  return ""


class _ArrayScanner:
  """Streams the elements of a top-level JSON array with their byte spans.

  Yields (index, byte_start, byte_end, value, error) where `error` is a
  json.JSONDecodeError for an element that does not parse (scanning cannot go
  on after one, so it is the last thing yielded).
  """

  def __init__(self, path: str, chunk_bytes: int = 1 << 24):
    self.path = path
    self.chunk_bytes = chunk_bytes

  def __iter__(self) -> Iterator[tuple[int, int, int, Any, Exception | None]]:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    opener = gzip.open if self.path.endswith(".gz") else open
    with opener(self.path, "rb") as f:
      head = f.read(3)
      base = 3 if head == codecs.BOM_UTF8 else 0
      f.seek(base)
      state = {"buf": "", "eof": False, "mark_char": 0, "mark_byte": base}

      def refill(keep_from: int) -> int:
        """Drops buf[:keep_from] (advancing the byte mark) and reads more; returns the shift."""
        buf = state["buf"]
        state["mark_byte"] += len(buf[state["mark_char"]:keep_from].encode("utf-8"))
        state["mark_char"] = 0
        raw = f.read(self.chunk_bytes)
        try:
          more = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
          raise DataError(f"{self.path}:byte {f.tell() - len(raw) + e.start}: invalid UTF-8") from None
        if not raw:
          state["eof"] = True
        state["buf"] = buf[keep_from:] + more
        return keep_from

      def byte_at(pos: int) -> int:
        buf = state["buf"]
        state["mark_byte"] += len(buf[state["mark_char"]:pos].encode("utf-8"))
        state["mark_char"] = pos
        return state["mark_byte"]

      def skip_ws(pos: int) -> int:
        while True:
          pos = _WS.match(state["buf"], pos).end()
          if pos < len(state["buf"]) or state["eof"]:
            return pos
          pos -= refill(pos)

      pos = skip_ws(0)
      buf = state["buf"]
      if pos >= len(buf) or buf[pos] != "[":
        found = "end of file" if pos >= len(buf) else repr(buf[pos])
        raise DataError(f"{self.path}:byte {byte_at(pos)}: expected a JSON array '[' at the top level, found {found}")
      pos = skip_ws(pos + 1)
      index = 0
      if pos < len(state["buf"]) and state["buf"][pos] == "]":
        pos += 1
      else:
        while True:
          if pos >= len(state["buf"]):
            raise DataError(f"{self.path}:record {index}: file ends inside the top-level array")
          while True:
            buf = state["buf"]
            try:
              value, end = _DECODER.raw_decode(buf, pos)
              break
            except json.JSONDecodeError as e:
              near_tail = e.pos >= len(buf) - 32 or e.msg.startswith("Unterminated string")
              if state["eof"] or not near_tail:
                start = byte_at(pos)
                yield index, start, -1, None, e
                return
              pos -= refill(pos)
          start = byte_at(pos)
          stop = byte_at(end)
          yield index, start, stop, value, None
          index += 1
          pos = skip_ws(end)
          buf = state["buf"]
          if pos < len(buf) and buf[pos] == ",":
            pos = skip_ws(pos + 1)
            continue
          if pos < len(buf) and buf[pos] == "]":
            pos += 1
            break
          found = "end of file" if pos >= len(buf) else repr(buf[pos])
          raise DataError(f"{self.path}:record {index}: expected ',' or ']' after record {index - 1}, found {found}")
      pos = skip_ws(pos)
      if pos < len(state["buf"]):
        raise DataError(f"{self.path}:byte {byte_at(pos)}: unexpected data after the top-level array")


class DprJsonSource:
  """Random access to the examples of one DPR retriever JSON file.

  Construction streams the file once and validates every record; invalid
  records raise DataError("FILE:record N (question ...): problem"), or with
  `skip_invalid=True` are skipped, counted in `num_skipped` and logged. Only
  the byte offsets of valid records are kept in memory (16 bytes a record).
  With `cache_dir`, the offsets are saved there keyed by the file's path,
  size and modification time, and a later construction reuses them.
  """

  def __init__(self, path: str | os.PathLike, *, skip_invalid: bool = False,
               max_examples: int | None = None, cache_dir: str | os.PathLike | None = None,
               name: str | None = None):
    self.path = os.path.abspath(os.fspath(path))
    self.name = name or os.path.basename(self.path)
    self.skip_invalid = skip_invalid
    self.num_skipped = 0
    self.num_records = 0
    if not os.path.isfile(self.path):
      raise DataError(f"{self.path}:0: file not found")
    if self.path.endswith(".gz"):
      raise DataError(f"{self.path}:0: gzip files have no random access; gunzip it first")
    if max_examples is not None and max_examples < 0:
      raise ValueError(f"max_examples must be >= 0, got {max_examples}")
    cache_file = self._cache_file(cache_dir, max_examples) if cache_dir else None
    if cache_file and os.path.exists(cache_file):
      with np.load(cache_file) as z:
        self._starts, self._ends = z["starts"], z["ends"]
        self.num_skipped = int(z["num_skipped"])
        self.num_records = int(z["num_records"])
      logging.info("%s: %d examples from index cache %s", self.path, len(self._starts), cache_file)
    else:
      self._scan(max_examples)
      if cache_file:
        self._save_cache(cache_file)
    self._fd: int | None = None
    self._lock = threading.Lock()

  def _cache_file(self, cache_dir: str | os.PathLike, max_examples: int | None) -> str:
    st = os.stat(self.path)
    key = f"{_INDEX_VERSION}|{self.path}|{st.st_size}|{st.st_mtime_ns}|{self.skip_invalid}|{max_examples}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(os.fspath(cache_dir), f"{os.path.basename(self.path)}.{digest}.index.npz")

  def _save_cache(self, cache_file: str) -> None:
    from bpr_jax.io import atomic_savez  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    atomic_savez(cache_file, starts=self._starts, ends=self._ends,
                 num_skipped=np.int64(self.num_skipped), num_records=np.int64(self.num_records))

  def _scan(self, max_examples: int | None) -> None:
    starts: list[int] = []
    ends: list[int] = []
    for index, start, end, value, error in _ArrayScanner(self.path):
      if max_examples is not None and len(starts) >= max_examples:
        break
      self.num_records = index + 1
      if error is not None:
        raise DataError(f"{self.path}:record {index}: malformed JSON at byte {start}: {error.msg}")
      try:
        record_to_example(value)
      except RecordError as e:
        question = _question_of(value)
        where = f"record {index}" + (f" (question {snippet(question)!r})" if question else "")
        if not self.skip_invalid:
          raise DataError(f"{self.path}:{where}: {e}") from None
        self.num_skipped += 1
        logging.warning("%s:%s: skipped: %s", self.path, where, e)
        continue
      starts.append(start)
      ends.append(end)
    self._starts = np.asarray(starts, dtype=np.int64)
    self._ends = np.asarray(ends, dtype=np.int64)
    if self.num_skipped:
      logging.warning("%s: skipped %d invalid records of %d", self.path, self.num_skipped, self.num_records)
    logging.info("%s: %d examples", self.path, len(self._starts))

  def __len__(self) -> int:
    return len(self._starts)

  def raw_record(self, i: int) -> dict:
    """The decoded JSON record behind example `i`."""
    i = check_index(i, len(self._starts))
    with self._lock:
      if self._fd is None:
        self._fd = os.open(self.path, os.O_RDONLY)
      fd = self._fd
    start, end = int(self._starts[i]), int(self._ends[i])
    data = os.pread(fd, end - start, start)
    return json.loads(data)

  def __getitem__(self, i: int) -> Example:
    return record_to_example(self.raw_record(i))

  def __iter__(self) -> Iterator[Example]:
    for i in range(len(self)):
      yield self[i]

  def __getstate__(self) -> dict:
    state = self.__dict__.copy()
    state["_fd"] = None
    state.pop("_lock", None)
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def iter_dpr_examples(path: str | os.PathLike, *, skip_invalid: bool = False,
                      stats: dict | None = None) -> Iterator[tuple[int, Example]]:
  """Streams (record index, Example) from a DPR JSON file, plain or .gz.

  Validation and errors are those of DprJsonSource; with `skip_invalid`,
  invalid records are skipped, logged and counted in stats["num_skipped"].
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f"{path}:0: file not found")
  if stats is not None:
    stats.setdefault("num_skipped", 0)
  for index, start, _, value, error in _ArrayScanner(path):
    if error is not None:
      raise DataError(f"{path}:record {index}: malformed JSON at byte {start}: {error.msg}")
    try:
      example = record_to_example(value)
    except RecordError as e:
      question = _question_of(value)
      where = f"record {index}" + (f" (question {snippet(question)!r})" if question else "")
      if not skip_invalid:
        raise DataError(f"{path}:{where}: {e}") from None
      logging.warning("%s:%s: skipped: %s", path, where, e)
      if stats is not None:
        stats["num_skipped"] += 1
      continue
    yield index, example


def example_to_record(example: Example) -> dict:
  """The DPR JSON record for `example` (inverse of `record_to_example`)."""

  def ctx(p: Passage) -> dict:
    return {"title": p.title, "text": p.text, "passage_id": p.id}

  record = {
      "question": example.question,
      "answers": list(example.answers),
      "positive_ctxs": [ctx(p) for p in example.positives],
      "negative_ctxs": [ctx(p) for p in example.negatives],
      "hard_negative_ctxs": [ctx(p) for p in example.hard_negatives],
  }
  if example.qid:
    record["qid"] = example.qid
  return record


def write_dpr_json(path: str | os.PathLike, records: Iterator[dict] | list[dict]) -> int:
  """Writes DPR records as a JSON array via a temp file and rename; returns the count."""
  from bpr_jax.io import atomic_file  # pylint: disable=import-outside-toplevel
  n = 0
  with atomic_file(path) as f:
    f.write("[")
    for record in records:
      f.write(",\n" if n else "\n")
      json.dump(record, f, ensure_ascii=False)
      n += 1
    f.write("\n]\n")
  return n


_QA_HEADER_WORDS = {"question", "questions", "query", "queries", "q", "text", "answer", "answers"}


def parse_answers(field: str) -> list[str]:
  """The answers column of a DPR qas file: a Python/JSON list literal of strings.

  Raises ValueError with a one-line fault (the value is not a list, or holds a non-string).
  """
  import ast  # pylint: disable=import-outside-toplevel
  text = field.strip()
  try:
    value = json.loads(text)
  except ValueError:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
      raise ValueError(f"answers {snippet(text)!r} are not a Python/JSON list of strings "
                       "(expected e.g. ['Paris'])") from None
  if not isinstance(value, (list, tuple)):
    raise ValueError(f"answers {snippet(text)!r} are a {type(value).__name__}, not a list of "
                     "strings (expected e.g. ['Paris'])")
  bad = [a for a in value if not isinstance(a, str)]
  if bad:
    raise ValueError(f"answers {snippet(text)!r} hold a {type(bad[0]).__name__} ({snippet(repr(bad[0]))}), "
                     "not only strings")
  return list(value)


def _looks_like_header(row: list[str]) -> bool:
  words = [c.strip().lower() for c in row[:2]]
  return all(w in _QA_HEADER_WORDS for w in words)


def iter_qas(path: str | os.PathLike) -> Iterator[tuple[int, str, list[str]]]:
  """Streams (line, question, answers) from a DPR qas file (nq-test.csv layout).

  Each line is ``question<TAB>['answer', ...]`` (a Python or JSON list of strings), with no
  header line.  A bad line is a one-line DataError ``FILE:LINE: fault``.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise data_error(path, 0, "file not found")
  first = True
  with open(path, "r", encoding="utf-8", newline="") as f:
    for line, row in tsv_rows(path, f):
      if first and _looks_like_header(row):
        raise data_error(path, line, f"header line {snippet(chr(9).join(row))!r}: a DPR qas file "
                         "has none (each line is question<TAB>['answer', ...]); remove it")
      first = False
      if len(row) < 2:
        raise data_error(path, line, "expected 'question<TAB>[answers]', found no tab")
      question = row[0].strip()
      if not question:
        raise data_error(path, line, "empty question")
      try:
        answers = parse_answers(row[1])
      except ValueError as e:
        raise data_error(path, line, f"bad answers: {e}") from None
      yield line, question, answers
