"""SciFact on a lent GPU (issue 11, item 7): the dev-selected BPR recipes and DPR, many epochs, one call.

The GPU image has jax, flax, optax, orbax, transformers, tokenizers and safetensors, but not faiss,
ml-collections, pytrec-eval-terrier, bm25s, ijson or tensorboardX, and only the repository travels
(../shared stays behind; 64 MiB with the carried paths). So the work has three halves:

  pack     (here)  writes CARRY (default .device/, ignored by git, never committed):
                     wheels/                the missing packages for CPython 3.12 (pip download, or
                                            copied from --wheel_dir)
                     shared/models/all-MiniLM-L6-v2/model.safetensors.xz
                                            MiniLM in float16, xz (87 MB in float32 does not fit;
                                            the rounding error per tensor is in the manifest)
                     shared/models/all-MiniLM-L6-v2/...   config, tokenizer files, licence
                     shared/data/scifact/   corpus.jsonl.xz, queries.jsonl.xz, qrels/*.tsv
                     manifest.json          every file's size and sha256 (of the unpacked bytes),
                                            the float16 error, the planned runs
                   and refuses (writing nothing) when the tree and CARRY would not travel.
  run      (there) unpacks CARRY into --scratch (sha256-checked), then for each planned run calls
                   `benchmarks/scifact.py --stage=finetune` (the project's commands: BM25 mining,
                   train, export, encode, index, evaluate on dev and test) with BPR_SHARED_DIR at the
                   unpacked copy and one XLA compilation cache for all of them. After every run it
                   writes OUT/scifact_device.json; a run that would pass --deadline_s is not started,
                   one that passes it is stopped (SIGTERM: training saves and exits, nothing exported).
  collect  (here)  checks the fetched JSON (an accelerator, the full corpus) and writes
                   benchmarks/results/scifact_device.json; `scifact.py --stage=report` lists its rows.

Runs (planned from benchmarks/results/scifact.json): the BPR variant chosen on dev at each of --sizes
(bytes per passage; 48 first) with its CPU overrides, and the main DPR run after the first, each
with the budget replaced by --epochs (40, the paper's) at --batch (64) and checkpoints only at the end.
With --teacher_runs=nested,label48,free48, issue 24's runs follow (benchmarks/scifact_teacher.py;
free48's teacher export and mining and label48's DPR teacher are made on the device).
Tags: gpu-VARIANT-eEPOCHS-bBATCH. The model starts from MiniLM rounded to float16, not the CPU runs'
float32, which the JSON states.

  python benchmarks/scifact_device.py pack --cpu_work_dir=/tmp/scifact-bench   # here; prints the device command
  # device tool: run(command=<printed>, carry=[".device"], timeout_s=560)
  python benchmarks/scifact_device.py collect --input=FILES_AT/scifact_device.json
  python benchmarks/scifact.py --stage=report --work_dir=/tmp/scifact-bench

  # CPU check of the whole path at a small size (a subset corpus; never collected):
  python benchmarks/scifact_device.py pack --carry=/tmp/dev-smoke/carry --max_docs=1300 --wheel_dir=/tmp/whl
  OPENBLAS_NUM_THREADS=1 python benchmarks/scifact_device.py run --carry=/tmp/dev-smoke/carry \\
      --scratch=/tmp/dev-smoke/scratch --out=/tmp/dev-smoke/out --num_train_steps=2 --batch=8 --sizes=48
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks.common import REPO, RESULTS, log, shared_dir  # noqa: E402

CARRY = REPO / ".device"
TRAVEL_LIMIT = 64 * 2 ** 20  # the device tool's limit on the tree plus the carried paths
WHEELS = ("faiss-cpu==1.15.1", "ml-collections==1.1.0", "pytrec-eval-terrier==0.5.11", "bm25s==0.3.16",
          "ijson==3.6.0", "tensorboardX==2.6.5")
MODEL = "models/all-MiniLM-L6-v2"
DATA = "data/scifact"
XZ_MIN_BYTES = 64 * 1024  # files above this travel xz-compressed
BUDGET_KEYS = ("num_train_steps", "num_epochs", "batch_size", "checkpoint_every")
DEVICE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
    "{carry}/wheels/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; "
    "PYTHONUNBUFFERED=1 python3 benchmarks/scifact_device.py run --carry={carry} --out=$OUT 2>&1 | tee $OUT/run.log")


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- plan


def plan_runs(result: dict, sizes: list[float], epochs: int, batch: int, num_train_steps: int = 0,
              teacher_runs: tuple[str, ...] = ()) -> list[dict]:
  """The device runs: per size the dev-selected BPR test row's run, and the main DPR after the first;
  then each of `teacher_runs` (benchmarks/scifact_teacher.py's tags: free48, label48, nested), whose
  recipe overrides are made on the device (`teacher_overrides`: its paths, its DPR as label48's teacher).

  Each keeps its CPU overrides except the budget (BUDGET_KEYS), replaced by `epochs` at `batch`
  (or `num_train_steps` > 0, for CPU checks), with one checkpoint at the end."""
  rows = [r for r in result["rows"] if r.get("split") == "test"]
  budget = ([f"num_train_steps={num_train_steps}"] if num_train_steps > 0
            else ["num_train_steps=-1", f"num_epochs={epochs}"]) + [f"batch_size={batch}", "checkpoint_every=100000"]
  suffix = f"s{num_train_steps}" if num_train_steps > 0 else f"e{epochs}"

  def spec(mode, row):
    kept = [o for o in row.get("overrides", []) if o.split("=", 1)[0] not in BUDGET_KEYS]
    variant = row.get("variant", "") or "main"
    return {"mode": mode, "cpu_variant": row.get("variant", ""), "bytes_per_passage": row["bytes_per_passage"],
            "tag": f"gpu-{variant}-{suffix}-b{batch}", "overrides": kept + budget}
  runs = []
  for nbytes in sizes:
    chosen = [r for r in rows if r["name"] == "bpr-flat" and r.get("selected_on_dev") and r["bytes_per_passage"] == nbytes]
    if not chosen:
      raise SystemExit(f"scifact.json has no BPR row chosen on dev at {nbytes:g} B/passage "
                       f"(chosen: {sorted({r['bytes_per_passage'] for r in rows if r.get('selected_on_dev')})})")
    runs.append(spec("bpr", chosen[0]))
  dpr = next((r for r in rows if r["name"] == "dpr-flat" and not r.get("variant")), None)
  if dpr is None:
    raise SystemExit("scifact.json has no main dpr-flat row")
  runs.insert(1, spec("dpr", dpr))
  from benchmarks.scifact_teacher import runs as teacher_recipes
  for tag in teacher_runs:
    if tag not in teacher_recipes(pathlib.Path("W")):
      raise SystemExit(f"--teacher_runs: unknown run {tag!r}; choose from {', '.join(teacher_recipes(pathlib.Path('W')))}")
    runs.append({"mode": "bpr", "cpu_variant": tag, "bytes_per_passage": None, "teacher_run": tag,
                 "tag": f"gpu-{tag}-{suffix}-b{batch}", "overrides": budget})
  return runs


def teacher_overrides(spec: dict, work: pathlib.Path, env: dict, dpr_tag: str) -> list[str]:
  """A teacher run's recipe overrides for the device's work dir (budget keys left to `spec`), after
  making what it needs there: MiniLM's export and its mined data (free48; `scifact_teacher.py commands`),
  or the device's own DPR run as label48's teacher."""
  from benchmarks import scifact
  from benchmarks.scifact_teacher import runs as teacher_recipes
  tag = spec["teacher_run"]
  beir, env = scifact.prepare_train_data(work)[0], dict(env)
  teacher, mined = work / "teacher-minilm", work / "teacher_mined_train.json"
  if tag == "free48":
    if not (teacher / "bpr.json").exists():
      scifact.run_command([sys.executable, "-m", "bpr_jax.export",
                           f"--hf_model={pathlib.Path(env['BPR_SHARED_DIR']) / 'models' / 'all-MiniLM-L6-v2'}",
                           "--pooling=mean", "--mode=dpr", f"--output={teacher}"], env, work / "teacher-export.log")
    scifact.run_command([sys.executable, "-m", "bpr_jax.mine_negatives", f"--teacher={teacher}", f"--beir_dir={beir}",
                         "--split=train", "--similarity=cos", f"--output={mined}"], env, work / "teacher-mine.log")
  args = teacher_recipes(work, dpr_model=scifact.run_dir(work, "dpr", dpr_tag) / "model")[tag]
  kept = [a.split("=", 1)[1] for a in args if a.startswith("--override=")]
  return [o for o in kept if o.split("=", 1)[0] not in BUDGET_KEYS] + spec["overrides"]


# ----------------------------------------------------------------------------- pack / unpack


def float16_model(path: pathlib.Path) -> tuple[bytes, dict]:
  """The safetensors file with float tensors rounded to float16, and the rounding error."""
  import numpy as np
  from safetensors.numpy import load_file, save
  tensors = load_file(str(path))
  out, worst_abs, worst_rel = {}, 0.0, 0.0
  for name, t in tensors.items():
    if t.dtype.kind != "f":
      out[name] = t
      continue
    h = t.astype(np.float16)
    if not np.all(np.isfinite(h)):
      raise SystemExit(f"{path}: tensor {name} does not fit float16 (max |w| {float(np.max(np.abs(t))):.3g})")
    err = float(np.max(np.abs(h.astype(np.float32) - t))) if t.size else 0.0
    worst_abs = max(worst_abs, err)
    worst_rel = max(worst_rel, err / max(float(np.max(np.abs(t))), 1e-30) if t.size else 0.0)
    out[name] = h
  return save(out), {"dtype": "float16", "max_abs_error": worst_abs, "max_error_over_max_abs_weight": worst_rel,
                     "float32_bytes": path.stat().st_size}


def subset_corpus(beir: pathlib.Path, max_docs: int) -> bytes:
  """CPU checks only: the documents of every qrels file, then the first others up to `max_docs`."""
  wanted = set()
  for q in sorted((beir / "qrels").glob("*.tsv")):
    for line in q.read_text(encoding="utf-8").splitlines()[1:]:
      if line.strip():
        wanted.add(line.split("\t")[1])
  keep, others = [], []
  for line in (beir / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
    if line.strip():
      (keep if json.loads(line)["_id"] in wanted else others).append(line)
  keep += others[:max(0, max_docs - len(keep))]
  return ("\n".join(keep) + "\n").encode()


def travelling_bytes(repo: pathlib.Path, skip: pathlib.Path | None = None) -> int:
  """Bytes of the tree that travels without `carry`: tracked and untracked-not-ignored files
  (those under `skip`, the carry being written, excluded)."""
  out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                       capture_output=True, check=True).stdout
  paths = [(repo / p).resolve() for p in out.decode().split("\0") if p]
  return sum(p.stat().st_size for p in paths if p.is_file() and not (skip and p.is_relative_to(skip)))


def download_wheels(dest: pathlib.Path, wheel_dir: str | None) -> list[str]:
  """The WHEELS for CPython 3.12 / manylinux x86-64 (copied from `wheel_dir` when given)."""
  dest.mkdir(parents=True)
  if wheel_dir:
    for w in sorted(pathlib.Path(wheel_dir).glob("*.whl")):
      shutil.copy2(w, dest / w.name)
  else:
    plats = [a for p in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_24", "manylinux_2_17", "manylinux2014",
                         "manylinux1") for a in ("--platform", f"{p}_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *plats, "-d", str(dest), *WHEELS], check=True)
  names = sorted(w.name for w in dest.glob("*.whl"))
  if not names:
    raise SystemExit(f"no wheels in {wheel_dir or dest}")
  return names


def pack(carry: pathlib.Path, source: pathlib.Path, *, wheel_dir: str | None = None, max_docs: int = 0,
         limit: int = TRAVEL_LIMIT, repo: pathlib.Path = REPO, cpu_negatives: str | None = None) -> dict:
  """Writes `carry` (see the module docstring) from the shared folder `source`; returns the manifest."""
  model, data = source / MODEL, source / DATA
  for need in (model / "model.safetensors", data / "corpus.jsonl", data / "qrels"):
    if not need.exists():
      raise SystemExit(f"{need}: not found (set BPR_SHARED_DIR)")
  carry = carry.resolve()
  carry.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{carry.name}.tmp-", dir=carry.parent))
  try:
    files = {}

    def put(rel: str, data_bytes: bytes) -> None:
      packed = lzma.compress(data_bytes, preset=6) if len(data_bytes) > XZ_MIN_BYTES else data_bytes
      name = rel + (".xz" if packed is not data_bytes else "")
      (tmp / "shared" / name).parent.mkdir(parents=True, exist_ok=True)
      (tmp / "shared" / name).write_bytes(packed)
      files[rel] = {"stored_as": name, "bytes": len(data_bytes), "stored_bytes": len(packed), "sha256": sha256(data_bytes)}
    log(f"rounding {model / 'model.safetensors'} to float16 and compressing (about half a minute)")
    weights, fp16 = float16_model(model / "model.safetensors")
    put(f"{MODEL}/model.safetensors", weights)
    for f in sorted(model.rglob("*")):
      if f.is_file() and f.suffix not in (".safetensors", ".bin", ".h5", ".msgpack", ".onnx"):
        put(f"{MODEL}/{f.relative_to(model)}", f.read_bytes())
    put(f"{DATA}/corpus.jsonl", subset_corpus(data, max_docs) if max_docs else (data / "corpus.jsonl").read_bytes())
    put(f"{DATA}/queries.jsonl", (data / "queries.jsonl").read_bytes())
    for q in sorted((data / "qrels").glob("*.tsv")):
      put(f"{DATA}/qrels/{q.name}", q.read_bytes())
    wheels = download_wheels(tmp / "wheels", wheel_dir)
    carried = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    tree = travelling_bytes(repo, skip=tmp.resolve())
    negatives = pathlib.Path(cpu_negatives) if cpu_negatives else None
    manifest = {"files": files, "model_float16": fp16, "wheels": wheels, "subset_corpus_max_docs": max_docs,
                "cpu_hard_negatives_sha256": sha256(negatives.read_bytes()) if negatives and negatives.is_file() else None,
                "carry_bytes": carried, "tree_bytes": tree, "limit_bytes": limit, "source": str(source)}
    if carried + tree > limit:
      raise SystemExit(f"would not travel: tree {tree / 2**20:.1f} MiB + carry {carried / 2**20:.1f} MiB > "
                       f"{limit / 2**20:.0f} MiB; nothing written")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if carry.exists():
      shutil.rmtree(carry)
    os.replace(tmp, carry)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  log(f"wrote {carry}: {carried / 2**20:.1f} MiB carried + {tree / 2**20:.1f} MiB tree of {limit / 2**20:.0f} MiB")
  return manifest


def unpack(carry: pathlib.Path, dest: pathlib.Path) -> dict:
  """Restores the shared folder of `carry` under `dest` (each file checked against its sha256)."""
  manifest = json.loads((carry / "manifest.json").read_text())
  for rel, f in manifest["files"].items():
    raw = (carry / "shared" / f["stored_as"]).read_bytes()
    data = lzma.decompress(raw) if f["stored_as"].endswith(".xz") else raw
    if sha256(data) != f["sha256"]:
      raise SystemExit(f"{carry / 'shared' / f['stored_as']}: sha256 differs from the manifest (damaged in transit?)")
    out = dest / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
  return manifest


# ----------------------------------------------------------------------------- run (on the device)


def run_one(spec: dict, work: pathlib.Path, env: dict, timeout_s: float) -> dict:
  """`scifact.py --stage=finetune` for one planned run, stopped (SIGTERM, then kill) after `timeout_s`."""
  cmd = [sys.executable, str(REPO / "benchmarks" / "scifact.py"), "--stage=finetune", f"--work_dir={work}",
         f"--modes={spec['mode']}", f"--tag={spec['tag']}"] + [f"--override={o}" for o in spec["overrides"]]
  log(" ".join(cmd))
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
  try:
    rc = proc.wait(timeout=max(timeout_s, 1))
    status = "done" if rc == 0 else f"failed (exit {rc})"
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
      proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    status = "stopped at the deadline"
  return {"status": status, "seconds": round(time.perf_counter() - t0, 1)}


def run(carry: pathlib.Path, scratch: pathlib.Path, out: pathlib.Path, *, sizes, epochs: int, batch: int,
        num_train_steps: int, deadline_s: float, teacher_runs: tuple[str, ...] = ()) -> dict:
  """Unpacks, trains and evaluates the planned runs, writing OUT/scifact_device.json after each."""
  from benchmarks import scifact
  start = time.perf_counter()
  out.mkdir(parents=True, exist_ok=True)
  shared = scratch / "shared"
  manifest = unpack(carry, shared)
  work = scratch / "work"
  env = dict(os.environ, BPR_SHARED_DIR=str(shared), JAX_COMPILATION_CACHE_DIR=str(scratch / "jax-cache"))
  from benchmarks.scifact_teacher import describe_row
  runs = plan_runs(json.loads((RESULTS / "scifact.json").read_text()), sizes, epochs, batch, num_train_steps,
                   teacher_runs)
  result = {"benchmark": "scifact-device", **common.machine_info(), "epochs": epochs, "batch_size": batch,
            "num_train_steps": num_train_steps, "deadline_s": deadline_s,
            "initial_model": f"all-MiniLM-L6-v2 rounded to float16 (max |error| "
                             f"{manifest['model_float16']['max_abs_error']:.2e}), read as float32",
            "subset_corpus_max_docs": manifest["subset_corpus_max_docs"], "runs": [], "rows": []}
  longest = 0.0
  for spec in runs:
    elapsed = time.perf_counter() - start
    if elapsed + 1.15 * longest > deadline_s:
      result["runs"].append(dict(spec, status="not started: the deadline"))
      continue
    if spec.get("teacher_run"):
      dpr_tag = next(r["tag"] for r in runs if r["mode"] == "dpr")
      spec = dict(spec, overrides=teacher_overrides(spec, work, env, dpr_tag))
    done = run_one(spec, work, env, deadline_s - elapsed)
    longest = max(longest, done["seconds"])
    rows = []
    if done["status"] == "done":
      rows = scifact.finetuned_rows(work, spec["tag"]) + scifact.finetuned_rows(work, spec["tag"], "dev")
      rows = [describe_row(r) for r in rows]  # teacher, labels, code_bits, nested_bits
      for r in rows:
        r.update(device=result["device_kind"], backend=result["backend"], cpu_variant=spec["cpu_variant"])
    result["runs"].append(dict(spec, **done))
    result["rows"] += rows
    hn = work / "hard_negatives_train.json"
    if result.get("hard_negatives_sha256") is None and hn.exists():  # mined once, by the first run
      result["hard_negatives_sha256"] = sha256(hn.read_bytes())
      result["hard_negatives_same_as_cpu"] = (None if not manifest.get("cpu_hard_negatives_sha256")
                                              else result["hard_negatives_sha256"] == manifest["cpu_hard_negatives_sha256"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    common.write_result(out / "scifact_device.json", result)
    log(f"{spec['tag']}: {done['status']} in {done['seconds']:.0f}s; "
        + ", ".join(f"{r['name']} {r['split']} {r['ndcg@10']:.4f}" for r in rows if r["name"] in ("bpr-flat", "dpr-flat")))
  return result


def collect(path: pathlib.Path, dest: pathlib.Path) -> dict:
  """Checks a fetched scifact_device.json and writes it into the results."""
  result = json.loads(path.read_text())
  if result.get("benchmark") != "scifact-device":
    raise SystemExit(f"{path}: not a scifact_device.py result")
  if not common.is_accelerator(result.get("backend", "")):
    raise SystemExit(f"{path}: ran on backend {result.get('backend')!r}, not an accelerator: not a result")
  if result.get("subset_corpus_max_docs"):
    raise SystemExit(f"{path}: a subset corpus ({result['subset_corpus_max_docs']} documents): a check, not a result")
  if not result.get("rows"):
    raise SystemExit(f"{path}: no finished run ({[r.get('status') for r in result.get('runs', [])]})")
  common.write_result(dest, result)
  log(f"wrote {dest}: {len(result['rows'])} rows from {result['device_kind']}")
  return result


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("action", choices=("pack", "run", "collect", "command"))
  p.add_argument("--carry", default=str(CARRY), help="the carried folder (inside the repository to travel)")
  p.add_argument("--wheel_dir", default=None, help="pack: copy wheels from here instead of pip download")
  p.add_argument("--max_docs", type=int, default=0, help="pack: a subset corpus for CPU checks (0: all)")
  p.add_argument("--cpu_work_dir", default=os.environ.get("BPR_SCIFACT_WORK", "/tmp/bpr-scifact-bench"),
                 help="pack: scifact.py's work dir; the GPU run reports whether its BM25 mining gives the same "
                      "hard_negatives_train.json as the CPU runs' there")
  p.add_argument("--scratch", default="/tmp/bpr-device", help="run: where the data is unpacked and runs go")
  p.add_argument("--out", default=os.environ.get("OUT", "/tmp/bpr-device-out"), help="run: result folder")
  p.add_argument("--sizes", default="48,96,16", help="run: bytes per passage of the BPR runs, in order")
  p.add_argument("--epochs", type=int, default=40)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--num_train_steps", type=int, default=0, help="run: > 0 replaces --epochs (CPU checks)")
  p.add_argument("--teacher_runs", default="", help="run: issue 24's runs after the others, e.g. "
                 "nested,label48,free48 (benchmarks/scifact_teacher.py; label48's teacher is the device's DPR)")
  p.add_argument("--deadline_s", type=float, default=480.0, help="run: no run starts or continues after this")
  p.add_argument("--input", default=None, help="collect: the fetched scifact_device.json")
  args = p.parse_args(argv)
  carry = pathlib.Path(args.carry)
  rel = os.path.relpath(carry.resolve(), REPO)
  if args.action == "pack":
    pack(carry, shared_dir(), wheel_dir=args.wheel_dir, max_docs=args.max_docs,
         cpu_negatives=str(pathlib.Path(args.cpu_work_dir) / "hard_negatives_train.json"))
  if args.action in ("pack", "command"):
    print(f"device command (carry=[{rel!r}], timeout_s=560):\n{DEVICE_COMMAND.format(carry=rel)}")
  elif args.action == "run":
    run(carry, pathlib.Path(args.scratch), pathlib.Path(args.out), sizes=[float(s) for s in args.sizes.split(",")],
        epochs=args.epochs, batch=args.batch, num_train_steps=args.num_train_steps, deadline_s=args.deadline_s,
        teacher_runs=tuple(t for t in args.teacher_runs.split(",") if t))
  elif args.action == "collect":
    if not args.input:
      p.error("collect needs --input")
    collect(pathlib.Path(args.input), RESULTS / "scifact_device.json")


if __name__ == "__main__":
  main()
