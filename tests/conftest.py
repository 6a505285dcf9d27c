"""Test set-up: 8 fake CPU devices and paths to the shared data.

XLA_FLAGS must be set before jax is imported anywhere, so this runs first.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_dir() -> pathlib.Path:
  """The shared data folder: $BPR_SHARED_DIR, else ../shared beside the repo."""
  return pathlib.Path(os.environ.get("BPR_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> pathlib.Path:
  """Shared data; a missing folder is a failure, never a skip (CI always has it)."""
  path = shared_dir()
  if not (path / "models").is_dir():
    pytest.fail(f"shared data not found at {path}; set BPR_SHARED_DIR")
  return path


@pytest.fixture(scope="session")
def minilm_dir(shared) -> pathlib.Path:
  return shared / "models" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def scifact_dir(shared) -> pathlib.Path:
  return shared / "data" / "scifact"


def save_bert_dir(model, out_dir, *, tokenizer=None) -> pathlib.Path:
  """Writes one encoder as a Hugging Face BertModel dir (config.json, model.safetensors), atomically."""
  from bpr_jax import io
  from bpr_jax.models import hf
  with io.atomic_directory(out_dir) as tmp:
    hf.write_bert_files(model, tmp, tokenizer=tokenizer)
  return pathlib.Path(out_dir)
