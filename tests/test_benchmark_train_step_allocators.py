"""benchmarks/train_step_allocators.py: its combinations (no training)."""
import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_allocators", REPO / "benchmarks" / "train_step_allocators.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_combos_take_an_optional_xla_setting(bench):
  assert bench.parse_combos("after:default:onednn,before,after:heap") == [
      ("after", "default", "onednn"), ("before", "default", "none"), ("after", "heap", "none")]
  for bad in ("after:default:nosuch", "nosuch", "after:nosuch", "after:default:onednn:x"):
    with pytest.raises(SystemExit, match="VARIANT:ALLOCATOR\\[:XLA\\]"):
      bench.parse_combos(bad)


def test_a_worker_adds_the_xla_setting_to_the_flags_it_inherits(bench, monkeypatch):
  started = {}

  class FakeProc:
    def __init__(self, cmd, env, **kw):
      started["env"] = env
      self.stdout = type("R", (), {"readline": lambda self: '{"ready": true, "compile_s": 1.0}\n'})()
  monkeypatch.setattr(bench.subprocess, "Popen", FakeProc)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  args = type("A", (), dict(batch=2, q_len=8, p_len=8, negatives=1, warmup=0))()
  w = bench.Worker("after", "default", args, "onednn")
  assert started["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1 --xla_cpu_use_onednn=true"
  assert w.name == "after:default:onednn"
  bench.Worker("after", "default", args)
  assert started["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
