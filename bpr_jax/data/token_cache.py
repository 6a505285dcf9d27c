"""Token ids made once: unpadded token tables, bucketed padding, and an on-disk cache.

A `TokenTable` holds the tokenisation of N texts without padding: the ids of all rows end to
end, each row's offset and length, and `type_start` (where token type 1 begins; the length for
single-segment rows). `rows(index, length)` pads a selection to `length` columns and returns
the three int32 arrays a BERT takes, equal to the `Tokenizer`'s fixed-length output cut to
`length` columns. Tables are built with the tokenizer's batch call (the fast tokenizer spreads a
batch over all cores unless TOKENIZERS_PARALLELISM=false).

`ExampleTokens` is the token form of a training source: one question row per example, one row
per distinct passage, and per example the rows of its positives and of its negative pool
(hard negatives, else negatives), which is everything `pipeline.TrainBatches` can pick.

With a cache directory a table is stored under DIR/KEY/ (ids.npy, offsets.npy, lengths.npy,
type_start.npy, meta.json), KEY a sha256 of the tokenizer, the kind, max_length and the texts
themselves; it is written into a temporary folder and renamed, so processes building the same
table at once are safe, and any change to data, tokenizer or lengths makes a new key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Sequence

import numpy as np
from absl import logging

FORMAT = "bpr-jax-token-table-v1"
ARRAYS = ("ids", "offsets", "lengths", "type_start")
BUILD_BATCH = 2048


def bucket_length(longest: int, multiple: int, max_length: int) -> int:
  """The padded length for a batch whose longest row has `longest` tokens.

  `longest` rounded up to a multiple of `multiple`, at most `max_length`; `multiple` <= 0 pads
  to `max_length` (fixed shapes). A batch then takes one of ceil(max_length / multiple) shapes.
  """
  if multiple <= 0:
    return max_length
  return int(min(max_length, max(1, -(-int(longest) // multiple)) * multiple))


def num_buckets(multiple: int, max_length: int) -> int:
  """How many padded lengths `bucket_length` can return (compiled shapes per input)."""
  return 1 if multiple <= 0 else len({bucket_length(n, multiple, max_length) for n in range(1, max_length + 1)})


@dataclasses.dataclass
class TokenTable:
  """Unpadded token rows: row r is ids[offsets[r]:offsets[r] + lengths[r]]."""
  ids: np.ndarray          # uint16 (vocab < 65536) or int32, all rows end to end
  offsets: np.ndarray      # int64 [N]
  lengths: np.ndarray      # int32 [N]
  type_start: np.ndarray   # int32 [N]: token type 1 from here to the row's end
  pad_id: int
  max_length: int

  def __len__(self) -> int:
    return int(self.lengths.shape[0])

  def longest(self, index: np.ndarray) -> int:
    index = np.asarray(index, np.int64)
    return int(self.lengths[index].max()) if index.size else 1

  def rows(self, index: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """input_ids / attention_mask / token_type_ids, int32 [len(index), length]."""
    index = np.asarray(index, np.int64)
    cols = np.arange(length, dtype=np.int64)
    n = np.minimum(self.lengths[index], length).astype(np.int64)
    mask = cols[None, :] < n[:, None]
    if self.ids.size:
      pos = np.minimum(self.offsets[index][:, None] + cols[None, :], self.ids.size - 1)
      ids = np.where(mask, self.ids[pos].astype(np.int32), np.int32(self.pad_id))
    else:
      ids = np.full(mask.shape, self.pad_id, np.int32)
    types = mask & (cols[None, :] >= self.type_start[index][:, None])
    return {"input_ids": ids.astype(np.int32, copy=False), "attention_mask": mask.astype(np.int32),
            "token_type_ids": types.astype(np.int32)}


def _from_padded(chunks: list[dict[str, np.ndarray]], pad_id: int, max_length: int,
                 vocab_size: int) -> TokenTable:
  dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
  ids, lengths, type_start = [], [], []
  for tok in chunks:
    mask = tok["attention_mask"].astype(bool)
    n = mask.sum(axis=1).astype(np.int32)
    if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < n[:, None]):
      raise ValueError("tokenizer returned an attention mask that is not a prefix of ones")
    types = tok["token_type_ids"].astype(bool) & mask
    first = np.where(types.any(axis=1), types.argmax(axis=1), n).astype(np.int32)
    ids.append(tok["input_ids"][mask].astype(dtype))
    lengths.append(n)
    type_start.append(first)
  lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
  offsets = np.zeros(len(lengths_all), np.int64)
  if len(lengths_all):
    offsets[1:] = np.cumsum(lengths_all, dtype=np.int64)[:-1]
  return TokenTable(ids=np.concatenate(ids) if ids else np.zeros(0, dtype), offsets=offsets,
                    lengths=lengths_all, type_start=np.concatenate(type_start) if type_start else
                    np.zeros(0, np.int32), pad_id=pad_id, max_length=max_length)


def tokenize_questions(tokenizer, texts: Sequence[str], max_length: int) -> TokenTable:
  chunks = [tokenizer.questions(texts[i:i + BUILD_BATCH], max_length) for i in range(0, len(texts), BUILD_BATCH)]
  return _from_padded(chunks, tokenizer.pad_token_id, max_length, tokenizer.vocab_size)


def tokenize_passages(tokenizer, titles: Sequence[str], texts: Sequence[str], max_length: int) -> TokenTable:
  chunks = [tokenizer.passages(titles[i:i + BUILD_BATCH], texts[i:i + BUILD_BATCH], max_length)
            for i in range(0, len(texts), BUILD_BATCH)]
  return _from_padded(chunks, tokenizer.pad_token_id, max_length, tokenizer.vocab_size)


def tokenizer_fingerprint(tokenizer) -> str:
  """sha256 of what decides the token ids: the fast tokenizer's full JSON, else its vocab."""
  hf = tokenizer.hf
  backend = getattr(hf, "backend_tokenizer", None)
  h = hashlib.sha256(type(hf).__name__.encode())
  if backend is not None:  # without the truncation / padding state the last call left behind
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    h.update(json.dumps(spec, sort_keys=True).encode())
  else:
    h.update(json.dumps(sorted(hf.get_vocab().items())).encode())
  h.update(json.dumps([tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]).encode())
  return h.hexdigest()


