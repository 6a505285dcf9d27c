"""What every benchmark script shares: paths, the machine description, FLOP formulas, results.

Scripts run as `python benchmarks/NAME.py` from anywhere; each starts with

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from benchmarks import common

so the repository (bpr_jax, configs, benchmarks) imports without installing it.
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


def shared_dir() -> pathlib.Path:
  """$BPR_SHARED_DIR, else shared/ beside the repository (data and models, never copied)."""
  return pathlib.Path(os.environ.get("BPR_SHARED_DIR", str(REPO.parent / "shared")))


def minilm_train_config(batch: int, q_len: int, p_len: int, *, mode: str = "bpr",
                        num_hard_negatives: int = 1):
  """A training config of the shared all-MiniLM-L6-v2 ([CLS] pooling) at the given shape."""
  from configs.common import base_config
  model_dir = shared_dir() / "models" / "all-MiniLM-L6-v2"
  if not (model_dir / "config.json").is_file():
    raise FileNotFoundError(f"{model_dir}: MiniLM not found (set BPR_SHARED_DIR)")
  c = base_config()
  c.mode = mode
  c.batch_size = batch
  c.model.init = "hf"
  c.model.hf_dir = str(model_dir)
  c.model.pooling = "cls"
  c.data.question_max_length = q_len
  c.data.passage_max_length = p_len
  c.data.num_hard_negatives = num_hard_negatives
  return c


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def versions() -> dict[str, str | None]:
  """Versions of the libraries a figure depends on (None where one is not installed)."""
  import importlib
  out: dict[str, str | None] = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "numpy", "faiss", "transformers", "torch"):
    try:
      out[name] = getattr(importlib.import_module(name), "__version__", None)
    except ImportError:
      out[name] = None
  return out


def machine_info(*, with_jax: bool = True) -> dict[str, Any]:
  """The machine a figure was measured on: platform, CPUs, versions, JAX devices, env knobs."""
  info: dict[str, Any] = {
      "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
      "versions": versions(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
      "env": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "XLA_FLAGS", "BPR_SEARCH_THREADS")
              if os.environ.get(k)},
  }
  if with_jax:
    import jax
    devices = jax.devices()
    info.update(backend=jax.default_backend(), device_kind=devices[0].device_kind,
                device_count=len(devices))
  return info


def is_accelerator(backend: str) -> bool:
  """Whether a JAX backend name is a GPU or TPU (figures that count only there)."""
  return backend in ("gpu", "cuda", "rocm", "tpu")


def write_result(path: str | os.PathLike, result: Any) -> pathlib.Path:
  """Writes a results JSON atomically (temp name + rename) and returns its path."""
  from bpr_jax.io import atomic_write_text
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(path, json.dumps(result, indent=2) + "\n")
  return path


def percentile(values: list[float], q: float) -> float:
  """The q-th percentile (0-100) with linear interpolation, as numpy's default."""
  import numpy as np
  return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


# ----------------------------------------------------------------------------- FLOPs of BERT


def matmul_params(bert) -> int:
  """Parameters in the matmuls of the transformer layers (embeddings excluded)."""
  h, i = bert.hidden_size, bert.intermediate_size
  return bert.num_hidden_layers * (4 * h * h + 2 * h * i)


def encoder_forward_flops(bert, length: int) -> float:
  """Forward FLOPs of one sequence of `length` tokens: 2 P_matmul L + 4 layers L^2 hidden."""
  return 2.0 * matmul_params(bert) * length + 4.0 * bert.num_hidden_layers * length * length * bert.hidden_size


def train_step_flops(bert, batch: int, q_len: int, p_len: int, num_neg: int) -> float:
  """Model FLOPs of one BPR/DPR train step (forward + backward = 3x forward) over its sequences:
  `batch` questions of q_len tokens and batch * (1 + num_neg) passages of p_len tokens."""
  return 3.0 * (batch * encoder_forward_flops(bert, q_len)
                + batch * (1 + num_neg) * encoder_forward_flops(bert, p_len))
