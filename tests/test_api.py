"""The Python API: ``from bpr_jax import Retriever`` on a tiny export, index and passage file
(issue 23 item 3)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bpr_jax import Retriever
from bpr_jax.codes import pack_codes, unpack_codes
from bpr_jax.index import build_from_codes_dir
from bpr_jax.provenance import ProvenanceError
from tests.test_evaluate import _tiny_model
from tests.test_evaluate_checks import _write_codes

N = 40
BITS = 32


@pytest.fixture(scope="module")
def pieces(tmp_path_factory, minilm_dir):
  """Export A, export B (other settings), passages P (N, ids 100..), codes C recorded as made
  from A and P (random codes: distinct scores), index I."""
  root = tmp_path_factory.mktemp("api")
  model_a = _tiny_model(root / "A", minilm_dir, hidden=BITS)
  model_b = root / "B"
  shutil.copytree(model_a, model_b)
  settings = json.loads((model_b / "bpr.json").read_text())
  settings["passage_max_length"] = 30
  (model_b / "bpr.json").write_text(json.dumps(settings))
  ids = [str(100 + i) for i in range(N)]
  passages = root / "psgs.tsv"
  passages.write_text("id\ttext\ttitle\n" + "".join(
      f"{p}\tpassage number {i} holds word{i}\tTitle {i}\n" for i, p in enumerate(ids)))
  codes = np.random.default_rng(0).integers(0, 256, (N, BITS // 8), dtype=np.uint8)
  _write_codes(root / "C", codes, ids, model_a, passages)
  build_from_codes_dir(root / "C", root / "I", "flat")
  return {"root": root, "A": model_a, "B": model_b, "P": passages, "I": root / "I",
          "codes": codes, "ids": ids}


@pytest.fixture(scope="module")
def retriever(pieces):
  return Retriever.load(model=pieces["A"], index=pieces["I"], passages=pieces["P"], l=N,
                        passage_cache_dir=pieces["root"] / "cache")


def _brute_force(e_q, codes, l):
  """Hamming top-l (stable by row), then <e_q, sign(e_p)> best first (stable): (rows, scores)."""
  h = unpack_codes(codes)
  hq = np.where(e_q >= 0, 1.0, -1.0)
  ham = (h.shape[1] - hq @ h.T) / 2
  cand = np.argsort(ham, kind="stable")[:l]
  sc = h[cand] @ e_q
  order = np.argsort(-sc, kind="stable")
  return cand[order], sc[order]


def test_search_returns_passages_ranked_as_two_stage_brute_force(pieces, retriever):
  questions = ["which passage holds word7?", "what is the title of passage 3?"]
  hits = retriever.search(questions, k=3)
  assert len(hits) == 2 and all(len(h) == 3 for h in hits)
  e_q = retriever.encode_questions(questions)
  assert e_q.dtype == np.float32 and e_q.shape == (2, BITS)
  for i, qhits in enumerate(hits):
    for h in qhits:
      assert set(h) == {"id", "title", "text", "score", "row"}
      assert isinstance(h["id"], str) and isinstance(h["score"], float)
      n = pieces["ids"].index(h["id"])
      assert h["title"] == f"Title {n}" and h["text"] == f"passage number {n} holds word{n}"
    scores = [h["score"] for h in qhits]
    assert scores == sorted(scores, reverse=True)
    rows, want = _brute_force(e_q[i], pieces["codes"], l=N)  # l >= N: the exhaustive rerank
    assert np.min(-np.diff(want[:4])) > 1e-4  # distinct scores: the order is defined
    assert [h["id"] for h in qhits] == [pieces["ids"][r] for r in rows[:3]]
    np.testing.assert_allclose(scores, want[:3], rtol=0, atol=1e-4)
  # Without passages: ids and scores only, the same ranking.
  bare = Retriever.load(pieces["A"], pieces["I"], l=N).search(questions, k=3)
  assert [[(h["id"], h["score"]) for h in q] for q in bare] == \
         [[(h["id"], h["score"]) for h in q] for q in hits]
  assert set(bare[0][0]) == {"id", "score", "row"}


def test_small_l_keeps_hamming_candidates(pieces):
  r = Retriever.load(pieces["A"], pieces["I"], l=8)
  q = ["which passage holds word7?"]
  e_q = r.encode_questions(q)[0]
  hits = r.search(q, k=5)[0]
  h = unpack_codes(pieces["codes"])
  ham = (BITS - np.where(e_q >= 0, 1.0, -1.0) @ h.T) / 2
  kth = np.sort(ham)[7]
  assert all(ham[pieces["ids"].index(x["id"])] <= kth for x in hits)
  _, want = _brute_force(e_q, pieces["codes"], l=8)
  if np.sort(ham)[8] > kth:  # no tie at the l-th candidate: the candidate set is defined
    np.testing.assert_allclose([x["score"] for x in hits], want[:5], rtol=0, atol=1e-4)


def test_encoding_from_the_export(retriever):
  titles, texts = ["Title 1", "Title 2"], ["passage number 1", "passage number 2"]
  emb = retriever.encode_passages(titles, texts)
  assert emb.dtype == np.float32 and emb.shape == (2, BITS)
  codes = retriever.encode_codes(titles, texts)
  assert codes.dtype == np.uint8 and codes.shape == (2, BITS // 8)
  np.testing.assert_array_equal(codes, pack_codes(emb))
  np.testing.assert_array_equal(emb, retriever.exported.encode_passages(titles, texts))
  with pytest.raises(ValueError, match="2 titles but 1 texts"):
    retriever.encode_passages(titles, texts[:1])


def test_bad_arguments_are_refused(retriever):
  with pytest.raises(ValueError, match="single string.*\\[question\\]"):
    retriever.search("which passage holds word7?")
  with pytest.raises(ValueError, match="k must be >= 1"):
    retriever.search(["q"], k=0)
  with pytest.raises(ValueError, match="whole number"):
    retriever.search(["q"], k=2.5)
  with pytest.raises(ValueError, match="question 1 is a int"):
    retriever.search(["q", 3], k=1)
  with pytest.raises(ValueError, match="question 0 is empty"):
    retriever.search([" "], k=1)
  assert retriever.search([], k=1) == []
  assert len(retriever.search(["q"], k=N + 5)[0]) == N  # k past the index: every passage


def test_pieces_that_do_not_belong_are_refused_before_the_model_loads(pieces, monkeypatch):
  from bpr_jax import exported_model

  def _reached(*args, **kwargs):
    raise AssertionError("the model was loaded")

  monkeypatch.setattr(exported_model, "load_exported", _reached)
  with pytest.raises(ProvenanceError, match=r"model .*--allow_mismatch"):
    Retriever.load(pieces["B"], pieces["I"], pieces["P"])
  other = pieces["root"] / "other.tsv"
  other.write_text(pieces["P"].read_text().replace("holds", "has"))
  with pytest.raises(ProvenanceError, match="passages"):
    Retriever.load(pieces["A"], pieces["I"], other)
  fewer = pieces["root"] / "fewer.tsv"
  fewer.write_text("".join(pieces["P"].read_text().splitlines(True)[:-1]))
  with pytest.raises(ValueError, match=f"39 passages but index .* has {N}"):
    Retriever.load(pieces["A"], pieces["I"], fewer, allow_mismatch=True,
                   passage_cache_dir=pieces["root"] / "cache")
  with pytest.raises(FileNotFoundError, match="no such folder"):
    Retriever.load(pieces["root"] / "nope", pieces["I"])
  with pytest.raises(FileNotFoundError, match="no such file"):
    Retriever.load(pieces["A"], pieces["I"], pieces["root"] / "nope.tsv")
  monkeypatch.undo()
  r = Retriever.load(pieces["B"], pieces["I"], allow_mismatch=True)
  assert r.mismatched == ["model"]


def test_import_bpr_jax_does_not_import_jax():
  code = "import bpr_jax, sys; print('jax' in sys.modules, bpr_jax.__all__)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["False", "['Retriever']"]
  with pytest.raises(AttributeError, match="no attribute 'Nope'"):
    import bpr_jax
    bpr_jax.Nope  # pylint: disable=pointless-statement