def _texts_key(tokenizer_fp: str, kind: str, max_length: int, columns: Sequence[Sequence[str]]) -> str:
  h = hashlib.sha256(f"{FORMAT}\0{tokenizer_fp}\0{kind}\0{max_length}\0{len(columns[0])}\0".encode())
  for row in zip(*columns):
    for text in row:
      h.update(text.encode("utf-8", "surrogatepass"))
      h.update(b"\0")
  return h.hexdigest()[:32]


def save_table(table: TokenTable, directory: str | os.PathLike, meta: dict) -> None:
  """Writes the table into a temporary folder beside `directory` and renames it there."""
  directory = os.fspath(directory)
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="." + os.path.basename(directory) + ".", suffix=".tmp", dir=parent)
  try:
    for name in ARRAYS:
      np.save(os.path.join(tmp, f"{name}.npy"), getattr(table, name), allow_pickle=False)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
      json.dump({"format": FORMAT, "pad_id": table.pad_id, "max_length": table.max_length,
                 "rows": len(table), "tokens": int(table.ids.size), **meta}, f, indent=1)
    try:
      os.rename(tmp, directory)
    except OSError:
      if not os.path.isfile(os.path.join(directory, "meta.json")):
        raise  # not another process's finished copy of the same table
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def load_table(directory: str | os.PathLike) -> TokenTable:
  directory = os.fspath(directory)
  with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{directory}: not a token table ({meta.get('format')!r})")
  arrays = {name: np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r", allow_pickle=False)
            for name in ARRAYS}
  table = TokenTable(**arrays, pad_id=int(meta["pad_id"]), max_length=int(meta["max_length"]))
  if len(table) != meta["rows"] or table.ids.size != meta["tokens"]:
    raise ValueError(f"{directory}: arrays do not match meta.json")
  return table


