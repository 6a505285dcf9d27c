"""The ``encode`` command: encodes a passage collection into binary codes with an exported model.

Usage::

  python -m bpr_jax.encode --model=E --passages=P --output=C
      [--batch_size=N --chunk_size=100000 --num_shards=N --shard_index=S --save_float
       --code_bits=N --pad_multiple=32 --dtype=bfloat16 --overwrite]

``E`` is a folder written by ``bpr_jax.export``; ``P`` a DPR TSV or a BEIR corpus.jsonl (either
may be .gz) or ``tfds:NAME``.  ``P`` is checked whole before the model is loaded
(``bpr_jax.data.passages.scan_passages``): an empty file, a header-only TSV, a malformed record
or a passage id used twice is refused in one line naming the file, the line and the fault.

Code size: the codes are the model's whole code by default.  ``--code_bits=N`` keeps the first N
bits of each code (the first N/8 bytes), for a model trained with nested codes: N must be one of
the sizes its ``bpr.json`` records (``nested_bits`` and the whole code,
``bpr_jax.export_format.code_sizes``); any other N is refused before the model loads.  An index
built from N-bit codes holds N-bit codes, and search, evaluate and serve use the first N dims of
the question vector with it.  ``--save_float`` keeps the whole float vectors (all dims), so the
float baselines of ``bpr_jax.evaluate`` compare with the model's full embeddings.

Rerunning: ``C`` records what it was made from (``manifest.json`` ``"inputs"``: the model's
fingerprint, the passage file's, the shard range and the settings that change the codes).  The
same command again reuses a finished output (one line says so) or resumes an unfinished one from
its chunks.  Other inputs (an edited passage file, replaced weights, another shard or setting)
are refused in one line naming what changed, unless ``--overwrite``: then the old output stays
complete while the new codes are encoded into ``chunks/``; its manifest is removed just before
the new files replace the old ones and the new manifest is written last, so ``C`` never mixes
two runs (a crash in between leaves a shard without a manifest, which ``bpr_jax.index``
refuses).  Chunks left by an unfinished run of other inputs are not an output: they are
discarded with a one-line note.

Pipeline: a background thread reads passages (``bpr_jax.data.passages``) and tokenises them a
chunk at a time (unpadded, ``data.token_cache``) into a bounded queue while the jitted passage
encoder runs on every local device (the batch is split over a 1-D ``data`` mesh; parameters are
replicated).  Each chunk's passages are sorted by length and each batch is padded to its longest
passage rounded up to ``--pad_multiple`` (a handful of compiled shapes); the encoder takes signs
and packs bits on the device, so only uint8 codes (and float vectors with ``--save_float``) come
back, and they are put back in file order.  One batch stays in flight so the host stores codes
while the devices compute the next one.

Output (``C`` for one shard, ``C/shard_{s:05d}`` for shard s of many; format in
``bpr_jax.index.codes_dir``)::

  chunks/run.json              the inputs and chunk size the chunks belong to
  chunks/chunk_00000.npz ...   codes, ids (+ embeddings) per --chunk_size passages, each
                               written atomically; a rerun keeps the finished ones
  codes.npy                    uint8 [N, code_bits/8] (``bpr_jax.codes`` layout)
  ids.npy                      int64 when all ids are integers, else unicode
  embeddings.npy               float32 [N, d] with --save_float
  manifest.json                counts, dims, sha256 of each file, shard range and the
                               ``inputs``; written last, so it marks a finished shard

Shard s of n takes the contiguous passage range ``[total * s // n, total * (s + 1) // n)``;
``bpr_jax.index`` unions the shards of ``C`` in shard order.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import queue
import shutil
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np

from bpr_jax import provenance
from bpr_jax.index.codes_dir import (CHUNK_DIR, CODES_FILE, EMBEDDINGS_FILE, IDS_FILE, MANIFEST,
                                     chunk_ok, chunk_path, merge_chunks, read_manifest, shard_dir,
                                     write_chunk, write_manifest)
from bpr_jax.io import atomic_write_json, read_json

RUN_FILE = "run.json"
CPU_BATCH_SIZE = 64
ACCELERATOR_BATCH_SIZE = 512


def default_batch_size() -> int:
  """Passages per device step when none is given: 64 on a CPU, 512 on a GPU or TPU.

  On a CPU a large batch is slower, not faster: its activations no longer fit the caches and
  the kernel spends time paging memory in (``benchmarks/encode_batch_cpu.py`` on a shared 2-core
  Xeon: 64 gave 1.12x the passages/s of 512 at equal padded tokens, with system time 19 s
  against 35 s; the reproduction in issue 22 saw 1.9x).
  """
  import jax  # pylint: disable=import-outside-toplevel
  return CPU_BATCH_SIZE if jax.default_backend() == "cpu" else ACCELERATOR_BATCH_SIZE


def shard_range(total: int, num_shards: int, shard_index: int) -> tuple[int, int]:
  """The contiguous passage range [start, end) of one shard."""
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
  return total * shard_index // num_shards, total * (shard_index + 1) // num_shards


# ---------------------------------------------------------------------------
# Device side.


@functools.lru_cache(maxsize=8)
def _jitted_forward(graphdef: Any, codes: bool, save_float: bool):
  """One jitted forward per architecture, so its compiled shapes outlive an encode_corpus call."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from bpr_jax.codes import pack_codes_jnp  # pylint: disable=import-outside-toplevel

  @jax.jit
  def forward(params, input_ids, attention_mask, token_type_ids):
    model = nnx.merge(graphdef, params)
    emb = model(input_ids, attention_mask, token_type_ids, deterministic=True)
    if not codes:
      return emb
    emb = emb.astype(jnp.float32)
    return pack_codes_jnp(emb), jnp.isfinite(emb).all(axis=1), (emb if save_float else None)

  return forward


