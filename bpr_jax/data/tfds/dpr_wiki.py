"""TFDS builder `dpr_wiki`: DPR's Wikipedia passages (psgs_w100.tsv, ~21M rows).

The TSV (`id<TAB>text<TAB>title`, plain or .gz) is streamed once; passages
keep their file order and `index` is the 0-based row number, so the row
number of an encoded passage maps back to its DPR id.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from bpr_jax.data.passage_files import iter_passage_file
from bpr_jax.data.tfds import _common


@dataclasses.dataclass
class DprWikiConfig(tfds.core.BuilderConfig):
  """Which passage file to read."""
  filename: str = "psgs_w100.tsv.gz"
  url: str = f"{_common.DPR_URL}/wikipedia_split/psgs_w100.tsv.gz"


class DprWiki(tfds.core.GeneratorBasedBuilder):
  """Wikipedia (2018-12-20) split into 100-word passages, as used by DPR and BPR."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _common.MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = [DprWikiConfig(name="psgs_w100", description="DPR's 21M Wikipedia passages.")]

  def __init__(self, **kwargs):
    super().__init__(**_common.default_builder_kwargs(kwargs))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="DPR Wikipedia passages (id, text, title).",
        features=tfds.features.FeaturesDict({
            "index": tfds.features.Scalar(dtype=np.int64),
            "passage_id": tfds.features.Text(),
            "title": tfds.features.Text(),
            "text": tfds.features.Text(),
        }),
        homepage="https://github.com/facebookresearch/DPR",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    return {"train": self._generate_examples(_common.resolve(dl_manager, cfg.filename, cfg.url))}

  def _generate_examples(self, path: str):
    for index, p in enumerate(iter_passage_file(path)):
      yield index, {"index": index, "passage_id": p.id, "title": p.title, "text": p.text}
