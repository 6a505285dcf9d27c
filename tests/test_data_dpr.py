"""Tests for bpr_jax.data.examples, bpr_jax.data.dpr and bpr_jax.data.passages."""
import json
import os
import pathlib
import pickle

import pytest

from bpr_jax.data import dpr
from bpr_jax.data.dpr import DprJsonSource, _ArrayScanner, iter_qas, write_dpr_json
from bpr_jax.data.examples import DataError, Example, ExampleSource, Passage
from bpr_jax.data.passages import count_passages, iter_passages

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def test_small_file_examples():
  src = DprJsonSource(FIXTURES / "dpr_small.json")
  assert isinstance(src, ExampleSource)
  assert len(src) == 4 and src.num_skipped == 0 and src.name == "dpr_small.json"
  ex = src[0]
  assert isinstance(ex, Example)
  assert ex.question == "who wrote the song blue moon"
  assert ex.answers == ("Richard Rodgers", "Lorenz Hart")
  assert ex.positives[0] == Passage(
      id="1001", title="Blue Moon (1934 song)",
      text="\"Blue Moon\" is a popular song written by Richard Rodgers and Lorenz Hart in 1934.")
  assert [p.id for p in ex.hard_negatives] == ["1003", "1004"]
  assert [p.id for p in ex.negatives] == ["1002"]
  assert src[1].positives[0].id == "2001"  # psg_id, an integer
  assert src[2].positives[0].id == "" and len(src[2].positives) == 2  # no id at all
  assert "Léonardo" in src[-1].positives[0].text and "–" in src[3].question
  with pytest.raises(IndexError):
    src[4]
  assert [e.question for e in src] == [src[i].question for i in range(4)]


def test_pickle_and_max_examples():
  src = DprJsonSource(FIXTURES / "dpr_small.json", max_examples=2)
  assert len(src) == 2
  clone = pickle.loads(pickle.dumps(src))
  assert clone[1] == src[1]


def test_invalid_records_raise_with_file_and_record():
  path = FIXTURES / "dpr_invalid.json"
  with pytest.raises(DataError) as err:
    DprJsonSource(path)
  msg = str(err.value)
  assert msg.startswith(f"{path}:record 1 (question 'what is the tallest mountain")
  assert "no positive passage" in msg and "\n" not in msg


def test_skip_invalid_counts():
  src = DprJsonSource(FIXTURES / "dpr_invalid.json", skip_invalid=True)
  assert len(src) == 2 and src.num_skipped == 3
  assert [src[0].question, src[1].question] == ["who wrote the song blue moon", "what color is the sky"]


@pytest.mark.parametrize("text,expected", [
    ('[{"question": "a", "positive_ctxs": [{"text": "x"}]}, {"question": "b" "x"}]', "record 1: malformed JSON"),
    ('[{"question": "a", "positive_ctxs": [{"text": "x"}]}, {"question": "b', "record 1: malformed JSON"),
    ('{"question": "a"}', "expected a JSON array"),
    ('[{"question": "a", "positive_ctxs": [{"text": "x"}]} {"question": "b"}]', "record 1: expected ','"),
    ('[{"question": "a", "positive_ctxs": [{"text": "x"}]}', "after record 0, found end of file"),
    ('[{"question": 3, "positive_ctxs": [{"text": "x"}]}]', "record 0: 'question' is a int"),
    ('[{"positive_ctxs": [{"text": "x"}]}]', "record 0: missing 'question'"),
    ('[{"question": "q", "answers": "a", "positive_ctxs": [{"text": "x"}]}]', "'answers' must be a list"),
    ('[{"question": "q", "positive_ctxs": {"text": "x"}}]', "'positive_ctxs' is a dict"),
    ('[{"question": "q", "positive_ctxs": [{"text": "x", "title": 5}]}]', "positive_ctxs[0].title"),
    ('[{"question": "q", "positive_ctxs": [{"text": "x"}], "hard_negative_ctxs": ["s"]}]', "hard_negative_ctxs[0] is a str"),
    ('[1]', "record 0: record is a int"),
    ('[]  x', "unexpected data after"),
])
def test_malformed(tmp_path, text, expected):
  path = tmp_path / "bad.json"
  path.write_text(text)
  with pytest.raises(DataError, match=None) as err:
    DprJsonSource(path)
  assert str(err.value).startswith(str(path) + ":"), str(err.value)
  assert expected in str(err.value), str(err.value)


def test_empty_array_and_gz(tmp_path):
  (tmp_path / "e.json").write_text(" [ ] \n")
  assert len(DprJsonSource(tmp_path / "e.json")) == 0
  (tmp_path / "x.json.gz").write_bytes(b"")
  with pytest.raises(DataError, match="gunzip"):
    DprJsonSource(tmp_path / "x.json.gz")


def _records(n):
  return [{"question": f"question number {i} \u00e9\u2603 \"quoted\" \\ back", "answers": [str(i)],
           "positive_ctxs": [{"title": f"t{i}", "text": "p" * (i % 50), "passage_id": str(i)}],
           "negative_ctxs": [], "hard_negative_ctxs": [{"title": "h", "text": "hard", "psg_id": i}]}
          for i in range(n)]


@pytest.mark.parametrize("chunk", [1, 3, 17, 4096])
def test_scanner_chunk_boundaries(tmp_path, chunk):
  recs = _records(60)
  path = tmp_path / "r.json"
  write_dpr_json(path, recs)
  raw = path.read_bytes()
  out = list(_ArrayScanner(str(path), chunk))
  assert len(out) == 60
  for i, start, end, value, error in out:
    assert error is None and value == recs[i] and json.loads(raw[start:end]) == recs[i]