def make_sharded_encoder(encoder: Any, batch_size: int, *, codes: bool = False,
                         save_float: bool = False):
  """A jitted passage forward pass with the batch split over local devices.

  Returns ``(fn, padded_batch)``: ``fn(batch_dict)`` takes int32 [padded_batch, L] arrays
  (any L; each new L compiles once) and returns a device array [padded_batch, d]; with
  ``codes`` it returns device arrays ``(codes, finite, emb)`` instead: uint8 codes
  [padded_batch, d/8] packed on the device (``codes.pack_codes_jnp``), a bool per row that
  its embedding is finite, and the float32 embeddings only with ``save_float`` (else None),
  so only codes cross to the host by default. ``padded_batch`` is ``batch_size`` rounded up
  to a multiple of the local device count.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel

  from bpr_jax.parallel import DATA_AXIS, make_mesh  # pylint: disable=import-outside-toplevel

  devices = jax.local_devices()
  mesh = make_mesh(devices)
  n_dev = len(devices)
  padded = -(-batch_size // n_dev) * n_dev
  data = NamedSharding(mesh, P(DATA_AXIS))
  repl = NamedSharding(mesh, P())
  graphdef, params = nnx.split(encoder)
  params = jax.device_put(params, repl)
  forward = _jitted_forward(graphdef, codes, save_float)

  def fn(batch: dict[str, np.ndarray]):
    args = [jax.device_put(batch[k], data)
            for k in ("input_ids", "attention_mask", "token_type_ids")]
    return forward(params, *args)

  return fn, padded


# ---------------------------------------------------------------------------
# Host side.


@dataclasses.dataclass
class _Chunk:
  """One chunk's passages tokenised without padding, and the order to encode them in."""
  index: int
  ids: list[str]
  table: Any    # token_cache.TokenTable, rows in file order
  order: np.ndarray  # rows by increasing length (file order when not bucketing)


_DONE = object()


