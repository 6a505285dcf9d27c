"""Builds a binary passage index from an encode output.

Usage::

  python -m bpr_jax.index --codes=C --kind=flat --output=I
      [--hash_bits=B --nflip=F --nhash=H | --nlist=L --nprobe=P --train_size=T] [--code_bits=N]
      [--overwrite]

``C`` is the output folder of ``bpr_jax.encode`` (one shard or many in ``shard_00000/`` ...);
``I`` gets an index folder (``bpr_jax.index.binary_index``) whose ``meta.json`` records its
inputs: the codes, the model and passages they were encoded from, and the settings.
``--code_bits=N`` indexes the first N bits of each code: for a model trained with nested codes
(``loss.nested_bits``), one encode output gives an index at every size the model records; evaluate
and serve read the size from the index.  Run again
with the same inputs, the existing index is reused; with other inputs it is refused unless
``--overwrite``.
"""
from __future__ import annotations

import time
from typing import Sequence

from bpr_jax.index.binary_index import build_from_codes_dir
from bpr_jax.index.builders import KINDS
from bpr_jax.index.ivf import DEFAULT_NPROBE


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("codes", None, "Output folder of bpr_jax.encode (one or many shards).")
  flags.DEFINE_enum("kind", "flat", list(KINDS), "Index kind.")
  flags.DEFINE_string("output", None, "Index output folder.")
  flags.DEFINE_integer("hash_bits", None, "Bits per hash key (<= 64); default from N.")
  flags.DEFINE_integer("nflip", None, "Bit flips probed (default 2 hash, 1 multihash).")
  flags.DEFINE_integer("nhash", None, "Hash tables for multihash (default 4).")
  flags.DEFINE_integer("nlist", None, "ivf inverted lists (default round(4*sqrt(N))).")
  flags.DEFINE_integer("nprobe", None, f"ivf lists probed per question (default {DEFAULT_NPROBE}).")
  flags.DEFINE_integer("train_size", None, "ivf k-means sample (default 64*nlist).")
  flags.DEFINE_integer("code_bits", None, "Index the first N bits of each code: one of the sizes the "
                       "model's bpr.json records (nested_bits and its whole code). Default: the whole code.")
  flags.DEFINE_boolean("verify", True, "Check sha256 of the encode output.")
  flags.DEFINE_boolean("overwrite", False, "Replace an index at --output built from other inputs.")
  flags.mark_flags_as_required(["codes", "output"])


def main(argv: Sequence[str]) -> None:
  from absl import app, flags  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  t0 = time.time()
  reused: list[str] = []
  meta = build_from_codes_dir(f.codes, f.output, f.kind, hash_bits=f.hash_bits,
                              nflip=f.nflip, nhash=f.nhash, nlist=f.nlist, nprobe=f.nprobe,
                              train_size=f.train_size, verify=f.verify, overwrite=f.overwrite,
                              code_bits=f.code_bits, log=reused.append)
  if reused:
    print(reused[0])
    return
  settings = {k: meta[k] for k in ("hash_bits", "nflip", "nhash", "nlist", "nprobe") if k in meta}
  print(f"wrote {meta['kind']} index of {meta['num_passages']} passages x {meta['code_bits']} bits "
        f"{settings or ''} to {f.output} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
  from bpr_jax import cli

  cli.run(main, _define_flags)
