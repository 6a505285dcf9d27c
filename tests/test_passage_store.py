"""Tests for the disk-backed passage store (bpr_jax.passage_store)."""
from __future__ import annotations

import json
import os
import pathlib
import threading

import numpy as np
import pytest

from bpr_jax.passage_store import PassageFormatError, PassageStore

DPR_TSV = (
    "id\ttext\ttitle\n"
    '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n'
    "2\tSecond passage text\tTitle two\n"
    "\n"
    "10\tTen text, with comma\tTen\n"
    "abc-7\tplain\tMixed id\n"
)


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(text, encoding="utf-8")
  return path


def test_dpr_tsv_lookup_by_id_and_row(tmp_path: pathlib.Path) -> None:
  store = PassageStore(_write(tmp_path / "psgs.tsv", DPR_TSV), cache_dir=tmp_path / "cache")
  assert len(store) == 4
  assert store.built
  assert store.get(["2", "1"]) == [("Title two", "Second passage text"),
                                   ("Aaron", 'Aaron Aaron ( or ; "Ahärôn") is a prophet')]
  assert store.get(["abc-7"]) == [("Mixed id", "plain")]
  assert store.get_rows([2]) == [("Ten", "Ten text, with comma")]
  assert [store.id_at(r) for r in range(4)] == ["1", "2", "10", "abc-7"]
  assert store.rows_of(["10", "nope", "1"]).tolist() == [2, -1, 0]
  assert store.get([]) == []


def test_unknown_ids_raise_or_default(tmp_path: pathlib.Path) -> None:
  store = PassageStore(_write(tmp_path / "psgs.tsv", DPR_TSV), cache_dir=tmp_path / "c")
  with pytest.raises(KeyError, match="unknown passage id"):
    store.get(["1", "999"])
  assert store.get(["999", "1"], default=("", "")) == [("", ""), ("Aaron", store.get(["1"])[0][1])]
  # A prefix of a longer id, or an id longer than any stored, is not a match.
  assert store.rows_of(["ab", "abc-77777"]).tolist() == [-1, -1]
  with pytest.raises(IndexError):
    store.get_row(4)


def test_row_hints_are_checked_against_ids(tmp_path: pathlib.Path) -> None:
  store = PassageStore(_write(tmp_path / "psgs.tsv", DPR_TSV), cache_dir=tmp_path / "c")
  # Right hint, wrong hint (row 0 holds id "1"), out-of-range hint, none.
  got = store.get(["2", "10", "abc-7", "1"], rows=[1, 0, 99, -1])
  assert [t for t, _ in got] == ["Title two", "Ten", "Mixed id", "Aaron"]
  with pytest.raises(ValueError, match="rows has"):
    store.get(["1"], rows=[0, 1])


def test_header_column_order_and_no_trailing_newline(tmp_path: pathlib.Path) -> None:
  text = "title\tid\ttext\r\nT1\tp1\tx1\r\nT2\tp2\tx2"
  store = PassageStore(_write(tmp_path / "p.tsv", text), cache_dir=tmp_path / "c")
  assert store.get(["p2", "p1"]) == [("T2", "x2"), ("T1", "x1")]


def test_tsv_without_header(tmp_path: pathlib.Path) -> None:
  store = PassageStore(_write(tmp_path / "p.tsv", "7\tseven\tSeven\n8\teight\tEight\n"),
                       cache_dir=tmp_path / "c")
  assert store.get(["8"]) == [("Eight", "eight")]


def test_bad_header_and_duplicates_are_clear_errors(tmp_path: pathlib.Path) -> None:
  with pytest.raises(PassageFormatError, match="must name the columns"):
    PassageStore(_write(tmp_path / "a.tsv", "id\tbody\n1\tx\n"), cache_dir=tmp_path / "c")
  with pytest.raises(PassageFormatError, match="duplicate passage id '1'"):
    PassageStore(_write(tmp_path / "b.tsv", "1\ta\tA\n1\tb\tB\n"), cache_dir=tmp_path / "c")
  with pytest.raises(PassageFormatError, match="compressed"):
    PassageStore(_write(tmp_path / "c.tsv.gz", "x"), cache_dir=tmp_path / "c")
  with pytest.raises(FileNotFoundError):
    PassageStore(tmp_path / "missing.tsv")