def _producer(passages_path: str, todo: list[tuple[int, int, int]], tokenizer: Any,
              max_length: int, pad_multiple: int, out: "queue.Queue[Any]",
              stop: threading.Event) -> None:
  """Reads and tokenises the chunks in ``todo``, one ``_Chunk`` at a time, into ``out``.

  ``todo`` lists (chunk index, first row, end row) in increasing order, rows
  relative to the start of the file; passages of other chunks are skipped.
  """
  from bpr_jax.data.passages import iter_passages  # pylint: disable=import-outside-toplevel
  from bpr_jax.data.token_cache import tokenize_passages  # pylint: disable=import-outside-toplevel

  def put(item: Any) -> bool:
    while not stop.is_set():
      try:
        out.put(item, timeout=0.5)
        return True
      except queue.Full:
        continue
    return False

  try:
    if not todo:
      put(_DONE)
      return
    it = iter_passages(passages_path, start=todo[0][1])
    row = todo[0][1]
    for ci, lo, hi in todo:
      while row < lo:  # skip a finished chunk between unfinished ones
        next(it)
        row += 1
      group = []
      for _ in range(hi - lo):
        try:
          group.append(next(it))
        except StopIteration:
          raise ValueError(
              f"{passages_path} ended at passage {row} but {hi} were expected; "
              "did the file change during encoding?") from None
        row += 1
      table = tokenize_passages(tokenizer, [p.title for p in group], [p.text for p in group], max_length)
      order = (np.argsort(table.lengths, kind="stable") if pad_multiple > 0
               else np.arange(len(group)))
      if not put(_Chunk(ci, [p.id for p in group], table, order)):
        return
    put(_DONE)
  except BaseException as e:  # pylint: disable=broad-except  # re-raised in the consumer
    put(e)


