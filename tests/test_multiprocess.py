"""Multi-process runs on one machine: 2 processes x 4 fake CPU devices vs 1 process x 8.

Each process is a real `python -m bpr_jax.main` / `python -m bpr_jax.encode` launched with
the BPR_COORDINATOR_ADDRESS / BPR_NUM_PROCESSES / BPR_PROCESS_ID variables of
launch/multinode.sh; jax.distributed then uses a localhost coordinator and gloo collectives
(jax's default CPU collectives). Every subprocess has a deadline; when one fails the others are
killed and the tail of every process's log is shown.

XLA's CPU compiler dominates the cost here, so the children run with cheap LLVM settings
(the same for every run compared) and a model shrunk below configs/tiny.py.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from bpr_jax.data.tiny import make_tiny_dataset
from bpr_jax.export_format import save_exported
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.tokenization import Tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Variables through which a parent launch would leak into a child's multi-process detection.
LAUNCH_VARS = ("BPR_COORDINATOR_ADDRESS", "BPR_NUM_PROCESSES", "BPR_PROCESS_ID", "JAX_NUM_PROCESSES",
               "JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID", "SLURM_JOB_ID", "SLURM_NTASKS",
               "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
STEPS = 3
TRAIN_FLAGS = (
    "--config=configs/tiny.py", f"--config.num_train_steps={STEPS}", "--config.eval_every=0",
    f"--config.checkpoint_every={STEPS}", "--config.batch_size=16", "--config.log_every=1",
    "--config.async_checkpoints=False", "--config.prefetch=0",
    "--config.model.bert.num_hidden_layers=1", "--config.model.bert.hidden_size=32",
    "--config.model.bert.num_attention_heads=2", "--config.model.bert.intermediate_size=64",
    "--config.data.question_max_length=8", "--config.data.passage_max_length=16")
TIMEOUT_S = 240


def free_port() -> int:
  """A TCP port that was free a moment ago (the coordinator binds it right after)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(num_devices: int, process_id: int | None = None, num_processes: int = 2,
              port: int | None = None) -> dict:
  """Environment of one child: `num_devices` CPU devices, in a launch of `num_processes` if a port is given."""
  env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
  env.update(JAX_PLATFORMS="cpu", OPENBLAS_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
             PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices} {FAST_XLA}")
  env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
  if port is not None:
    env.update(BPR_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", BPR_NUM_PROCESSES=str(num_processes),
               BPR_PROCESS_ID=str(process_id))
  return env


def _tail(path: pathlib.Path, chars: int = 4000) -> str:
  text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no log)"
  return text[-chars:]


