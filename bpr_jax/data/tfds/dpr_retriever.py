"""TFDS builder `dpr_retriever`: DPR bi-encoder training data (NQ, TriviaQA).

Configs `nq` and `tqa`; splits `train` and `dev`, from DPR's
biencoder-{nq,trivia}-{train,dev}.json(.gz). Records keep their file order
(shuffling is disabled; the example's `index` is its record number) and
records without a positive passage (present in DPR's TriviaQA files) are
skipped and logged, as DPR's own loader does.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from bpr_jax.data.dpr import iter_dpr_examples
from bpr_jax.data.examples import Passage
from bpr_jax.data.tfds import _common

_FILES = {
    "nq": {"train": "biencoder-nq-train.json.gz", "dev": "biencoder-nq-dev.json.gz"},
    "tqa": {"train": "biencoder-trivia-train.json.gz", "dev": "biencoder-trivia-dev.json.gz"},
}


@dataclasses.dataclass
class DprRetrieverConfig(tfds.core.BuilderConfig):
  """Which DPR retriever files to read."""
  files: dict = dataclasses.field(default_factory=dict)
  skip_invalid: bool = True


def _ctx(p: Passage) -> dict:
  return {"passage_id": p.id, "title": p.title, "text": p.text}


class DprRetriever(tfds.core.GeneratorBasedBuilder):
  """DPR retriever training data with positives, negatives and hard negatives."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _common.MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = [
      DprRetrieverConfig(name="nq", description="Natural Questions (DPR retriever split).",
                         files=_FILES["nq"]),
      DprRetrieverConfig(name="tqa", description="TriviaQA (DPR retriever split).",
                         files=_FILES["tqa"]),
  ]

  def __init__(self, **kwargs):
    super().__init__(**_common.default_builder_kwargs(kwargs))

  def _info(self) -> tfds.core.DatasetInfo:
    ctxs = tfds.features.Sequence(_common.passage_features())
    return tfds.core.DatasetInfo(
        builder=self,
        description="DPR bi-encoder training data (Karpukhin et al., 2020).",
        features=tfds.features.FeaturesDict({
            "index": tfds.features.Scalar(dtype=np.int64),
            "qid": tfds.features.Text(),
            "question": tfds.features.Text(),
            "answers": tfds.features.Sequence(tfds.features.Text()),
            "positive_ctxs": ctxs,
            "negative_ctxs": ctxs,
            "hard_negative_ctxs": ctxs,
        }),
        homepage="https://github.com/facebookresearch/DPR",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    splits = {}
    for split, filename in self.builder_config.files.items():
      path = _common.resolve(dl_manager, filename, f"{_common.DPR_URL}/data/retriever/{filename}")
      splits[split] = self._generate_examples(path)
    return splits

  def _generate_examples(self, path: str):
    stats: dict = {}
    for index, ex in iter_dpr_examples(path, skip_invalid=self.builder_config.skip_invalid, stats=stats):
      yield index, {
          "index": index,
          "qid": ex.qid,
          "question": ex.question,
          "answers": list(ex.answers),
          "positive_ctxs": [_ctx(p) for p in ex.positives],
          "negative_ctxs": [_ctx(p) for p in ex.negatives],
          "hard_negative_ctxs": [_ctx(p) for p in ex.hard_negatives],
      }
    if stats.get("num_skipped"):
      logging.warning("%s: skipped %d invalid records", path, stats["num_skipped"])