def test_bom_and_index_cache(tmp_path):
  recs = _records(5)
  path = tmp_path / "bom.json"
  path.write_bytes(b"\xef\xbb\xbf" + json.dumps(recs, indent=2).encode())
  src = DprJsonSource(path, cache_dir=tmp_path / "cache")
  assert len(src) == 5 and src[3].question == recs[3]["question"]
  assert len(list((tmp_path / "cache").iterdir())) == 1
  again = DprJsonSource(path, cache_dir=tmp_path / "cache")
  assert again[4] == src[4]


def _make_big(path, target_bytes):
  """A DPR-shaped file of about `target_bytes` with realistic context lists."""
  words = "the of and in to a was is for on as by with he that at from his it an".split()
  text = " ".join(words[i % len(words)] for i in range(100))
  with open(path, "w", encoding="utf-8") as f:
    f.write("[\n")
    i = 0
    while f.tell() < target_bytes:
      ctx = [{"title": f"Title {i} {j}", "text": text, "score": 1.0, "passage_id": str(i * 100 + j)} for j in range(30)]
      rec = {"question": f"question {i}", "answers": ["a"], "positive_ctxs": ctx[:1],
             "negative_ctxs": ctx[1:15], "hard_negative_ctxs": ctx[15:]}
      if i:
        f.write(",\n")
      json.dump(rec, f)
      i += 1
    f.write("\n]\n")
  return i


# Run in a fresh process, so its peak RSS (ru_maxrss) starts at the import footprint: this
# process's lifetime peak may already be far above anything DprJsonSource adds.
_STREAM_CHILD = """
import json, resource, sys, time
from bpr_jax.data.dpr import DprJsonSource
path, n = sys.argv[1], int(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
src = DprJsonSource(path)
elapsed = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ok = (len(src) == n and src[n - 1].question == f"question {n - 1}" and len(src[n // 2].hard_negatives) == 15)
print(json.dumps({"elapsed": elapsed, "rss_growth_mb": (after - before) / 1024, "ok": ok}))
"""


def test_streams_50mb_fast_with_small_memory(tmp_path):
  import subprocess
  import sys
  path = tmp_path / "big.json"
  n = _make_big(path, 50 << 20)
  proc = subprocess.run([sys.executable, "-c", _STREAM_CHILD, str(path), str(n)], capture_output=True,
                        text=True, timeout=300, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  size_mb = os.path.getsize(path) / 2**20
  print(f"streamed {size_mb:.0f} MB ({n} records) in {got['elapsed']:.2f}s; "
        f"peak RSS growth {got['rss_growth_mb']:.0f} MB")
  assert got["ok"]
  assert got["elapsed"] < 20, got
  assert got["rss_growth_mb"] < 120, got  # ~45 MB; also holding json.load of the file: ~140 MB


def test_iter_passages_tsv_quoting_and_start():
  path = FIXTURES / "psgs_small.tsv"
  ps = list(iter_passages(path))
  assert len(ps) == 12 == count_passages(path)
  assert ps[0] == Passage(id="1", title="Aaron",
                          text='Aaron Aaron ( or ; "Ahärôn") is a prophet, high priest, and the brother of Moses.')
  assert [p.id for p in iter_passages(path, start=10)] == ["11", "12"]


def test_iter_passages_errors(tmp_path):
  bad = tmp_path / "p.tsv"
  bad.write_text("id\ttext\ttitle\n1\tgood\tT\n2\tno title\n")
  with pytest.raises(DataError, match=r"p\.tsv:3: expected 3 tab-separated"):
    list(iter_passages(bad))
  bad.write_text("pid\tbody\n")
  with pytest.raises(DataError, match=r"p\.tsv:1: expected header"):
    list(iter_passages(bad))
  jl = tmp_path / "c.jsonl"
  jl.write_text('{"_id": "a", "title": "", "text": "x"}\n\n{"_id": "b", "text": 1}\n')
  with pytest.raises(DataError, match=r"c\.jsonl:3: 'text'"):
    list(iter_passages(jl))
  assert count_passages(jl) == 2


def test_iter_passages_gz_and_sniffing(tmp_path):
  import gzip
  src = (FIXTURES / "psgs_small.tsv").read_bytes()
  (tmp_path / "p.tsv.gz").write_bytes(gzip.compress(src))
  (tmp_path / "p.txt").write_bytes(src)
  assert [p.id for p in iter_passages(tmp_path / "p.tsv.gz")] == [str(i) for i in range(1, 13)]
  assert count_passages(tmp_path / "p.tsv.gz") == 12
  assert len(list(iter_passages(tmp_path / "p.txt"))) == 12


def test_iter_qas(tmp_path):
  rows = list(iter_qas(FIXTURES / "nq_qas_small.csv"))
  assert rows[0] == (1, "who wrote the song blue moon", ["Richard Rodgers", "Lorenz Hart"])
  assert rows[-1][2] == ["Leonardo da Vinci"] and len(rows) == 5
  bad = tmp_path / "q.csv"
  bad.write_text("q1\t['a']\nq2\tnot a list\n")
  with pytest.raises(DataError, match=r"q\.csv:2: bad answers"):
    list(iter_qas(bad))


def test_example_record_roundtrip(tmp_path):
  src = DprJsonSource(FIXTURES / "dpr_small.json")
  path = tmp_path / "copy.json"
  assert write_dpr_json(path, (dpr.example_to_record(e) for e in src)) == 4
  assert list(DprJsonSource(path)) == list(src)
