"""WordPiece tokenisation of questions and passages in the DPR/BPR input format.

Questions:  [CLS] question [SEP]
Passages:   [CLS] title [SEP] text [SEP]   (token types 0 ... 0 1 ... 1)
            [CLS] text [SEP]               when the title is empty

Everything is padded to a fixed `max_length` and returned as int32 numpy arrays;
`bpr_jax.data.token_cache` keeps these rows unpadded, made once, and pads each
batch to its own bucketed length.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import numpy as np

KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _load_hf_tokenizer(path: pathlib.Path) -> Any:
  """A transformers fast BERT tokenizer from a dir (transformers 4 or 5)."""
  import transformers
  has_config = (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
  if has_config:
    return transformers.AutoTokenizer.from_pretrained(str(path))
  if (path / "vocab.txt").is_file():
    return transformers.BertTokenizerFast.from_pretrained(str(path))
  raise FileNotFoundError(f"no tokenizer.json, tokenizer_config.json or vocab.txt in {path}")


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
  if isinstance(texts, str):
    raise TypeError(f"{what}: expected a sequence of strings, got one string")
  out = list(texts)
  for i, text in enumerate(out):
    if not isinstance(text, str):
      raise TypeError(f"{what}[{i}]: expected a string, got {type(text).__name__}")
  return out


def _check_max_length(max_length: int) -> None:
  if max_length < 3:
    raise ValueError(f"max_length must be at least 3, got {max_length}")


def normalize_question(text: str) -> str:
  """DPR's and BPR's question normalisation: a trailing "?" is dropped (a lone "?" is kept).

  Applied by `Tokenizer.questions`, so training, question encoding, evaluation and
  serving all see the same text.
  """
  if text.endswith("?") and text[:-1].strip():
    return text[:-1]
  return text


class Tokenizer:
  """Wraps a transformers BERT tokenizer; returns fixed-length int32 numpy batches."""

  def __init__(self, hf_tokenizer: Any):
    self.hf = hf_tokenizer
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is not None:  # tokenizer.json may fix padding / truncation (MiniLM: 128)
      backend.no_padding()
      backend.no_truncation()
    if hf_tokenizer.pad_token_id is None:
      raise ValueError("tokenizer has no pad token")
    self.vocab_size: int = len(hf_tokenizer)
    self.pad_token_id: int = int(hf_tokenizer.pad_token_id)
    self.cls_token_id: int = int(hf_tokenizer.cls_token_id)
    self.sep_token_id: int = int(hf_tokenizer.sep_token_id)

  @classmethod
  def from_dir(cls, path: str | os.PathLike) -> "Tokenizer":
    """Loads tokenizer.json / tokenizer_config.json, or a bare vocab.txt, from a dir."""
    path = pathlib.Path(path)
    if not path.is_dir():
      raise FileNotFoundError(f"tokenizer directory not found: {path}")
    return cls(_load_hf_tokenizer(path))

  def save(self, out_dir: str | os.PathLike) -> None:
    """Writes the tokenizer files (loadable by `from_dir` and AutoTokenizer)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    self.hf.save_pretrained(str(out_dir))

  def _encode(self, first: list[str], second: list[str] | None, max_length: int,
              truncation: str | bool) -> dict[str, np.ndarray]:
    enc = self.hf(first, second, max_length=max_length, padding="max_length",
                  truncation=truncation, return_token_type_ids=True,
                  return_attention_mask=True)
    return {k: np.asarray(enc[k], dtype=np.int32).reshape(len(first), max_length) for k in KEYS}

  def questions(self, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """[CLS] question [SEP], padded/truncated to max_length: int32 [B, max_length] arrays."""
    _check_max_length(max_length)
    texts = _check_texts(texts, "questions")
    for i, text in enumerate(texts):
      if not text.strip():
        raise ValueError(f"question {i} is empty")
    texts = [normalize_question(t) for t in texts]
    if not texts:
      return {k: np.zeros((0, max_length), np.int32) for k in KEYS}
    return self._encode(texts, None, max_length, True)

  def passages(self, titles: Sequence[str], texts: Sequence[str],
               max_length: int) -> dict[str, np.ndarray]:
    """[CLS] title [SEP] text [SEP] (types 0 / 1), truncating the text side first."""
    _check_max_length(max_length)
    titles = _check_texts(titles, "titles")
    texts = _check_texts(texts, "texts")
    if len(titles) != len(texts):
      raise ValueError(f"got {len(titles)} titles but {len(texts)} texts")
    out = {k: np.full((len(texts), max_length), 0, np.int32) for k in KEYS}
    out["input_ids"][:] = self.pad_token_id
    with_title = [i for i, t in enumerate(titles) if t.strip()]
    without = [i for i, t in enumerate(titles) if not t.strip()]
    if without:
      self._put(out, without, self._encode([texts[i] for i in without], None, max_length, True))
    if with_title:
      self._put(out, with_title, self._pairs([titles[i] for i in with_title],
                                             [texts[i] for i in with_title], max_length))
    return out

  def _pairs(self, titles: list[str], texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """Title/text pairs; rows whose title alone is too long truncate both sides."""
    try:
      return self._encode(titles, texts, max_length, "only_second")
    except Exception:  # tokenizers raises a plain Exception for too-long titles
      rows = []
      for title, text in zip(titles, texts):
        try:
          rows.append(self._encode([title], [text], max_length, "only_second"))
        except Exception:
          rows.append(self._encode([title], [text], max_length, "longest_first"))
      return {k: np.concatenate([r[k] for r in rows]) for k in KEYS}

  @staticmethod
  def _put(out: dict[str, np.ndarray], rows: list[int], enc: dict[str, np.ndarray]) -> None:
    for k in KEYS:
      out[k][rows] = enc[k]
