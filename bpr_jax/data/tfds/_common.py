"""Helpers shared by the DPR TFDS builders."""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

DPR_URL = "https://dl.fbaipublicfiles.com/dpr"
FILE_FORMAT = "array_record"

MANUAL_INSTRUCTIONS = """\
Offline use: put the DPR files (from https://dl.fbaipublicfiles.com/dpr/..., as
named in the builder, gzipped or not) into the manual dir
(`--manual_dir` / DownloadConfig(manual_dir=...)). Files missing there are
downloaded from their DPR URL.
"""


def passage_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "passage_id": tfds.features.Text(),
      "title": tfds.features.Text(),
      "text": tfds.features.Text(),
  })


def manual_file(dl_manager, filename: str) -> str | None:
  """`filename` (or it without/with `.gz`) in the manual dir, if there is one."""
  try:
    manual = dl_manager.manual_dir
  except (AssertionError, ValueError):
    return None
  stem = filename[:-3] if filename.endswith(".gz") else filename
  for name in (filename, stem, stem + ".gz"):
    path = os.path.join(os.fspath(manual), name)
    if os.path.isfile(path):
      return path
  return None


def resolve(dl_manager, filename: str, url: str) -> str:
  """A local path for a DPR file: the manual dir's copy, else a download."""
  path = manual_file(dl_manager, filename)
  if path is not None:
    return path
  return os.fspath(dl_manager.download(url))


def default_builder_kwargs(kwargs: dict) -> dict:
  """Builder kwargs with array_record as the default file format."""
  kwargs.setdefault("file_format", FILE_FORMAT)
  return kwargs
