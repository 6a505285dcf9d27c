"""Accelerator figures for the 21M-passage setting: device Hamming search and passage encoding.

One prepared script for a lent GPU (minutes of device time): its cases, exactness checks and report.

Purpose: measure on one GPU the two numbers that decide whether the full
Wikipedia pipeline (21M passages, 768-bit codes) runs on an accelerator in
reasonable time.  On a CPU the same code runs at small sizes as a check of
the code path only; its absolute figures say nothing about the GPU targets.

Cases (``--cases``, default both):

  hamming  Exact Hamming top-l (``--l``, default 1000) of a batch of
           ``--batch`` (1,024) question codes over ``--n`` (21M) 768-bit passage
           codes held on the device by ``bpr_jax.device_search.DeviceHammingIndex``,
           once per ``--methods`` entry: ``popcount`` (XOR + popcount on uint32
           words), ``matmul`` (bits unpacked to +-1 bfloat16, hamming =
           (d - <s_q, s_p>) / 2 by a tensor-core matmul, f32 accumulation) and
           optionally ``matmul_int8`` (+-1 int8, int32 accumulation).
           Codes are structured, generated in chunks with numpy: 16,384 random
           centre codes (``--centres``); each passage is a random centre with
           every bit flipped with probability 1/8 (AND of three random bytes
           as the flip mask); questions are 1,024 centres perturbed the same
           way, so a question's nearest passages are the ~N/16,384 members of
           its cluster (~168 bits away; others ~384).
           The index is built (codes put on the device once), one untimed
           search compiles, then ``--repeats`` searches of the whole batch are
           timed (each returns the top-l to the host, so it is blocked on).
           Reported: ms per batch, ms per question.
           Correctness: the top-l of the first ``--check_queries`` (8)
           questions is compared with faiss ``IndexBinaryFlat`` (sorted
           distance lists equal) when faiss imports and N <= ``--faiss_max_n``
           (2M), else with an exact numpy scan of the whole database
           (distances and rows, ties lower row first).  The GPU image has no
           faiss, so there the numpy reference is used (noted in the JSON).
           Target: <= 0.2 ms per question at batch 1,024 over 21M codes
           (<= ~205 ms per batch).
  encode   Passage encoding throughput of a bert-base-sized encoder (random
           init: 12 layers, hidden 768, 12 heads, intermediate 3072, vocab
           30522; ``--encoder=tiny`` is 2 layers, hidden 64, for CPU checks)
           at length ``--length`` (256) in ``--dtype`` (bfloat16) through the
           real encode path ``bpr_jax.encode.make_sharded_encoder``, fed
           random token ids with all-ones attention masks, one batch kept in
           flight while the host converts and packs the previous one (as
           ``encode_corpus`` does; tokenisation is not included).  After
           ``--encode_warmup`` untimed batches, ``--encode_batches`` batches of
           ``--encode_batch`` (512) are timed.  Reported: passages/s and the
           hours for 21M passages.
           Target: >= 6,000 passages/s on one H100 (21M passages in < 1 hour).
           ``python -m bpr_jax.encode --dtype=bfloat16`` runs the encode job
           in this dtype (its default is float32; ``--dtype=float32`` here
           measures that).

Commands::

  # On the GPU machine (the real figures; results/device_speed.json):
  python benchmarks/device_speed.py
  python benchmarks/device_speed.py --cases=hamming --methods=popcount,matmul,matmul_int8
  python benchmarks/device_speed.py --cases=encode --dtype=float32 \\
      --output=benchmarks/results/device_speed_f32.json

  # CPU check of the code path at small sizes (never into benchmarks/results):
  OPENBLAS_NUM_THREADS=1 python benchmarks/device_speed.py --n=20k --batch=64 --l=100 \\
      --encoder=tiny --encode_batch=32 --encode_batches=3 --output=/tmp/device_speed_cpu.json

Output: a JSON at ``--output`` (default benchmarks/results/device_speed.json)
with the device kind, backend, library versions, arguments and every
measured figure (``"accelerator": false`` off GPU/TPU), and a table on stdout.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks.common import REPO  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "device_speed.json"
CODE_BITS = 768
WIKI_PASSAGES = 21_000_000
TARGET_MS_PER_QUERY = 0.2
TARGET_PASSAGES_PER_S = 6000.0
FLIP_ANDS = 3  # flip mask = AND of 3 random bytes: each bit flipped with p = 1/8
ENCODERS = {
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072,
                      max_position_embeddings=512),
    "tiny": dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=256, max_position_embeddings=512),
}
METHODS = {"popcount": ("popcount", "bfloat16"), "matmul": ("matmul", "bfloat16"),
           "matmul_int8": ("matmul", "int8")}


def parse_count(text: str) -> int:
  """'21M' -> 21000000, '20k' -> 20000, '2.5M', '5000', '1e6'."""
  s = str(text).strip().lower().replace("_", "").replace(",", "")
  mult = 1
  if s and s[-1] in "kmb":
    mult = {"k": 10 ** 3, "m": 10 ** 6, "b": 10 ** 9}[s[-1]]
    s = s[:-1]
  try:
    value = float(s) * mult
  except ValueError:
    raise argparse.ArgumentTypeError(f"not a count: {text!r} (use e.g. 5000, 20k, 1M, 21M)") from None
  if value < 1 or value != int(value):
    raise argparse.ArgumentTypeError(f"not a positive whole count: {text!r}")
  return int(value)


# ----------------------------------------------------------------------------- hamming data


def _flip_mask(rng: np.random.Generator, rows: int, nbytes: int) -> np.ndarray:
  size = rows * nbytes
  mask = np.frombuffer(rng.bytes(size), np.uint8).copy()
  for _ in range(FLIP_ANDS - 1):
    mask &= np.frombuffer(rng.bytes(size), np.uint8)
  return mask.reshape(rows, nbytes)


def make_codes(n: int, queries: int, *, centres: int = 16384, nbytes: int = CODE_BITS // 8,
               seed: int = 0, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
  """Structured passage codes uint8 [n, nbytes] and question codes [queries, nbytes]."""
  rng = np.random.default_rng(seed)
  cen = np.frombuffer(rng.bytes(centres * nbytes), np.uint8).reshape(centres, nbytes)
  codes = np.empty((n, nbytes), np.uint8)
  for s in range(0, n, chunk):
    e = min(n, s + chunk)
    idx = rng.integers(0, centres, e - s)
    np.bitwise_xor(cen[idx], _flip_mask(rng, e - s, nbytes), out=codes[s:e])
  q = cen[rng.integers(0, centres, queries)] ^ _flip_mask(rng, queries, nbytes)
  return codes, q


# ----------------------------------------------------------------------------- references


def _popcount_rows(x: np.ndarray) -> np.ndarray:
  """Set bits per row of a uint8 [n, nbytes] array (int32)."""
  if x.shape[1] % 8 == 0 and hasattr(np, "bitwise_count"):
    return np.bitwise_count(x.view(np.uint64)).sum(axis=1, dtype=np.int32)
  table = np.array([bin(v).count("1") for v in range(256)], np.int32)
  return table[x].sum(axis=1, dtype=np.int32)


def numpy_topk(codes: np.ndarray, q: np.ndarray, k: int, *,
               chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
  """Exact Hamming top-k by a full numpy scan; ties lower row first."""
  n = codes.shape[0]
  out_d = np.zeros((q.shape[0], k), np.int32)
  out_r = np.zeros((q.shape[0], k), np.int64)
  for i, qc in enumerate(q):
    dist = np.empty(n, np.int32)
    for s in range(0, n, chunk):
      dist[s:s + chunk] = _popcount_rows(codes[s:s + chunk] ^ qc[None])
    th = np.partition(dist, k - 1)[k - 1]
    below = np.flatnonzero(dist < th)
    rows = np.concatenate([below, np.flatnonzero(dist == th)[:k - below.size]])
    order = np.lexsort((rows, dist[rows]))
    out_r[i] = rows[order]
    out_d[i] = dist[out_r[i]]
  return out_d, out_r


def reference_topk(codes: np.ndarray, q: np.ndarray, k: int, *, kind: str,
                   faiss_max_n: int) -> dict[str, Any]:
  """Top-k of a few questions from faiss (distances) or numpy (distances and rows)."""
  note = ""
  if kind in ("auto", "faiss"):
    try:
      import faiss  # pylint: disable=import-outside-toplevel
    except ImportError:
      faiss = None
      note = "faiss not importable; numpy reference used"
    if faiss is not None and codes.shape[0] > faiss_max_n:
      note = f"N = {codes.shape[0]} > --faiss_max_n = {faiss_max_n}; numpy reference used"
      faiss = None
    if faiss is not None:
      t0 = time.perf_counter()
      flat = faiss.IndexBinaryFlat(8 * codes.shape[1])
      flat.add(np.ascontiguousarray(codes))
      dist, _ = flat.search(np.ascontiguousarray(q), k)
      return {"kind": "faiss", "dist": np.sort(dist, axis=1).astype(np.int32), "rows": None,
              "seconds": round(time.perf_counter() - t0, 3), "note": "faiss IndexBinaryFlat"}
    if kind == "faiss":
      raise SystemExit(f"--reference=faiss: {note}")
  t0 = time.perf_counter()
  dist, rows = numpy_topk(codes, q, k)
  return {"kind": "numpy", "dist": dist, "rows": rows,
          "seconds": round(time.perf_counter() - t0, 3), "note": note or "numpy exact scan"}


def check_result(codes: np.ndarray, q: np.ndarray, dist: np.ndarray, rows: np.ndarray,
                 ref: dict[str, Any]) -> dict[str, Any]:
  """Compares a search result for questions q with the reference."""
  m = ref["dist"].shape[0]
  recomputed = np.stack([_popcount_rows(codes[rows[i]] ^ q[i][None]) for i in range(m)])
  same_dist = bool(np.array_equal(dist[:m], ref["dist"]))
  rows_ok = bool(np.array_equal(recomputed, dist[:m]))
  out = {"checked": True, "reference": ref["kind"], "queries": int(m),
         "distances_equal": same_dist, "returned_rows_have_returned_distances": rows_ok,
         "note": ref["note"]}
  if ref["rows"] is not None:
    out["rows_equal"] = bool(np.array_equal(rows[:m], ref["rows"]))
  out["passed"] = bool(same_dist and rows_ok and out.get("rows_equal", True))
  return out


# ----------------------------------------------------------------------------- hamming case


def hamming_case(args, backend: str) -> dict[str, Any]:
  from bpr_jax.device_search import DeviceHammingIndex  # pylint: disable=import-outside-toplevel

  n, bsz, l = args.n, args.batch, args.l
  if l > n:
    raise SystemExit(f"--l={l} exceeds --n={n}")
  print(f"hamming: generating {n:,} codes of {CODE_BITS} bits + {bsz} questions...", flush=True)
  t0 = time.perf_counter()
  codes, q = make_codes(n, bsz, centres=args.centres, seed=args.seed)
  gen_s = time.perf_counter() - t0
  ref = None
  if args.check_queries > 0:
    m = min(args.check_queries, bsz)
    print(f"hamming: reference top-{l} of {m} questions...", flush=True)
    ref = reference_topk(codes, q[:m], l, kind=args.reference, faiss_max_n=args.faiss_max_n)
  rows_out = []
  for name in [x for x in args.methods.split(",") if x]:
    if name not in METHODS:
      raise SystemExit(f"unknown method {name!r}; expected some of {', '.join(METHODS)}")
    method, mm_dtype = METHODS[name]
    print(f"hamming[{name}]: building the device index...", flush=True)
    t0 = time.perf_counter()
    index = DeviceHammingIndex(codes, method=method, matmul_dtype=mm_dtype, block=args.block,
                               group=args.group, group_k=args.group_k, max_batch=args.max_batch)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(max(1, args.warmup)):
      dist, rows = index.search(q, l)
    first_s = time.perf_counter() - t0
    index.fallback_queries = 0
    times = []
    for _ in range(args.repeats):
      t = time.perf_counter()
      dist, rows = index.search(q, l)
      times.append(time.perf_counter() - t)
    med = statistics.median(times)
    row = {
        "case": "hamming", "method": name, "distance": method,
        "matmul_dtype": mm_dtype if method == "matmul" else None,
        "n": n, "code_bits": CODE_BITS, "batch": bsz, "l": l,
        "block": index.block, "group": index.group, "groups_per_block": index.groups,
        "group_k": index.group_k, "nblocks": index.nblocks,
        "device_bytes": int(index.codes.nbytes),
        "generate_s": round(gen_s, 2), "build_s": round(build_s, 3),
        "warmup_s": round(first_s, 3), "warmup_searches": max(1, args.warmup),
        "repeats": args.repeats,
        "ms_per_batch_median": round(1e3 * med, 3),
        "ms_per_batch_min": round(1e3 * min(times), 3),
        "ms_per_batch_mean": round(1e3 * statistics.fmean(times), 3),
        "ms_per_batch_max": round(1e3 * max(times), 3),
        "ms_per_query": round(1e3 * med / bsz, 5),
        "queries_per_s": round(bsz / med, 1),
        "fallback_queries_timed": int(index.fallback_queries),
        "target_ms_per_query": TARGET_MS_PER_QUERY,
        "meets_target": bool(1e3 * med / bsz <= TARGET_MS_PER_QUERY),
    }
    if ref is not None:
      row["check"] = check_result(codes, q, dist, rows, ref)
      row["check"]["reference_s"] = ref["seconds"]
    else:
      row["check"] = {"checked": False, "note": "--check_queries=0"}
    print(json.dumps(row), flush=True)
    rows_out.append(row)
    del index, dist, rows
    gc.collect()
  return {"rows": rows_out, "generate_s": round(gen_s, 2),
          "data": {"centres": args.centres, "flip_probability": 0.5 ** FLIP_ANDS,
                   "seed": args.seed},
          "target": f"<= {TARGET_MS_PER_QUERY} ms/query at batch 1024, l=1000 over "
                    f"{WIKI_PASSAGES:,} codes"}


# ----------------------------------------------------------------------------- encode case


def encoder_flops_per_passage(cfg, length: int) -> float:
  """Forward matmul FLOPs of one passage: 2 * P_matmul * L + 4 * layers * L^2 * hidden."""
  return common.encoder_forward_flops(cfg, length)


def encode_case(args, backend: str) -> dict[str, Any]:
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from bpr_jax.codes import pack_codes  # pylint: disable=import-outside-toplevel
  from bpr_jax.encode import make_sharded_encoder  # pylint: disable=import-outside-toplevel
  from bpr_jax.models.bert import BertConfig, BertEncoder  # pylint: disable=import-outside-toplevel

  cfg = BertConfig(**ENCODERS[args.encoder])
  dtype = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[args.dtype]
  length = args.length
  if length > cfg.max_position_embeddings:
    raise SystemExit(f"--length={length} exceeds {cfg.max_position_embeddings}")
  print(f"encode[{args.encoder}]: building ({args.dtype}, length {length}, "
        f"batch {args.encode_batch})...", flush=True)
  t0 = time.perf_counter()
  encoder = BertEncoder(cfg, pooling=args.pooling, dtype=dtype, rngs=nnx.Rngs(args.seed))
  fn, padded = make_sharded_encoder(encoder, args.encode_batch)
  build_s = time.perf_counter() - t0
  rng = np.random.default_rng(args.seed)
  batches = []
  for _ in range(2):
    ids = rng.integers(1000, cfg.vocab_size, size=(padded, length), dtype=np.int32)
    ids[:, 0] = 101
    batches.append({"input_ids": ids, "attention_mask": np.ones((padded, length), np.int32),
                    "token_type_ids": np.zeros((padded, length), np.int32)})
  real = args.encode_batch

  def consume(out) -> np.ndarray:
    emb = np.asarray(out, dtype=np.float32)[:real]
    if not np.isfinite(emb).all():
      raise RuntimeError("non-finite passage embeddings")
    return pack_codes(emb)

  t0 = time.perf_counter()
  for i in range(max(1, args.encode_warmup)):
    codes = consume(fn(batches[i % 2]))
  warmup_s = time.perf_counter() - t0
  nb = args.encode_batches
  t0 = time.perf_counter()
  pending = None
  for i in range(nb):
    out = fn(batches[i % 2])  # dispatched asynchronously; the previous batch is consumed meanwhile
    if pending is not None:
      codes = consume(pending)
    pending = out
  codes = consume(pending)
  elapsed = time.perf_counter() - t0
  pps = nb * real / elapsed
  flops = encoder_flops_per_passage(cfg, length)
  row = {
      "case": "encode", "encoder": args.encoder, "layers": cfg.num_hidden_layers,
      "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
      "intermediate": cfg.intermediate_size, "vocab": cfg.vocab_size, "pooling": args.pooling,
      "dtype": args.dtype, "length": length, "batch": real, "padded_batch": padded,
      "devices": jax.local_device_count(),
      "warmup_batches": max(1, args.encode_warmup), "timed_batches": nb,
      "build_s": round(build_s, 3), "warmup_s": round(warmup_s, 3),
      "timed_s": round(elapsed, 4), "ms_per_batch": round(1e3 * elapsed / nb, 3),
      "passages_per_s": round(pps, 2),
      "hours_for_21M": round(WIKI_PASSAGES / pps / 3600, 3),
      "model_tflops_per_s": round(flops * pps / 1e12, 3),
      "code_bytes": int(codes.shape[1]),
      "target_passages_per_s": TARGET_PASSAGES_PER_S,
      "meets_target": bool(pps >= TARGET_PASSAGES_PER_S),
  }
  if args.peak_tflops and common.is_accelerator(backend):
    row["peak_tflops"] = args.peak_tflops
    row["mfu"] = round(flops * pps / (args.peak_tflops * 1e12), 4)
  print(json.dumps(row), flush=True)
  return {"rows": [row], "flops_formula": "2 * layers * (4 h^2 + 2 h i) * L + 4 * layers * L^2 * h "
                                          "per passage (forward matmuls only)",
          "target": f">= {TARGET_PASSAGES_PER_S:.0f} passages/s on one H100 "
                    f"({WIKI_PASSAGES:,} passages in under an hour)"}


# ----------------------------------------------------------------------------- output


def table(result: dict[str, Any]) -> str:
  lines = []
  ham = result.get("hamming")
  if ham:
    cols = ("method", "n", "batch", "l", "ms_per_batch_median", "ms_per_query", "meets_target",
            "fallback_queries_timed", "check")
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in ham["rows"]:
      chk = r["check"]
      chk_s = (f"{chk['reference']} {'ok' if chk['passed'] else 'FAILED'}"
               if chk.get("checked") else "unchecked")
      vals = [r["method"], f"{r['n']:,}", r["batch"], r["l"], r["ms_per_batch_median"],
              r["ms_per_query"], r["meets_target"], r["fallback_queries_timed"], chk_s]
      lines.append("| " + " | ".join(str(v) for v in vals) + " |")
  enc = result.get("encode")
  if enc:
    if lines:
      lines.append("")
    cols = ("encoder", "dtype", "length", "batch", "passages_per_s", "hours_for_21M",
            "model_tflops_per_s", "mfu", "meets_target")
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in enc["rows"]:
      lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description="Device Hamming search and encoding throughput.")
  p.add_argument("--cases", default="hamming,encode", help="comma list of hamming, encode")
  p.add_argument("--output", default=str(RESULTS), help="where the JSON goes")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--note", default="", help="free text stored with the results")
  g = p.add_argument_group("hamming")
  g.add_argument("--n", type=parse_count, default=WIKI_PASSAGES,
                 help="passage codes (suffixes k/M: 20k, 1M, 21M)")
  g.add_argument("--batch", type=parse_count, default=1024, help="questions per search call")
  g.add_argument("--l", type=int, default=1000, help="neighbours per question")
  g.add_argument("--methods", default="popcount,matmul",
                 help="comma list of popcount, matmul, matmul_int8")
  g.add_argument("--repeats", type=int, default=5, help="timed searches per method")
  g.add_argument("--warmup", type=int, default=1, help="untimed searches (the first compiles)")
  g.add_argument("--centres", type=int, default=16384, help="cluster centre codes")
  g.add_argument("--block", type=int, default=262144, help="DeviceHammingIndex rows per scan step")
  g.add_argument("--group", type=int, default=None,
                 help="DeviceHammingIndex rows per selection group (default auto; 0 = off)")
  g.add_argument("--group_k", type=int, default=16, help="rows kept per group")
  g.add_argument("--max_batch", type=int, default=1024, help="questions per device call")
  g.add_argument("--check_queries", type=int, default=8,
                 help="questions checked against the reference (0 = no check)")
  g.add_argument("--reference", default="auto", choices=("auto", "faiss", "numpy"),
                 help="auto: faiss if importable and N <= --faiss_max_n, else numpy")
  g.add_argument("--faiss_max_n", type=parse_count, default=2_000_000)
  e = p.add_argument_group("encode")
  e.add_argument("--encoder", default="bert-base", choices=tuple(ENCODERS))
  e.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                 help="compute dtype (parameters stay float32)")
  e.add_argument("--pooling", default="cls", choices=("cls", "mean"))
  e.add_argument("--length", type=int, default=256, help="passage length in tokens")
  e.add_argument("--encode_batch", type=int, default=512, help="passages per device step")
  e.add_argument("--encode_batches", type=int, default=20, help="timed batches")
  e.add_argument("--encode_warmup", type=int, default=2, help="untimed batches (the first compiles)")
  e.add_argument("--peak_tflops", type=float, default=989.0,
                 help="accelerator peak TFLOP/s for MFU (default: H100 SXM dense bf16)")
  return p


def main(argv=None) -> dict[str, Any]:
  args = build_parser().parse_args(argv)
  cases = [c for c in args.cases.split(",") if c]
  for c in cases:
    if c not in ("hamming", "encode"):
      raise SystemExit(f"unknown case {c!r}; expected hamming and/or encode")
  if args.repeats < 1 or args.l < 1 or args.batch < 1 or args.encode_batches < 1:
    raise SystemExit("--repeats, --l, --batch and --encode_batches must be >= 1")
  backend = jax.default_backend()
  accel = common.is_accelerator(backend)
  notes = []
  if not accel:
    notes.append(f"backend is {backend}: absolute figures are not the GPU targets "
                 "(a check of the code path only)")
    print(f"NOTE: {notes[-1]}", flush=True)
  result: dict[str, Any] = {
      "benchmark": "device_speed",
      "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
      "backend": backend,
      "accelerator": accel,
      "device_kind": jax.devices()[0].device_kind,
      "devices": [str(d) for d in jax.devices()],
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "versions": common.versions(),
      "jax_version": jax.__version__,
      "flax_version": None,
      "python_version": platform.python_version(),
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "env": {k: os.environ[k] for k in ("XLA_FLAGS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                         "JAX_PLATFORMS") if os.environ.get(k)},
      "args": vars(args),
      "note": args.note,
  }
  result["flax_version"] = result["versions"]["flax"]
  if "hamming" in cases:
    result["hamming"] = hamming_case(args, backend)
    if any(not r["check"].get("passed", True) for r in result["hamming"]["rows"]):
      notes.append("hamming: a correctness check FAILED")
    if result["versions"].get("faiss") is None:
      notes.append("faiss not installed: the hamming check used the numpy reference")
  if "encode" in cases:
    result["encode"] = encode_case(args, backend)
  result["notes"] = notes
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(table(result))
  for n in notes:
    print(f"NOTE: {n}")
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
