"""Tokenizer: DPR/BPR question and passage formats on the MiniLM vocabulary."""
import shutil

import numpy as np
import pytest
import transformers

from bpr_jax.tokenization import Tokenizer

KEYS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def tok(minilm_dir):
  return Tokenizer.from_dir(minilm_dir)


@pytest.fixture(scope="module")
def hf_tok(minilm_dir):
  t = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
  t.backend_tokenizer.no_padding()
  t.backend_tokenizer.no_truncation()
  return t


def _unpadded(batch, row):
  n = int(batch["attention_mask"][row].sum())
  return {k: batch[k][row, :n].tolist() for k in KEYS}


def test_questions_padded_to_max_length(tok, hf_tok):
  assert tok.vocab_size == 30522 and tok.pad_token_id == 0
  batch = tok.questions(["Who wrote BPR?", "what is a binary code"], max_length=200)
  for k in KEYS:
    assert batch[k].shape == (2, 200) and batch[k].dtype == np.int32
  row = _unpadded(batch, 0)
  assert row["input_ids"] == hf_tok("Who wrote BPR")["input_ids"]  # trailing "?" dropped (DPR)
  assert row["input_ids"][0] == hf_tok.cls_token_id and row["input_ids"][-1] == hf_tok.sep_token_id
  assert (batch["input_ids"][0, len(row["input_ids"]):] == 0).all()
  assert (batch["token_type_ids"] == 0).all()
  # The tokenizer.json fixes padding to 128; it must not leak through.
  assert tok.questions(["a"], max_length=8)["input_ids"].shape == (1, 8)


def test_question_truncation_and_empty(tok):
  batch = tok.questions(["word " * 50], max_length=10)
  assert batch["attention_mask"].sum() == 10
  assert batch["input_ids"][0, -1] == tok.sep_token_id
  with pytest.raises(ValueError, match="question 1 is empty"):
    tok.questions(["fine", "   "], max_length=8)
  assert tok.questions([], max_length=8)["input_ids"].shape == (0, 8)


def test_passage_pair_format_matches_transformers(tok, hf_tok):
  titles = ["Binary Passage Retriever", "Aaron"]
  texts = ["BPR learns hash codes for efficient retrieval.", "Aaron is a prophet."]
  batch = tok.passages(titles, texts, max_length=32)
  for i in range(2):
    expected = hf_tok(titles[i], texts[i])
    row = _unpadded(batch, i)
    assert row["input_ids"] == expected["input_ids"]
    assert row["token_type_ids"] == expected["token_type_ids"]
    n_title = len(hf_tok(titles[i])["input_ids"])  # [CLS] title [SEP]
    assert row["token_type_ids"][:n_title] == [0] * n_title
    assert set(row["token_type_ids"][n_title:]) == {1}
  assert (batch["token_type_ids"][:, -1] == 0).all()  # padding has type 0


def test_passage_empty_title_and_truncation(tok, hf_tok):
  batch = tok.passages(["", "Title"], ["just the text", "long text " * 40], max_length=16)
  assert _unpadded(batch, 0)["input_ids"] == hf_tok("just the text")["input_ids"]
  assert set(_unpadded(batch, 0)["token_type_ids"]) == {0}
  row = _unpadded(batch, 1)
  assert len(row["input_ids"]) == 16
  title_ids = hf_tok("Title")["input_ids"]
  assert row["input_ids"][:len(title_ids)] == title_ids  # the title is kept whole
  assert row["input_ids"][-1] == tok.sep_token_id
  # A title longer than max_length still gives a valid row.
  long_title = tok.passages(["very long title " * 20], ["text"], max_length=12)
  assert long_title["attention_mask"].sum() == 12
  with pytest.raises(ValueError, match="2 titles but 1 texts"):
    tok.passages(["a", "b"], ["c"], max_length=8)


def test_vocab_only_dir_and_save(tmp_path, tok, minilm_dir):
  vocab_dir = tmp_path / "vocab"
  vocab_dir.mkdir()
  shutil.copy(minilm_dir / "vocab.txt", vocab_dir / "vocab.txt")
  bare = Tokenizer.from_dir(vocab_dir)
  assert bare.vocab_size == tok.vocab_size
  args = (["Title"], ["Some Text here"], 24)
  for k in KEYS:
    np.testing.assert_array_equal(bare.passages(*args)[k], tok.passages(*args)[k])
  saved = tmp_path / "saved"
  tok.save(saved)
  again = Tokenizer.from_dir(saved)
  for k in KEYS:
    np.testing.assert_array_equal(again.passages(*args)[k], tok.passages(*args)[k])
  assert again.questions(["a"], max_length=200)["input_ids"].shape == (1, 200)


def test_missing_dir_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    Tokenizer.from_dir(tmp_path / "absent")
  with pytest.raises(FileNotFoundError, match="vocab.txt"):
    Tokenizer.from_dir(tmp_path)


def test_token_tables_give_the_tokenizer_output_at_any_cut(tok, tmp_path):
  from bpr_jax.data import token_cache
  titles = ["Aaron", "", "a title " * 200, "Moses"]  # the third title alone overflows max_length
  texts = ["Aaron is a prophet, high priest, and the brother of Moses.", "no title here",
           "text " * 50, "word " * 300]
  want = tok.passages(titles, texts, 64)
  table = token_cache.tokenize_passages(tok, titles, texts, 64)
  assert table.ids.dtype == np.uint16 and table.lengths.tolist() == want["attention_mask"].sum(1).tolist()
  rows = np.arange(4)
  for length in (64, 96):
    got = table.rows(rows, length)
    for k in KEYS:
      assert got[k].shape == (4, length) and got[k].dtype == np.int32
      np.testing.assert_array_equal(got[k][:, :64], want[k])
      assert not got[k][:, 64:].any()
  short = table.rows(np.asarray([1, 0, 1]), 32)  # any selection, cut to the bucket
  np.testing.assert_array_equal(short["input_ids"], want["input_ids"][[1, 0, 1], :32])
  questions = ["Who wrote BPR?", "what is a binary code"]
  q = token_cache.cached_table(tok, "questions", [questions], 16, tmp_path)
  again = token_cache.cached_table(tok, "questions", [questions], 16, tmp_path)
  for k in KEYS:
    np.testing.assert_array_equal(q.rows(np.arange(2), 16)[k], tok.questions(questions, 16)[k])
    np.testing.assert_array_equal(again.rows(np.arange(2), 16)[k], q.rows(np.arange(2), 16)[k])
  assert len(list(tmp_path.iterdir())) == 1
  token_cache.cached_table(tok, "questions", [questions[:1]], 16, tmp_path)  # other texts: other key
  assert len(list(tmp_path.iterdir())) == 2
