"""Binary passage indexes, one job a file.

  codes_dir.py     the encode output format (shards, chunks, manifests):
                   written by ``bpr_jax.encode``, read by ``load_codes_dir``
  ids.py           passage id arrays (int64 or unicode)
  builders.py      faiss builders: flat, hash, multihash (and ivf, below)
  ivf.py           ivf: binary k-means, the list-order renumbering of the
                   saved file, the memory-mapped list reader
  binary_index.py  ``save_index`` / ``BinaryIndex.load``: the saved folder
  __main__.py      the command: ``python -m bpr_jax.index --codes=C --output=I``

Atomic writes, checksums and ``.npy`` loading live in ``bpr_jax.io``.  The
names below are re-exported so ``from bpr_jax.index import ...`` keeps working.
"""
from bpr_jax.index.binary_index import INDEX_FORMAT, BinaryIndex, build_from_codes_dir, save_index
from bpr_jax.index.builders import (KINDS, MAX_HASH_BITS, build_index, default_hash_bits,
                                    flat_codes_view, index_settings)
from bpr_jax.index.codes_dir import CODES_FORMAT, CodesDir, load_codes_dir
from bpr_jax.index.ids import concat_ids, normalize_ids
from bpr_jax.index.ivf import (DEFAULT_NPROBE, IVFCentroids, IVFListCodes, binary_kmeans,
                               default_nlist, ivf_codes_view, ivf_list_sizes, train_ivf_centroids)
# Re-exported for callers written before bpr_jax.io existed; new code imports bpr_jax.io.
from bpr_jax.io import (atomic_save_npy, atomic_write_json, atomic_write_text, check_file,
                        file_record, load_npy, sha256_file)

__all__ = [
    "INDEX_FORMAT", "BinaryIndex", "build_from_codes_dir", "save_index", "KINDS",
    "MAX_HASH_BITS", "build_index", "default_hash_bits", "flat_codes_view", "index_settings",
    "CODES_FORMAT", "CodesDir", "load_codes_dir", "concat_ids", "normalize_ids",
    "DEFAULT_NPROBE", "IVFCentroids", "IVFListCodes", "binary_kmeans", "default_nlist",
    "ivf_codes_view", "ivf_list_sizes", "train_ivf_centroids", "atomic_save_npy",
    "atomic_write_json", "atomic_write_text", "check_file", "file_record", "load_npy",
    "sha256_file",
]
