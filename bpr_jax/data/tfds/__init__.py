"""TFDS builders for DPR data (array_record, read back with tfds.data_source).

Importing this package registers `dpr_retriever` (configs nq, tqa), `dpr_qas`
(nq, tqa) and `dpr_wiki` (psgs_w100). Building works without TensorFlow:

  builder = tfds.builder("dpr_retriever/nq", data_dir=DIR)   # file_format defaults to array_record
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=MANUAL))
  source = TfdsSource("dpr_retriever/nq", "train", data_dir=DIR)
"""
from bpr_jax.data.tfds.dpr_qas import DprQas
from bpr_jax.data.tfds.dpr_retriever import DprRetriever
from bpr_jax.data.tfds.dpr_wiki import DprWiki
from bpr_jax.data.tfds.source import TfdsSource, decode_example

__all__ = ["DprQas", "DprRetriever", "DprWiki", "TfdsSource", "decode_example"]