def cached_table(tokenizer, kind: str, columns: Sequence[Sequence[str]], max_length: int,
                 cache_dir: str | os.PathLike | None = None, tokenizer_fp: str | None = None) -> TokenTable:
  """The table of `columns` ([texts] for questions, [titles, texts] for passages), loaded from
  `cache_dir` when an identical one was built before, else built (and saved there)."""
  if kind not in ("questions", "passages"):
    raise ValueError(f"unknown table kind {kind!r}")

  def build() -> TokenTable:
    if kind == "questions":
      return tokenize_questions(tokenizer, list(columns[0]), max_length)
    return tokenize_passages(tokenizer, list(columns[0]), list(columns[1]), max_length)

  if not cache_dir:
    return build()
  key = _texts_key(tokenizer_fp or tokenizer_fingerprint(tokenizer), kind, max_length, columns)
  directory = os.path.join(os.fspath(cache_dir), f"{kind}-{max_length}-{key}")
  if os.path.isfile(os.path.join(directory, "meta.json")):
    try:
      table = load_table(directory)
      logging.info("token cache: %d %s from %s", len(table), kind, directory)
      return table
    except (OSError, ValueError) as error:
      logging.warning("token cache %s unreadable (%s); rebuilding", directory, error)
      shutil.rmtree(directory, ignore_errors=True)
  table = build()
  save_table(table, directory, {"kind": kind})
  logging.info("token cache: wrote %d %s (%d tokens) to %s", len(table), kind, table.ids.size, directory)
  return table


@dataclasses.dataclass
class ExampleTokens:
  """Token tables of a training source and, per example, its candidate passage rows."""
  questions: TokenTable       # row i: the question of example i
  passages: TokenTable        # distinct passages
  pos_offsets: np.ndarray     # int64 [N + 1]: positives of i are pos_rows[pos_offsets[i]:pos_offsets[i+1]]
  pos_rows: np.ndarray        # int32
  pool_offsets: np.ndarray    # int64 [N + 1]: negative pool of i (hard negatives, else negatives)
  pool_rows: np.ndarray       # int32

  def __len__(self) -> int:
    return len(self.questions)

  def positives(self, i: int) -> np.ndarray:
    return self.pos_rows[self.pos_offsets[i]:self.pos_offsets[i + 1]]

  def pool(self, i: int) -> np.ndarray:
    return self.pool_rows[self.pool_offsets[i]:self.pool_offsets[i + 1]]


def example_tokens(source, tokenizer, question_max_length: int, passage_max_length: int, *,
                   cache_dir: str | os.PathLike | None = None, limit: int | None = None,
                   first_only: bool = False) -> ExampleTokens:
  """Reads `source` once and tokenises every question and candidate passage (or loads them).

  `first_only` keeps only each example's first positive and first pool passage (validation)."""
  n = len(source) if limit is None else min(len(source), limit)
  row_of: dict = {}
  titles: list[str] = []
  texts: list[str] = []
  questions: list[str] = []
  pos_rows: list[int] = []
  pool_rows: list[int] = []
  pos_offsets = np.zeros(n + 1, np.int64)
  pool_offsets = np.zeros(n + 1, np.int64)

  def row(p) -> int:
    key = (p.title, p.text)
    r = row_of.get(key)
    if r is None:
      r = row_of[key] = len(texts)
      titles.append(p.title)
      texts.append(p.text)
    return r

  for i in range(n):
    example = source[i]
    questions.append(example.question)
    positives = example.positives[:1] if first_only else example.positives
    pool = list(example.hard_negatives) or list(example.negatives)
    pos_rows.extend(row(p) for p in positives)
    pool_rows.extend(row(p) for p in (pool[:1] if first_only else pool))
    pos_offsets[i + 1], pool_offsets[i + 1] = len(pos_rows), len(pool_rows)
  fp = tokenizer_fingerprint(tokenizer) if cache_dir else None
  return ExampleTokens(
      questions=cached_table(tokenizer, "questions", [questions], question_max_length, cache_dir, fp),
      passages=cached_table(tokenizer, "passages", [titles, texts], passage_max_length, cache_dir, fp),
      pos_offsets=pos_offsets, pos_rows=np.asarray(pos_rows, np.int32),
      pool_offsets=pool_offsets, pool_rows=np.asarray(pool_rows, np.int32))
