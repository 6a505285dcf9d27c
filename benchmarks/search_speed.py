"""Search speed and memory of BPR two-stage retrieval on synthetic structured codes.

Data generation, every index kind, the float baselines and the report, run as one process per size
to measure peak memory.

Usage::

  python benchmarks/search_speed.py                  # N = 1M, 5M, 21M (long)
  python benchmarks/search_speed.py --small          # N = 20k, 100k (quick check)
  python benchmarks/search_speed.py --sizes=1M,2M --threads=2
  python benchmarks/search_speed.py --threads_compare=1M --num_queries=256

Data (768-bit codes with structure, not uniform random bits):
  * 64 "topic" codes drawn uniformly;
  * 16,384 cluster centre codes, each a topic code with every bit flipped with
    probability 1/8 (AND of three random bytes as the flip mask);
  * passage codes: a random centre with every bit flipped with probability
    1/4 (AND of two random bytes), so same-cluster passages are ~288 bits
    apart, same-topic ones ~336 and unrelated ones ~384;
  * questions (continuous, float32): the +-1 centre vector of a random
    cluster times 1.0 plus N(0, 1.2^2) noise per dimension (~20% sign flips).
  Bucket sizes of hash indexes are therefore skewed, as with real codes.

For every N (each in a fresh subprocess, so peak RSS is per N) it reports
ms/query for a batch of --num_queries questions (one call) and for single
questions, for two-stage search (k=100, l=1000) with each --kinds spec
(``kind[:key=value...]``: flat, hash, multihash with b/nhash/nflip, ivf with
nlist/nprobe; ivf builds are shared across nprobe values); top-10 and top-100
overlap of every row with bpr-flat (exact Hamming top-l, then the same
rerank); index bytes per passage; build time and peak RSS.  Bytes: flat =
faiss file + 8-byte ids; hash kinds add the separate rerank codes; ivf rows
are saved, reloaded with the lists memory-mapped (``IO_FLAG_MMAP_IFC``) and
rerank from the lists, so their in-RAM bytes are index.faiss (codes + 8-byte
row ids + centroids), ``disk`` adds ids.npy (memory-mapped, only result ids
touched), and RssAnon/RssFile before the load and after the searches are
recorded.  Float32 768-d faiss IndexFlatIP is timed at N <= --float_max_n
(unpacked codes + noise as embeddings, BLAS threshold lowered to 1) and
extrapolated linearly in N above that (marked ``extrapolated``).  Results go
to benchmarks/results/search_speed.{json,md}; the load average at the start
and end of every N is recorded (the machine is shared).

``--threads_compare=N`` instead times flat and ivf search with 1 and 2 faiss
threads (stage 1 alone and two-stage, batched and single) and writes
search_speed.threads.json, appended to the .md by ``--rebuild_md``.
Under load (other jobs on the 2 cores) one thread was much faster, see the
.md; the default here is --threads=1.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
D = 768
N_TOPICS = 64
N_CENTRES = 16384
GEN_CHUNK = 1 << 20
TARGET_MS_21M = 40.0
TARGET_SPEEDUP = 30.0


def parse_size(s: str) -> int:
  s = s.strip().lower()
  mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
  return int(float(s[:-1] if s[-1:] in "km" else s) * mult)


def fmt_size(n: int) -> str:
  if n % 1_000_000 == 0:
    return f"{n // 1_000_000}M"
  if n % 1_000 == 0:
    return f"{n // 1_000}k"
  return str(n)


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="1M,5M,21M", help="Comma-separated N (k/M suffixes).")
  p.add_argument("--small", action="store_true", help="Quick check: N = 20k,100k, 256 questions.")
  p.add_argument("--kinds", default="flat,hash,multihash,ivf:nprobe=16,ivf:nprobe=64",
                 help="Comma-separated kind[:key=value...] specs, e.g. multihash:b=8:nhash=12:"
                      "nflip=1 or ivf:nprobe=16 (ivf builds are shared across nprobe values).")
  p.add_argument("--num_single_flat", type=int, default=10,
                 help="Single questions timed for bpr-flat (slow at large N).")
  p.add_argument("--name", default=None, help="Output file stem (default search_speed).")
  p.add_argument("--num_queries", type=int, default=1024)
  p.add_argument("--num_single", type=int, default=50)
  p.add_argument("--k", type=int, default=100)
  p.add_argument("--l", type=int, default=1000)
  p.add_argument("--float_max_n", default="1M", help="Largest N for the float IndexFlatIP run.")
  p.add_argument("--threads", type=int, default=1,
                 help="faiss OpenMP threads (1: see --threads_compare results).")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
  p.add_argument("--rebuild_md", action="store_true",
                 help="Rewrite the .md from the existing .json without running.")
  p.add_argument("--threads_compare", default=None,
                 help="Instead of the table: time flat and ivf search at this N with 1 and 2 "
                      "faiss threads (batched and single); writes search_speed.threads.json.")
  p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one N, print JSON
  a = p.parse_args(argv)
  if a.small:
    a.sizes = "20k,100k" if a.sizes == "1M,5M,21M" else a.sizes
    a.num_queries = min(a.num_queries, 256)
    a.num_single = min(a.num_single, 20)
    a.float_max_n = "100k" if a.float_max_n == "1M" else a.float_max_n
  return a


# ---------------------------------------------------------------------------
# One size (runs in a subprocess).


def _rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_status() -> dict:
  """RssAnon / RssFile / VmRSS of this process in MB (file pages are page cache)."""
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      k = line.split(":")[0]
      if k in ("RssAnon", "RssFile", "VmRSS"):
        out[k] = round(int(line.split()[1]) / 1024, 1)
  return out


def parse_spec(spec: str):
  """"multihash:b=8:nhash=12" -> ("multihash", {"b": 8, "nhash": 12})."""
  parts = spec.strip().split(":")
  params = {}
  for p in parts[1:]:
    k, v = p.split("=")
    params[k] = int(v)
  return parts[0], params


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(n: int, num_queries: int, seed: int):
  """Structured packed codes [n, 96], continuous questions [B, 768], centre ids."""
  import numpy as np

  rng = np.random.default_rng(seed)
  nb = D // 8
  topics = rng.integers(0, 256, (N_TOPICS, nb), dtype=np.uint8)
  r = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
  centres = topics[rng.integers(0, N_TOPICS, N_CENTRES)] ^ (r(N_CENTRES, nb) & r(N_CENTRES, nb)
                                                            & r(N_CENTRES, nb))
  codes = np.empty((n, nb), np.uint8)
  for s in range(0, n, GEN_CHUNK):
    m = min(GEN_CHUNK, n - s)
    codes[s:s + m] = centres[rng.integers(0, N_CENTRES, m)] ^ (r(m, nb) & r(m, nb))
  qc = rng.integers(0, N_CENTRES, num_queries)
  signs = np.unpackbits(centres[qc], axis=1).astype(np.float32) * 2 - 1
  q = signs + 1.2 * rng.standard_normal((num_queries, D), dtype=np.float32)
  return codes, q.astype(np.float32), centres


def _faiss_file_bytes(index, binary: bool) -> int:
  import faiss

  with tempfile.NamedTemporaryFile(dir=os.environ.get("TMPDIR", "/tmp"), suffix=".faiss") as f:
    (faiss.write_index_binary if binary else faiss.write_index)(index, f.name)
    return os.path.getsize(f.name)


def _time_search(fn, q, num_single):
  fn(q[:1])  # warm-up / compile
  t0 = time.perf_counter()
  out = fn(q)
  batched = (time.perf_counter() - t0) * 1000 / len(q)
  t0 = time.perf_counter()
  for i in range(num_single):
    fn(q[i:i + 1])
  single = (time.perf_counter() - t0) * 1000 / max(num_single, 1)
  return out, batched, single


def run_one(a) -> dict:
  import faiss
  import numpy as np

  sys.path.insert(0, str(ROOT))
  from bpr_jax.codes import pack_codes
  from bpr_jax.index import BinaryIndex, save_index
  from bpr_jax.search import two_stage_search

  faiss.omp_set_num_threads(a.threads)
  n = parse_size(a.one)
  res = {"n": n, "bits": D, "num_queries": a.num_queries, "num_single": a.num_single, "k": a.k,
         "l": a.l, "threads": a.threads, "rows": [],
         "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3])}
  t0 = time.perf_counter()
  codes, q, _ = make_data(n, a.num_queries, a.seed)
  res["gen_s"] = round(time.perf_counter() - t0, 2)
  ids_bytes = 8 * n
  flat_rows = None
  built = {}  # (kind, build params) -> (BinaryIndex, build_s, rss_delta, files)
  tmp_root = pathlib.Path(tempfile.mkdtemp(prefix="bpr_bench_", dir=os.environ.get("TMPDIR")))
  for spec in a.kinds.split(","):
    kind, params = parse_spec(spec)
    nprobe = params.pop("nprobe", None)
    build_kw = {{"b": "hash_bits"}.get(k, k): v for k, v in params.items()}
    key = (kind, tuple(sorted(build_kw.items())))
    if key not in built:
      for old in list(built):  # free the previous index first (memory)
        del built[old]
      rss0 = _rss_mb()
      t0 = time.perf_counter()
      index = BinaryIndex.from_arrays(codes, np.arange(n), kind=kind, **build_kw)
      build_s = time.perf_counter() - t0
      rss_delta = _rss_mb() - rss0
      files = {}
      if kind == "ivf":
        # Saved and reloaded: reranking then reads the memory-mapped lists.
        d = tmp_root / "ivf"
        save_index(d, index.index, codes, np.arange(n))
        del index
        rss_before_load = _rss_status()
        index = BinaryIndex.load(d, verify=False)
        files = {p.name: p.stat().st_size for p in d.iterdir() if p.suffix in (".faiss", ".npy")}
        files["rss_before_load"] = rss_before_load
      else:
        files = {"index.faiss": _faiss_file_bytes(index.index, True)}
        if kind != "flat":
          files["codes.npy"] = codes.nbytes
      built[key] = (index, build_s, rss_delta, files)
    index, build_s, rss_delta, files = built[key]
    if nprobe is not None:
      index.nprobe = nprobe
    fn = lambda x, index=index: two_stage_search(x, index, k=a.k, l=a.l)  # noqa: E731
    n_single = a.num_single_flat if kind == "flat" else a.num_single
    (scores, rows), ms_b, ms_s = _time_search(fn, q, n_single)
    t1 = time.perf_counter()
    index.index.search(pack_codes(q), min(a.l, n))
    stage1 = (time.perf_counter() - t1) * 1000 / len(q)
    if kind == "ivf":
      rows = np.asarray(index.ids)[np.maximum(rows, 0)] * (rows >= 0) - (rows < 0)
    disk = sum(v for k, v in files.items() if k != "rss_before_load")
    row = {"name": f"bpr-{kind}", "spec": spec, "ms_per_query": round(ms_b, 3),
           "ms_per_query_single": round(ms_s, 3), "num_single": n_single,
           "stage1_ms_per_query": round(stage1, 3),
           "build_s": round(build_s, 2), "build_rss_delta_mb": round(rss_delta, 1),
           "faiss_bytes_per_passage": round(files.get("index.faiss", 0) / n, 2),
           "found_k_fraction": round(float((rows >= 0).mean()), 4)}
    if kind == "ivf":
      # In RAM: the lists (codes + 8-byte row ids) + quantiser; ids.npy is mmapped
      # (only result ids are touched); bytes on disk add ids.npy.
      row["index_bytes_per_passage"] = round(files["index.faiss"] / n, 2)
      row["disk_bytes_per_passage"] = round(disk / n, 2)
      rss_now = _rss_status()
      row["rss_after_search_mb"] = rss_now
      row["rss_before_load_mb"] = files["rss_before_load"]
    else:
      row["index_bytes_per_passage"] = round((disk + ids_bytes) / n, 2)
      row["disk_bytes_per_passage"] = round((disk + ids_bytes) / n, 2)
    for k_ in ("hash_bits", "nflip", "nhash", "nlist", "nprobe"):
      if k_ in index.meta:
        row[k_] = index.meta[k_]
    if kind == "ivf":
      row["nprobe"] = index.nprobe
    if kind == "flat" and flat_rows is None:
      flat_rows = rows
    if flat_rows is not None:
      for kk in (10, 100):
        if kk <= min(a.k, rows.shape[1]):
          row[f"top{kk}_overlap_vs_flat"] = round(float(np.mean(
              [len(set(x) & set(y)) / kk for x, y in zip(rows[:, :kk].tolist(),
                                                         flat_rows[:, :kk].tolist())])), 4)
    res["rows"].append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
    del fn, scores, rows
  built.clear()
  shutil.rmtree(tmp_root, ignore_errors=True)
  fmax = parse_size(a.float_max_n)
  if n <= fmax:
    from bpr_jax.codes import unpack_codes
    rng = np.random.default_rng(a.seed + 1)
    fl = faiss.IndexFlatIP(D)
    for s in range(0, n, GEN_CHUNK // 8):
      block = unpack_codes(codes[s:s + GEN_CHUNK // 8])
      block += 0.5 * rng.standard_normal(block.shape, dtype=np.float32)
      fl.add(block)
      del block
    faiss.cvar.distance_compute_blas_threshold = 1
    fn = lambda x: fl.search(x, a.k)  # noqa: E731
    _, ms_b, ms_s = _time_search(fn, q, min(a.num_single, 20))
    row = {"name": "float-flat-ip", "ms_per_query": round(ms_b, 3),
           "ms_per_query_single": round(ms_s, 3),
           "index_bytes_per_passage": round((4 * D * n + ids_bytes) / n, 2), "extrapolated": False}
    res["rows"].append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  res["peak_rss_mb"] = round(_peak_rss_mb(), 1)
  res["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
  return res


def threads_compare(a) -> dict:
  """ms/query with 1 vs 2 faiss threads, stage 1 alone and two-stage."""
  import faiss
  import numpy as np

  sys.path.insert(0, str(ROOT))
  from bpr_jax.codes import pack_codes
  from bpr_jax.index import BinaryIndex
  from bpr_jax.search import two_stage_search

  n = parse_size(a.threads_compare)
  codes, q, _ = make_data(n, a.num_queries, a.seed)
  qc = pack_codes(q)
  out = {"n": n, "num_queries": a.num_queries, "num_single": a.num_single, "l": a.l,
         "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3]), "rows": []}
  for kind in ("flat", "ivf"):
    index = BinaryIndex.from_arrays(codes, np.arange(n), kind=kind)
    for threads in (1, 2, 1, 2):  # twice each, interleaved: the load drifts
      faiss.omp_set_num_threads(threads)
      index.index.search(qc[:1], a.l)
      t0 = time.perf_counter()
      index.index.search(qc, a.l)
      s1_b = (time.perf_counter() - t0) * 1000 / len(qc)
      t0 = time.perf_counter()
      for i in range(a.num_single):
        index.index.search(qc[i:i + 1], a.l)
      s1_s = (time.perf_counter() - t0) * 1000 / a.num_single
      fn = lambda x, index=index: two_stage_search(x, index, k=a.k, l=a.l)  # noqa: E731
      _, ts_b, ts_s = _time_search(fn, q, a.num_single)
      row = {"kind": kind, "threads": threads, "stage1_ms_batch": round(s1_b, 3),
             "stage1_ms_single": round(s1_s, 3), "two_stage_ms_batch": round(ts_b, 3),
             "two_stage_ms_single": round(ts_s, 3),
             "loadavg": " ".join(open("/proc/loadavg").read().split()[:3])}
      if kind == "ivf":
        row["nprobe"] = index.nprobe
      out["rows"].append(row)
      print(json.dumps(row), file=sys.stderr, flush=True)
    del index
  return out


def threads_markdown(t: dict) -> str:
  lines = ["", f"Faiss threads, N={fmt_size(t['n'])}, batch of {t['num_queries']} and "
           f"{t['num_single']} single questions, l={t['l']} (same structured codes; load average "
           f"at start {t['loadavg_start']}; each setting timed twice, interleaved):", "",
           "| kind | threads | stage-1 ms/q batch | stage-1 ms/q single | two-stage ms/q batch "
           "| two-stage ms/q single | load avg |", "|---|---|---|---|---|---|---|"]
  for r in t["rows"]:
    name = r["kind"] + (f" (nprobe={r['nprobe']})" if "nprobe" in r else "")
    lines.append(f"| {name} | {r['threads']} | {r['stage1_ms_batch']} | {r['stage1_ms_single']} "
                 f"| {r['two_stage_ms_batch']} | {r['two_stage_ms_single']} | {r['loadavg']} |")
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Driver.


def summarize(results: list[dict], float_max_n: int) -> list[dict]:
  """Adds extrapolated float rows and speed-ups against float flat."""
  measured = [r for r in results if any(x["name"] == "float-flat-ip" for x in r["rows"])]
  ref = max(measured, key=lambda r: r["n"]) if measured else None
  ref_row = None
  if ref is not None:
    ref_row = next(x for x in ref["rows"] if x["name"] == "float-flat-ip")
  for r in results:
    fl = next((x for x in r["rows"] if x["name"] == "float-flat-ip"), None)
    if fl is None and ref_row is not None:
      scale = r["n"] / ref["n"]
      fl = {"name": "float-flat-ip", "ms_per_query": round(ref_row["ms_per_query"] * scale, 3),
            "ms_per_query_single": round(ref_row["ms_per_query_single"] * scale, 3),
            "index_bytes_per_passage": ref_row["index_bytes_per_passage"],
            "extrapolated": True, "extrapolated_from_n": ref["n"]}
      r["rows"].append(fl)
    if fl is not None:
      for x in r["rows"]:
        if x["name"].startswith("bpr-"):
          x["speedup_vs_float_flat"] = round(fl["ms_per_query"] / x["ms_per_query"], 1)
          x["speedup_vs_float_flat_single"] = round(
              fl["ms_per_query_single"] / x["ms_per_query_single"], 1)
  del float_max_n
  return results


HASH_NOTES = """Hash kinds on these codes (task: tune them): a question's sign code and a \
same-cluster passage disagree on ~35% of bits, so an exact or 1-2-flip match of a 10-16 bit key \
is rare and recall needs many tables, small keys and large buckets.  Measured apart (same data, \
1,024 questions, l=1000): at 1M, multihash b=10, nhash=12, nflip=1 reached top-10 overlap \
0.74 with flat (default b=11, nhash=4: 0.27) but at 84 ms/q stage-1 (1 thread, load average \
6-8), 12x the default multihash, with every table adding bucket ids to the ~200 B/passage; \
at 50k (256 questions, 2 threads, load 6), b=8, nhash=12, nflip=1 gave 0.84 at 3.5 ms/q \
stage-1 (flat: 1.2).  At 21M (b=16 keys needed to keep buckets small) both hash kinds fall to ~0.07 overlap. \
Their defaults are kept (b = log2(N) - 8, nflip 2 / 1, 4 tables; b <= 64 enforced); ivf \
dominates them on recall, speed and memory, so it is the kind to use at scale."""