def _pad_tokens(tokens: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  n = tokens["input_ids"].shape[0]
  if n == size:
    return tokens
  return {k: np.pad(v, ((0, size - n), (0, 0))) for k, v in tokens.items()}


def _batches_of(chunk: _Chunk, batch: int, pad_multiple: int, max_length: int):
  """(rows, padded tokens) of each device batch of a chunk: rows of similar length, padded to
  their longest rounded up to ``pad_multiple`` (or to ``max_length`` when it is 0)."""
  from bpr_jax.data.token_cache import bucket_length  # pylint: disable=import-outside-toplevel
  for s in range(0, len(chunk.order), batch):
    rows = chunk.order[s:s + batch]
    length = bucket_length(chunk.table.longest(rows), pad_multiple, max_length)
    yield rows, _pad_tokens(chunk.table.rows(rows, length), batch)



# ---------------------------------------------------------------------------
# Provenance and resumption.


def _memory_fingerprint(model: Any) -> dict[str, Any]:
  """Fingerprint of a loaded model: its passage encoder's weights and its settings (not the
  tokenizer)."""
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  h = hashlib.sha256(json.dumps(dict(model.settings), sort_keys=True, default=str).encode())
  for leaf in jax.tree_util.tree_leaves(nnx.state(model.passage_encoder)):
    array = np.asarray(leaf)
    h.update(f"{array.dtype}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
  return {"path": None, "sha256": h.hexdigest()}


def encode_inputs(model: Any, passages: str, *, model_path: str | os.PathLike | None,
                  settings: dict[str, Any]) -> dict[str, Any]:
  """The ``inputs`` record of an encode output: ``{"model", "passages", "settings"}``.

  ``model`` is ``provenance.model_fingerprint(model_path)``; ``passages`` is
  ``provenance.fingerprint_passages(passages)``; ``settings`` are the ones that change the codes.
  Without ``model_path`` the model is recorded as ``"model_in_memory"`` instead (a hash of the
  loaded passage encoder's weights and settings): encode's own rerun check still sees other
  weights, but an export folder cannot be compared with it later (index, evaluate and serve
  skip the missing ``"model"``), so commands always pass the path.
  """
  inputs = {"passages": provenance.fingerprint_passages(passages), "settings": dict(settings)}
  if model_path is not None:
    inputs["model"] = provenance.model_fingerprint(model_path)
  else:
    inputs["model_in_memory"] = _memory_fingerprint(model)
  return inputs


def _note(message: str) -> None:
  print(f"note: {message}", file=sys.stderr, flush=True)


def _prepare_chunks(out_dir: pathlib.Path, inputs: dict[str, Any], chunk_size: int) -> None:
  """Makes ``out_dir/chunks`` hold only chunks of these inputs and chunk size.

  Chunks of the same run are kept (resumed); chunks of another (an unfinished run with other
  inputs or another chunk size) are discarded with a one-line note.
  """
  chunks = out_dir / CHUNK_DIR
  run_file = chunks / RUN_FILE
  record = {provenance.INPUTS: inputs, "chunk_size": chunk_size}
  if chunks.exists():
    try:
      prev = read_json(run_file) if run_file.exists() else None
    except ValueError:  # a torn or foreign run.json
      prev = None
    why = None
    if not isinstance(prev, dict) or not isinstance(prev.get(provenance.INPUTS), dict):
      why = "they have no run record"
    elif provenance.changed(prev[provenance.INPUTS], inputs):
      why = f"other inputs: {provenance.describe(prev[provenance.INPUTS], inputs)}"
    elif prev.get("chunk_size") != chunk_size:
      why = f"chunk_size {prev.get('chunk_size')} -> {chunk_size}"
    if why is None:
      return
    if any(chunks.iterdir()):
      _note(f"{chunks}: discarding the chunks of an unfinished earlier run ({why}); "
            "encoding from the start")
    shutil.rmtree(chunks)
  chunks.mkdir(parents=True)
  atomic_write_json(run_file, record)


def _remove_empty_dirs(dirs: Sequence[pathlib.Path]) -> None:
  for d in dirs:
    try:
      d.rmdir()
    except OSError:
      pass


# ---------------------------------------------------------------------------
# The job.


def encode_corpus(model: Any, passages: str | os.PathLike, output: str | os.PathLike, *,
                  model_path: str | os.PathLike | None = None, batch_size: int | None = None,
                  chunk_size: int = 100_000, num_shards: int = 1, shard_index: int = 0,
                  save_float: bool = False, keep_chunks: bool = False, progress: bool = True,
                  stop_after_chunks: int | None = None, pad_multiple: int = 32,
                  code_bits: int | None = None,
                  overwrite: bool = False) -> dict[str, Any] | None:
  """Encodes one shard of a passage collection; returns its manifest.

  The passages are checked whole first (``scan_passages``), before anything is written.  An
  existing finished output of the same inputs is returned as it is; one of other inputs raises
  ``provenance.ProvenanceError`` naming what changed, unless ``overwrite`` (see the module
  docstring for how it is replaced).  An unfinished output of the same inputs is resumed.

  Args:
    model: an ``ExportedModel`` (uses ``passage_encoder``, ``tokenizer`` and
      ``settings["passage_max_length"]``).
    passages: DPR TSV or BEIR corpus.jsonl (optionally .gz), or ``tfds:NAME``.
    output: the output folder (shard folders are made inside when num_shards > 1).
    model_path: the export folder ``model`` was loaded from; its fingerprint is recorded (see
      ``encode_inputs`` for what is recorded without it).
    batch_size: passages per device step (rounded up to the device count); None:
      ``default_batch_size()`` (64 on CPU, 512 on GPU/TPU).
    chunk_size: passages per chunk file (the unit of resumption).
    num_shards, shard_index: which contiguous part of the collection to encode.
    save_float: also keep float32 embeddings (for float baselines): the whole vectors, also
      with ``code_bits``.
    keep_chunks: keep ``chunks/`` after the final files are written.
    progress: show a tqdm bar and print one summary line.
    stop_after_chunks: stop (as if killed) after writing this many chunks in
      this call; returns None.  For tests.
    pad_multiple: sort each chunk's passages by length and pad each batch to
      its longest passage rounded up to this (ceil(max_length / pad_multiple)
      compiled shapes); 0 pads everything to the model's passage_max_length in
      file order.  Codes are written in file order either way.
    code_bits: keep the first ``code_bits`` bits of each code; one of the model's recorded
      sizes (``export_format.code_sizes``: its nested_bits and whole code); None: the whole
      code.
    overwrite: replace an output made from other inputs instead of refusing.

  Returns:
    The manifest dict, or None when stopped early.
  """
  from bpr_jax.data.passages import TFDS_PREFIX, scan_passages  # pylint: disable=import-outside-toplevel

  if batch_size is None:
    batch_size = default_batch_size()
  if batch_size < 1 or chunk_size < 1:
    raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")
  passages = os.fspath(passages)
  if not passages.startswith(TFDS_PREFIX):
    passages = str(pathlib.Path(passages).resolve())
    if not os.path.isfile(passages):
      raise FileNotFoundError(f"passage file not found: {passages}")
  encoder = model.passage_encoder
  emb_dim = int(encoder.output_dim)
  if emb_dim % 8:
    raise ValueError(f"passage embedding dim {emb_dim} is not a multiple of 8; cannot pack codes")
  if code_bits is None:
    code_bits = emb_dim
  else:
    from bpr_jax.export_format import check_code_size  # pylint: disable=import-outside-toplevel
    settings = dict(getattr(model, "settings", None) or {})
    if settings:
      check_code_size(settings, int(code_bits), "the model")
    if not 0 < code_bits <= emb_dim or code_bits % 8:
      raise ValueError(f"code_bits {code_bits}: the model gives {emb_dim}-bit codes; give a "
                       f"multiple of 8 up to {emb_dim}")
    code_bits = int(code_bits)
  total = scan_passages(passages)
  start, end = shard_range(total, num_shards, shard_index)
  nrows = end - start
  model_path = str(pathlib.Path(model_path).resolve()) if model_path is not None else None
  inputs = encode_inputs(model, passages, model_path=model_path, settings={
      "start": start, "end": end, "passages_total": total, "save_float": save_float,
      "code_bits": code_bits, "num_shards": num_shards, "shard_index": shard_index,
      "dtype": np.dtype(getattr(encoder, "dtype", np.float32)).name})
  out_dir = shard_dir(output, num_shards, shard_index)

  done = read_manifest(out_dir)
  if done is not None:
    action = provenance.check_output(out_dir, done.get(provenance.INPUTS), inputs,
                                     what="encoded passages", overwrite=overwrite)
    if action == "reuse":
      if progress:
        print(f"{out_dir}: already encoded ({done['num_passages']} passages)")
      return done

  made = [d for d in (out_dir, pathlib.Path(output)) if not d.exists()]  # deepest first
  _prepare_chunks(out_dir, inputs, chunk_size)
  nchunks = -(-nrows // chunk_size)
  bounds = [(i, start + i * chunk_size, min(end, start + (i + 1) * chunk_size))
            for i in range(nchunks)]
  todo = [b for b in bounds if not chunk_ok(chunk_path(out_dir, b[0]), b[2] - b[1], save_float)]
  done_rows = nrows - sum(hi - lo for _, lo, hi in todo)

  t0 = time.time()
  try:
    finished = _encode_chunks(model, passages, out_dir, todo, nrows=nrows, done_rows=done_rows,
                              batch_size=batch_size, pad_multiple=pad_multiple,
                              save_float=save_float, code_bits=code_bits, progress=progress,
                              stop_after_chunks=stop_after_chunks,
                              desc=f"encode shard {shard_index}/{num_shards}")
  except BaseException:
    # A run that wrote no chunk leaves nothing behind (a resumable one keeps its chunks).
    if not any((out_dir / CHUNK_DIR).glob("chunk_*.npz")):
      shutil.rmtree(out_dir / CHUNK_DIR, ignore_errors=True)
      _remove_empty_dirs(made)
    raise
  if not finished:
    return None
  elapsed = time.time() - t0

  if done is not None:  # --overwrite: the old output stops being finished before files change
    (out_dir / MANIFEST).unlink()
  files = merge_chunks(out_dir, nchunks, nrows, code_bits // 8, emb_dim, save_float)
  for name in (CODES_FILE, IDS_FILE, EMBEDDINGS_FILE):
    if name not in files:
      (out_dir / name).unlink(missing_ok=True)  # e.g. embeddings.npy of an earlier --save_float
  manifest = {
      "num_passages": nrows,
      "code_bits": code_bits,
      "code_bytes": code_bits // 8,
      "embedding_dim": emb_dim,
      "has_embeddings": save_float,
      "model": model_path,
      "model_settings": dict(model.settings),
      "passages": passages,
      "passages_total": total,
      "num_shards": num_shards,
      "shard_index": shard_index,
      "start": start,
      "end": end,
      "files": files,
      "encode_seconds": round(elapsed, 3),
      "passages_per_second": round((nrows - done_rows) / elapsed, 2) if elapsed > 0 else None,
      provenance.INPUTS: inputs,
  }
  manifest = write_manifest(out_dir, manifest)
  if not keep_chunks:
    shutil.rmtree(out_dir / CHUNK_DIR, ignore_errors=True)
  if progress:
    print(f"encoded {nrows} passages x {code_bits} bits (shard {shard_index}/{num_shards}) "
          f"into {out_dir} at {manifest['passages_per_second']} passages/s")
  return manifest


def _encode_chunks(model: Any, passages: str, out_dir: pathlib.Path,
                   todo: list[tuple[int, int, int]], *, nrows: int, done_rows: int,
                   batch_size: int, pad_multiple: int, save_float: bool, code_bits: int,
                   progress: bool, stop_after_chunks: int | None, desc: str) -> bool:
  """Encodes the chunks in ``todo`` into chunk files (codes: the first ``code_bits`` bits);
  False when stopped by stop_after_chunks."""
  if not todo:
    return True
  encoder = model.passage_encoder
  emb_dim = int(encoder.output_dim)
  code_bytes = code_bits // 8
  fn, padded = make_sharded_encoder(encoder, batch_size, codes=True, save_float=save_float)
  max_length = int(model.settings["passage_max_length"])
  q: "queue.Queue[Any]" = queue.Queue(maxsize=2)  # the next chunks tokenise while this one encodes
  stop = threading.Event()
  worker = threading.Thread(
      target=_producer, name="bpr-encode-reader", daemon=True,
      args=(passages, todo, model.tokenizer, max_length, pad_multiple, q, stop))
  worker.start()
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=nrows, initial=done_rows, unit="psg", unit_scale=True, smoothing=0.05,
               desc=desc)
  acc: dict[int, dict[str, Any]] = {}
  written = 0

  def consume(item: tuple[_Chunk, np.ndarray, Any]) -> bool:
    """Puts one finished batch's rows in place; writes its chunk when full. False to stop."""
    nonlocal written
    chunk, rows, (dev_codes, dev_finite, dev_emb) = item
    n = len(rows)
    finite = np.asarray(dev_finite)[:n]
    if not finite.all():
      bad = [chunk.ids[r] for r in rows[~finite][:3]]
      raise ValueError(f"non-finite passage embeddings in chunk {chunk.index} (ids {bad}...)")
    size = len(chunk.ids)
    state = acc.setdefault(chunk.index, {
        "codes": np.zeros((size, code_bytes), np.uint8), "filled": 0,
        "embeddings": np.zeros((size, emb_dim), np.float32) if save_float else None})
    state["codes"][rows] = np.asarray(dev_codes)[:n, :code_bytes]  # big-endian: bits 0..N-1
    if save_float:
      state["embeddings"][rows] = np.asarray(dev_emb, dtype=np.float32)[:n]
    state["filled"] += n
    if bar is not None:
      bar.update(n)
    if state["filled"] == size:
      write_chunk(chunk_path(out_dir, chunk.index), state["codes"], np.asarray(chunk.ids, dtype=str),
                  state["embeddings"] if save_float else None)
      del acc[chunk.index]
      written += 1
      if stop_after_chunks is not None and written >= stop_after_chunks:
        return False
    return True

  pending = None
  stopped = False
  try:
    while not stopped:
      item = q.get()
      if isinstance(item, BaseException):
        raise item
      if item is _DONE:
        break
      for rows, tokens in _batches_of(item, padded, pad_multiple, max_length):
        out = fn(tokens)  # dispatched asynchronously
        if pending is not None and not consume(pending):
          stopped = True
          break
        pending = (item, rows, out)
    if not stopped and pending is not None and not consume(pending):
      stopped = True
  finally:
    stop.set()
    if bar is not None:
      bar.close()
    worker.join(timeout=5)
  if stopped:
    return False
  if acc:
    raise ValueError(f"chunks {sorted(acc)} were left incomplete")
  return True


# ---------------------------------------------------------------------------
# Command.


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("model", None, "Exported model folder (bpr_jax.export).")
  flags.DEFINE_string("passages", None, "DPR psgs_w100.tsv, BEIR corpus.jsonl (optionally .gz) or "
                      "tfds:NAME.")
  flags.DEFINE_string("output", None, "Output folder for codes.")
  flags.DEFINE_integer("batch_size", None,
                       f"Passages per device step (all local devices). Default: {CPU_BATCH_SIZE} on "
                       f"CPU (larger batches are slower there), {ACCELERATOR_BATCH_SIZE} on GPU/TPU.",
                       lower_bound=1)
  flags.DEFINE_integer("chunk_size", 100_000, "Passages per resumable chunk file.", lower_bound=1)
  flags.DEFINE_integer("num_shards", None, "Number of shards (default: jax.process_count()).")
  flags.DEFINE_integer("shard_index", None, "This shard (default: jax.process_index()).")
  flags.DEFINE_boolean("save_float", False, "Also save float32 embeddings (the whole vectors, "
                       "also with --code_bits).")
  flags.DEFINE_integer("code_bits", None, "Keep the first N bits of each code: one of the sizes "
                       "the model's bpr.json records (nested_bits and its whole code). Default: "
                       "the whole code.")
  flags.DEFINE_boolean("keep_chunks", False, "Keep chunk files after finishing.")
  flags.DEFINE_integer("pad_multiple", 32, "Sort each chunk by length and pad each batch to its longest "
                       "passage rounded up to this; 0: pad to passage_max_length in file order.",
                       lower_bound=0)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Compute dtype of the encoder (bfloat16: ~2x+ faster on GPU/TPU; a few code bits "
                    "of near-zero components may differ from float32).")
  flags.DEFINE_boolean("overwrite", False, "Replace an output made from other inputs (model, "
                       "passages, shard or settings) instead of refusing.")
  flags.mark_flags_as_required(["model", "passages", "output"])


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  from bpr_jax import cli  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if not f.passages.startswith("tfds:") and not os.path.isfile(f.passages):
    raise FileNotFoundError(f"passage file not found: {f.passages}")
  if not os.path.isdir(f.model):
    raise FileNotFoundError(f"exported model folder not found: {f.model}")
  if f.code_bits is not None:
    from bpr_jax.export_format import check_code_size, read_settings  # pylint: disable=import-outside-toplevel
    check_code_size(read_settings(f.model), f.code_bits, f"--code_bits={f.code_bits}: model {f.model}")

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from bpr_jax.data.passages import scan_passages  # pylint: disable=import-outside-toplevel
  from bpr_jax.distributed import initialize_distributed  # pylint: disable=import-outside-toplevel
  from bpr_jax.exported_model import load_exported  # pylint: disable=import-outside-toplevel

  scan_passages(f.passages)  # a bad collection is refused before the model is loaded
  initialize_distributed()  # a multi-process launch shards by process unless flags say otherwise
  num_shards = jax.process_count() if f.num_shards is None else f.num_shards
  shard_index = jax.process_index() if f.shard_index is None else f.shard_index
  shard_range(1, num_shards, shard_index)  # checks the flags before the model is loaded
  model = load_exported(f.model, dtype=jnp.bfloat16 if f.dtype == "bfloat16" else jnp.float32)
  encode_corpus(model, f.passages, f.output, model_path=f.model, batch_size=f.batch_size,
                chunk_size=f.chunk_size, num_shards=num_shards, shard_index=shard_index,
                save_float=f.save_float, keep_chunks=f.keep_chunks, pad_multiple=f.pad_multiple,
                code_bits=f.code_bits, overwrite=f.overwrite)


if __name__ == "__main__":
  from bpr_jax import cli

  cli.run(main, _define_flags)