def run_group(jobs: list[tuple[str, list[str], dict]], log_dir: pathlib.Path,
              timeout: float = TIMEOUT_S) -> None:
  """Runs (name, argv, env) jobs concurrently; all must exit 0 before `timeout` seconds.

  On the first failure (or the deadline) the remaining jobs are killed and the test fails
  with the last lines of every job's combined stdout/stderr.
  """
  log_dir.mkdir(parents=True, exist_ok=True)
  procs = []
  try:
    for name, argv, env in jobs:
      log = open(log_dir / f"{name}.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
      procs.append((name, subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + timeout
    failure = None
    while failure is None:
      codes = {name: p.poll() for name, p, _ in procs}
      bad = [f"{name} exited {code}" for name, code in codes.items() if code not in (None, 0)]
      if bad:
        failure = "; ".join(bad)
      elif all(code == 0 for code in codes.values()):
        return
      elif time.monotonic() > deadline:
        failure = f"timed out after {timeout:.0f}s: " + ", ".join(n for n, c in codes.items() if c is None)
      else:
        time.sleep(0.2)
  finally:
    for _, p, log in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
      log.close()
  tails = "\n".join(f"----- {name} (exit {p.returncode}) -----\n{_tail(log_dir / f'{name}.log')}"
                    for name, p, _ in procs)
  pytest.fail(f"{failure}\n{tails}", pytrace=False)


def python(module: str, *flags: str) -> list[str]:
  return [sys.executable, "-m", module, *flags]


# ----------------------------------------------------------------------------- training


def checkpoint_state(workdir: pathlib.Path, step: int) -> dict:
  """The saved train state of `step` as numpy arrays (no devices or shardings needed)."""
  path = workdir / "checkpoints" / str(step) / "state"
  assert path.is_dir(), f"no checkpoint at {path}; have {sorted(os.listdir(path.parent.parent))}"
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(path)
  tree = getattr(meta, "item_metadata", meta)  # StepMetadata in newer orbax versions
  tree = getattr(tree, "tree", tree)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def assert_trees_close(actual: dict, expected: dict, rtol: float = 1e-5, atol: float = 1e-6) -> None:
  """Leaf-wise max|a - e| <= rtol * max|e| + atol: relative to each tensor's scale.

  `atol` is for tensors that hold only rounding noise: the attention key biases get an exactly
  zero true gradient (softmax ignores a per-query shift) and stay within ~1e-7 of their zero
  init, with digits that depend on the order of the cross-device sums.
  """
  flat_a = dict(jax.tree_util.tree_leaves_with_path(actual))
  flat_e = dict(jax.tree_util.tree_leaves_with_path(expected))
  assert flat_a.keys() == flat_e.keys()
  worst = []
  for key, e in flat_e.items():
    a = np.asarray(flat_a[key], np.float64)
    e = np.asarray(e, np.float64)
    assert a.shape == e.shape, f"{jax.tree_util.keystr(key)}: shape {a.shape} != {e.shape}"
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    err = float(np.max(np.abs(a - e))) if e.size else 0.0
    if err > rtol * scale + atol:
      worst.append(f"{jax.tree_util.keystr(key)}: max|diff| {err:.3g} vs scale {scale:.3g}")
  assert not worst, "parameters differ:\n" + "\n".join(worst[:20])


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """The training rows (those with a loss) of WORKDIR/metrics.jsonl."""
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if "loss" in r]


def test_two_processes_train_like_one_process_with_all_devices(tmp_path):
  """2 processes x 4 devices (one shared workdir) end with the params of 1 process x 8 devices."""
  single, multi = tmp_path / "single", tmp_path / "multi"
  port = free_port()
  run_group([
      ("single", python("bpr_jax.main", f"--workdir={single}", *TRAIN_FLAGS), child_env(8)),
      *[(f"process{i}", python("bpr_jax.main", f"--workdir={multi}", *TRAIN_FLAGS), child_env(4, i, 2, port))
        for i in range(2)],
  ], tmp_path / "logs")
  log0 = (tmp_path / "logs" / "process0.log").read_text(encoding="utf-8")
  assert "mesh: 8 devices over 2 processes" in log0

  expected, actual = checkpoint_state(single, STEPS), checkpoint_state(multi, STEPS)
  assert int(actual["step"]) == int(expected["step"]) == STEPS
  assert_trees_close(actual["params"], expected["params"])
  assert_trees_close(actual["opt_state"], expected["opt_state"], rtol=1e-4)
  # Same losses step by step (process 0 writes the metrics), and the steps did update something.
  rows = {name: read_metrics(workdir) for name, workdir in (("single", single), ("multi", multi))}
  assert [r["step"] for r in rows["multi"]] == [r["step"] for r in rows["single"]] == list(range(1, STEPS + 1))
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows["single"])
  np.testing.assert_allclose([r["loss"] for r in rows["multi"]], [r["loss"] for r in rows["single"]], rtol=1e-5)


# ----------------------------------------------------------------------------- encoding

ENCODE_FLAGS = ("--batch_size=40", "--chunk_size=100")  # 400 passages: shard and chunk edges fall on batches


@pytest.fixture(scope="module")
def encode_runs(tmp_path_factory):
  """An exported random tiny model, the tiny passages, and three encodings of them.

  Concurrently: one process over the whole file (the reference) and two independent
  processes with --num_shards=2 --shard_index=0/1.
  """
  root = tmp_path_factory.mktemp("mp_encode")
  paths = make_tiny_dataset(root / "data")
  tokenizer = Tokenizer.from_dir(paths["vocab_dir"])
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
  settings = {"mode": "bpr", "pooling": "mean", "question_max_length": 8, "passage_max_length": 32,
              "code_bits": 32, "hidden_size": 32, "shared_encoder": False}
  save_exported(BertEncoder(config, pooling="mean", rngs=nnx.Rngs(0)),
                BertEncoder(config, pooling="mean", rngs=nnx.Rngs(1)), tokenizer, settings, root / "model")

  def encode(output, *flags):
    return python("bpr_jax.encode", f"--model={root / 'model'}", f"--passages={paths['passages']}",
                  f"--output={output}", *ENCODE_FLAGS, *flags)
  run_group([("single", encode(root / "single"), child_env(2)),
             *[(f"shard{i}", encode(root / "sharded", "--num_shards=2", f"--shard_index={i}"), child_env(2))
               for i in range(2)]], root / "logs")
  return {"root": root, "encode": encode, "single": read_codes(root / "single")}


def read_codes(directory: pathlib.Path) -> dict:
  """codes, ids and manifest of one finished shard directory."""
  assert (directory / "manifest.json").is_file(), f"{directory}: no manifest.json; has {sorted(os.listdir(directory))}"
  with open(directory / "manifest.json", encoding="utf-8") as f:
    manifest = json.load(f)
  return {"codes": np.load(directory / "codes.npy"), "ids": np.load(directory / "ids.npy"), "manifest": manifest}


def assert_shards_union_to(output: pathlib.Path, reference: dict, num_shards: int = 2) -> None:
  """output/shard_{s:05d} for every s exist and, concatenated in shard order, equal `reference`."""
  names = sorted(p.name for p in output.iterdir() if p.name.startswith("shard_"))
  assert names == [f"shard_{s:05d}" for s in range(num_shards)], sorted(os.listdir(output))
  shards = [read_codes(output / name) for name in names]
  total = len(reference["ids"])
  for s, shard in enumerate(shards):
    m = shard["manifest"]
    assert (m["num_shards"], m["shard_index"]) == (num_shards, s)
    assert (m["start"], m["end"]) == (total * s // num_shards, total * (s + 1) // num_shards)
    assert m["num_passages"] == len(shard["ids"]) == len(shard["codes"]) > 0
  np.testing.assert_array_equal(np.concatenate([s["ids"] for s in shards]), reference["ids"])
  np.testing.assert_array_equal(np.concatenate([s["codes"] for s in shards]), reference["codes"])


def test_encode_shards_union_equals_single_process(encode_runs):
  """--num_shards=2 --shard_index=0/1 in two processes == one process over the whole file."""
  reference = encode_runs["single"]
  assert len(reference["ids"]) == 400 and reference["codes"].shape == (400, 4)
  assert reference["manifest"]["num_shards"] == 1
  assert len(np.unique(reference["codes"], axis=0)) > 100  # a real encoding, not constant codes
  assert_shards_union_to(encode_runs["root"] / "sharded", reference)


def test_encode_distributed_launch_shards_by_process(encode_runs):
  """A real 2-process jax.distributed launch without shard flags: shard s is written by process s."""
  output = encode_runs["root"] / "distributed"
  port = free_port()
  run_group([(f"process{i}", encode_runs["encode"](output), child_env(2, i, 2, port)) for i in range(2)],
            encode_runs["root"] / "logs_distributed")
  assert_shards_union_to(output, encode_runs["single"])
