"""Tests for the built-in tiny dataset (bpr_jax.data.tiny)."""
import ast
import hashlib
import pathlib

from bpr_jax.data.dpr import DprJsonSource, iter_qas
from bpr_jax.data.passages import iter_passages
from bpr_jax.data.tiny import make_tiny_dataset


def _digest(paths):
  h = hashlib.sha1()
  for key in ("train", "dev", "passages", "qas"):
    h.update(pathlib.Path(paths[key]).read_bytes())
  h.update((pathlib.Path(paths["vocab_dir"]) / "vocab.txt").read_bytes())
  return h.hexdigest()


def test_tiny_dataset(tmp_path):
  paths = make_tiny_dataset(tmp_path / "a")
  assert set(paths) == {"train", "dev", "passages", "qas", "vocab_dir"}
  train, dev = DprJsonSource(paths["train"]), DprJsonSource(paths["dev"])
  assert len(train) == 512 and len(dev) == 64
  passages = {p.id: p for p in iter_passages(paths["passages"])}
  assert len(passages) == 400
  vocab = (pathlib.Path(paths["vocab_dir"]) / "vocab.txt").read_text().split("\n")[:-1]
  assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(set(vocab)) == len(vocab)
  words = set(vocab)
  for src in (train, dev):
    for ex in src:
      assert ex.positives and ex.hard_negatives and ex.answers
      assert set(ex.question.split()) <= words
      for p in ex.positives + ex.hard_negatives + ex.negatives:
        assert passages[p.id] == p and set((p.title + " " + p.text).split()) <= words
      for p in ex.positives:
        assert any(a in p.text for a in ex.answers)
      for p in ex.hard_negatives + ex.negatives:
        assert not any(a == p.title for a in ex.answers)
      for p in ex.hard_negatives:  # shares some of the named attributes
        assert set(p.text.split()) & set(ex.question.split()) - {"is", "the", "from", "a", "?", "to", "eat"}
  train_questions = {e.question for e in train}
  assert not train_questions & {e.question for e in dev}
  qas = list(iter_qas(paths["qas"]))
  assert [(q, tuple(a)) for _, q, a in qas] == [(e.question, e.answers) for e in dev]
  ast.literal_eval(pathlib.Path(paths["qas"]).read_text().split("\t")[1].split("\n")[0])


def test_tiny_is_deterministic(tmp_path):
  a = make_tiny_dataset(tmp_path / "a", seed=3, num_train=40, num_dev=8, num_passages=60)
  b = make_tiny_dataset(tmp_path / "b", seed=3, num_train=40, num_dev=8, num_passages=60)
  c = make_tiny_dataset(tmp_path / "c", seed=4, num_train=40, num_dev=8, num_passages=60)
  assert _digest(a) == _digest(b) != _digest(c)


def test_tiny_vocab_loads_in_transformers(tmp_path):
  from transformers import BertTokenizerFast
  paths = make_tiny_dataset(tmp_path)
  tok = BertTokenizerFast.from_pretrained(paths["vocab_dir"])
  assert tok.pad_token_id == 0 and tok.unk_token_id == 1 and tok.cls_token_id == 2 and tok.sep_token_id == 3
  ex = DprJsonSource(paths["train"])[0]
  ids = tok(ex.question, ex.positives[0].title + " " + ex.positives[0].text)["input_ids"]
  assert tok.unk_token_id not in ids and ids[0] == tok.cls_token_id