def markdown(results: list[dict], args) -> str:
  cols = ["N", "system", "ms/q batch", "ms/q single", "stage-1 ms/q", "speed-up vs float (batch)",
          "index B/passage (RAM)", "disk B/passage", "top-10 overlap vs flat",
          "top-100 overlap vs flat", "found k", "build s", "peak RSS MB"]
  load = results[0].get("loadavg_start", "?")
  lines = [f"Synthetic structured 768-bit codes (see the module docstring), "
           f"{args.num_queries} questions per batch, {args.num_single} single questions "
           f"({args.num_single_flat} for bpr-flat), k={args.k}, l={args.l}, {args.threads} faiss "
           f"threads, 2-core machine shared with other jobs; load average at the start of each N: "
           + ", ".join(f"{fmt_size(r['n'])}: {r.get('loadavg_start', '?')} (end "
                       f"{r.get('loadavg_end', '?')})" for r in results) + ". "
           "Float flat IP rows marked * are extrapolated linearly in N. ivf rows are saved, "
           "reloaded with the lists memory-mapped, and rerank from the lists (RAM = index.faiss: "
           "codes + 8-byte row ids + centroids; disk adds ids.npy, memory-mapped).", "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in results:
    for x in r["rows"]:
      name = x["name"] + (" *" if x.get("extrapolated") else "")
      extra = ""
      if "hash_bits" in x:
        extra = f" (b={x['hash_bits']}, nflip={x['nflip']}" + (
            f", nhash={x['nhash']})" if "nhash" in x else ")")
      if "nlist" in x:
        extra = f" (nlist={x['nlist']}, nprobe={x['nprobe']})"
      lines.append("| " + " | ".join(str(v) for v in [
          fmt_size(r["n"]), name + extra, x["ms_per_query"], x["ms_per_query_single"],
          x.get("stage1_ms_per_query", ""), x.get("speedup_vs_float_flat", ""),
          x["index_bytes_per_passage"], x.get("disk_bytes_per_passage", ""),
          x.get("top10_overlap_vs_flat", ""), x.get("top100_overlap_vs_flat", ""),
          x.get("found_k_fraction", ""), x.get("build_s", ""), r["peak_rss_mb"]]) + " |")
  big = max(results, key=lambda r: r["n"])
  flat = next((x for x in big["rows"] if x["name"] == "bpr-flat"), None)
  lines += ["", f"Targets at N={fmt_size(big['n'])} (bpr-flat is exact Hamming top-l; hash kinds "
            "trade recall for speed, see their top-10 overlap with bpr-flat):"]
  for x in big["rows"]:
    if not x["name"].startswith("bpr-"):
      continue
    ok_ms = x["ms_per_query"] <= TARGET_MS_21M
    sp = x.get("speedup_vs_float_flat")
    ok_sp = sp is not None and sp >= TARGET_SPEEDUP
    mem = x["index_bytes_per_passage"]
    if x["name"] == "bpr-ivf":
      name_x = f"bpr-ivf (nprobe={x['nprobe']})"
    else:
      name_x = x["name"] + (f" ({x['spec']})" if ":" in x.get("spec", "") else "")
    ok_mem = abs(mem - 104) <= 0.05 * 104
    overlap = x.get("top10_overlap_vs_flat", "")
    lines.append(
        f"- {name_x}: {x['ms_per_query']} ms/q batched (<= {TARGET_MS_21M:.0f}: "
        f"{'met' if ok_ms else 'NOT met'}); {sp}x vs float flat (>= {TARGET_SPEEDUP:.0f}x: "
        f"{'met' if ok_sp else 'NOT met'}); {mem} B/passage (104 +- 5%: "
        f"{'met' if ok_mem else 'NOT met'}); top-10 overlap with bpr-flat {overlap}")
  ivf = [x for x in big["rows"] if x["name"] == "bpr-ivf" and "rss_after_search_mb" in x]
  if ivf:
    before, after = ivf[0]["rss_before_load_mb"], ivf[-1]["rss_after_search_mb"]
    lines += ["", f"ivf memory at N={fmt_size(big['n'])}: index.faiss is "
              f"{ivf[0]['index_bytes_per_passage']} B/passage ({ivf[0]['disk_bytes_per_passage']} "
              "with ids.npy on disk). Loading it (lists memory-mapped) and running every ivf row "
              f"moved RssAnon {before['RssAnon']} -> {after['RssAnon']} MB and RssFile "
              f"{before['RssFile']} -> {after['RssFile']} MB: the lists are page cache, touched "
              "by the searches and by reranking (which reads the same mapping, no second copy); "
              "no anonymous memory is added. Peak RSS of the run includes the generated codes "
              "(96 B/passage) and the other kinds' indexes built before."]
  lines += ["", HASH_NOTES]
  del flat
  md = "\n".join(lines) + "\n"
  tpath = pathlib.Path(args.output_dir) / f"{args.name or 'search_speed'}.threads.json"
  if tpath.exists():
    md += threads_markdown(json.loads(tpath.read_text()))
  return md


def main(argv=None) -> None:
  a = _args(argv)
  if a.one is not None:
    print(json.dumps(run_one(a)))
    return
  env = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads),
             JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
             XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
  name = a.name or ("search_speed_small" if a.small else "search_speed")
  out = pathlib.Path(a.output_dir)
  if a.threads_compare is not None:
    out.mkdir(parents=True, exist_ok=True)
    t = threads_compare(a)
    (out / f".{name}.threads.json.tmp").write_text(json.dumps(t, indent=2) + "\n")
    os.replace(out / f".{name}.threads.json.tmp", out / f"{name}.threads.json")
    print(threads_markdown(t))
    return
  if a.rebuild_md:
    results = json.loads((out / f"{name}.json").read_text())
    md = markdown(results, a)
    (out / f".{name}.md.tmp").write_text(md)
    os.replace(out / f".{name}.md.tmp", out / f"{name}.md")
    print(md)
    return
  results = []
  for size in a.sizes.split(","):
    cmd = [sys.executable, __file__, "--one", size] + [
        f"--{k}={v}" for k, v in (("kinds", a.kinds), ("num_queries", a.num_queries),
                                  ("num_single", a.num_single), ("k", a.k), ("l", a.l),
                                  ("float_max_n", a.float_max_n), ("threads", a.threads),
                                  ("num_single_flat", a.num_single_flat),
                                  ("seed", a.seed))]
    print(f"== N={size}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, text=True, check=False)
    if proc.returncode != 0:
      raise SystemExit(f"error: N={size} failed with exit code {proc.returncode}")
    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"   done in {time.time() - t0:.0f}s", flush=True)
  results = summarize(results, parse_size(a.float_max_n))
  out.mkdir(parents=True, exist_ok=True)
  md = markdown(results, a)
  for suffix, text in ((".json", json.dumps(results, indent=2) + "\n"), (".md", md)):
    tmp = out / f".{name}{suffix}.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / f"{name}{suffix}")
  print(md)


if __name__ == "__main__":
  main()