def test_beir_jsonl(tmp_path: pathlib.Path) -> None:
  rows = [{"_id": "d1", "title": "Über", "text": "naïve text\twith tab"},
          {"_id": "d2", "title": "", "text": "no title", "metadata": {}},
          {"id": 3, "title": "Int id", "text": "three"}]
  path = _write(tmp_path / "corpus.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
  store = PassageStore(path, cache_dir=tmp_path / "c")
  assert store.kind == "jsonl"
  assert store.get(["3", "d1", "d2"]) == [("Int id", "three"), ("Über", "naïve text\twith tab"),
                                          ("", "no title")]
  bad = _write(tmp_path / "bad.jsonl", '{"_id": "a", "text": "x"}\n{not json}\n')
  with pytest.raises(PassageFormatError, match=r"bad.jsonl:2: malformed JSON"):
    PassageStore(bad, cache_dir=tmp_path / "c")


def test_cache_is_reused_and_invalidated(tmp_path: pathlib.Path) -> None:
  path = _write(tmp_path / "psgs.tsv", DPR_TSV)
  cache = tmp_path / "cache"
  first = PassageStore(path, cache_dir=cache)
  assert first.built
  second = PassageStore(path, cache_dir=cache)
  assert not second.built and second.index_dir == first.index_dir
  assert second.get(["10"]) == [("Ten", "Ten text, with comma")]
  # The cache holds exactly one finished index, no temp leftovers.
  assert [p.name for p in cache.iterdir()] == [first.index_dir.name]
  offsets = np.load(first.index_dir / "offsets.npy")
  assert offsets.dtype == np.int64 and offsets.shape == (5,)

  # Same size, new content and mtime: rebuilt, old index removed.
  _write(path, DPR_TSV.replace("Second passage text", "Changed passage text"))
  st = path.stat()
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
  third = PassageStore(path, cache_dir=cache)
  assert third.built and third.index_dir != first.index_dir
  assert third.get(["2"]) == [("Title two", "Changed passage text")]
  assert [p.name for p in cache.iterdir()] == [third.index_dir.name]

  # A corrupt (half-written) index is rebuilt rather than trusted.
  (third.index_dir / "meta.json").write_text("{")
  fourth = PassageStore(path, cache_dir=cache)
  assert fourth.built and fourth.get(["2"]) == third.get(["2"])


def test_default_cache_dir_is_bpr_cache_dir(tmp_path: pathlib.Path, monkeypatch) -> None:
  monkeypatch.setenv("BPR_CACHE_DIR", str(tmp_path / "cache"))
  path = _write(tmp_path / "psgs.tsv", DPR_TSV)
  store = PassageStore(path)
  assert store.index_dir.parent == tmp_path / "cache" / "passages"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "psgs.tsv"]  # nothing beside the file


def test_concurrent_reads(tmp_path: pathlib.Path) -> None:
  n = 2000
  lines = ["id\ttext\ttitle"] + [f"{i}\ttext of passage {i}\tTitle {i}" for i in range(n)]
  store = PassageStore(_write(tmp_path / "p.tsv", "\n".join(lines) + "\n"), cache_dir=tmp_path / "c")
  errors: list[str] = []

  def worker(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(50):
      ids = [str(i) for i in rng.integers(0, n, size=8)]
      for pid, (title, text) in zip(ids, store.get(ids)):
        if title != f"Title {pid}" or text != f"text of passage {pid}":
          errors.append(pid)

  threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors


def test_scifact_corpus(scifact_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
  """The real BEIR SciFact corpus: every record is found and matches json parsing."""
  corpus = scifact_dir / "corpus.jsonl"
  store = PassageStore(corpus, cache_dir=tmp_path / "c")
  records = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
  assert len(store) == len(records)
  sample = records[::97] + records[-1:]
  got = store.get([r["_id"] for r in sample])
  assert got == [(r["title"], r["text"]) for r in sample]


@pytest.mark.parametrize("text", [
    DPR_TSV,
    "title\tid\ttext\nT1\tp1\tx1\nT2\tp2\t\"quoted \"\"x\"\"\"\n",  # header in another order
    "7\tseven\tSeven\n8\teight\tEight\n",  # no header
    "\ufeffid\ttext\ttitle\n\n1\ta\tA\n",  # byte-order mark, blank line
    "\n\nid\ttext\ttitle\textra\n5\tfive\tFive\tjunk\n",  # header after blank lines, extra column
])
def test_same_rows_as_the_encode_reader(tmp_path: pathlib.Path, text: str) -> None:
  """Row r of the store is passage r of bpr_jax.data.passages (what encode and the index use)."""
  from bpr_jax.data.passages import count_passages, iter_passages  # pylint: disable=import-outside-toplevel
  path = _write(tmp_path / "p.tsv", text)
  store = PassageStore(path, cache_dir=tmp_path / "c")
  passages = list(iter_passages(path))
  assert len(store) == len(passages) == count_passages(path)
  assert [store.id_at(r) for r in range(len(store))] == [p.id for p in passages]
  assert store.get_rows(range(len(store))) == [(p.title, p.text) for p in passages]


@pytest.mark.parametrize("text,message", [
    ("id\ttext\ttitle\n1\ttwo fields\n", "expected 3 tab-separated fields"),
    ("id\ttext\ttitle\n \tno id\tT\n", "empty passage id"),
    ("id\ttext\n1\tx\n", "must name the columns"),
])
def test_same_errors_as_the_encode_reader(tmp_path: pathlib.Path, text: str, message: str) -> None:
  from bpr_jax.data.examples import DataError  # pylint: disable=import-outside-toplevel
  from bpr_jax.data.passages import iter_passages  # pylint: disable=import-outside-toplevel
  path = _write(tmp_path / "p.tsv", text)
  with pytest.raises(PassageFormatError, match=message):
    PassageStore(path, cache_dir=tmp_path / "c")
  with pytest.raises(DataError, match=message):
    list(iter_passages(path))
