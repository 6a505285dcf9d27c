"""TFDS builder `dpr_qas`: DPR question/answer files (nq-test.qa.csv layout).

Each line is `question<TAB>['answer', ...]`. Config `nq` has splits train,
dev and test (nq-{split}.qa.csv); config `tqa` reads trivia-{split}.qa.csv.gz.
Rows keep their file order; `line` is the 1-based line number.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from bpr_jax.data.dpr import iter_qas
from bpr_jax.data.tfds import _common


@dataclasses.dataclass
class DprQasConfig(tfds.core.BuilderConfig):
  """Which qas files to read."""
  files: dict = dataclasses.field(default_factory=dict)


class DprQas(tfds.core.GeneratorBasedBuilder):
  """Open-domain QA questions with answer strings, for retrieval evaluation."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _common.MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = [
      DprQasConfig(name="nq", description="Natural Questions (DPR splits).",
                   files={s: f"nq-{s}.qa.csv" for s in ("train", "dev", "test")}),
      DprQasConfig(name="tqa", description="TriviaQA (DPR splits).",
                   files={s: f"trivia-{s}.qa.csv.gz" for s in ("train", "dev", "test")}),
  ]

  def __init__(self, **kwargs):
    super().__init__(**_common.default_builder_kwargs(kwargs))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="DPR question-answer files.",
        features=tfds.features.FeaturesDict({
            "line": tfds.features.Scalar(dtype=np.int64),
            "question": tfds.features.Text(),
            "answers": tfds.features.Sequence(tfds.features.Text()),
        }),
        homepage="https://github.com/facebookresearch/DPR",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    files = self.builder_config.files
    present = {s: _common.manual_file(dl_manager, f) for s, f in files.items()}
    if any(present.values()):  # offline: build the splits found in the manual dir
      return {s: self._generate_examples(p) for s, p in present.items() if p}
    return {s: self._generate_examples(os.fspath(dl_manager.download(f"{_common.DPR_URL}/data/retriever/{f}")))
            for s, f in files.items()}

  def _generate_examples(self, path: str):
    if path.endswith(".gz"):
      with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, os.path.basename(path)[:-3])
        with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
          shutil.copyfileobj(src, dst)
        yield from self._rows(plain, path)
    else:
      yield from self._rows(path, path)

  def _rows(self, path: str, shown: str):
    from bpr_jax.data.examples import DataError  # pylint: disable=import-outside-toplevel
    try:
      for line, question, answers in iter_qas(path):
        yield line, {"line": line, "question": question, "answers": answers}
    except DataError as e:
      raise DataError(str(e).replace(path, shown, 1)) from None
