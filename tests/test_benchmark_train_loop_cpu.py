"""benchmarks/train_loop_cpu.py: its figures from metrics.jsonl, the summary, and its variants' config values."""
import importlib.util
import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  sys.path.insert(0, str(REPO))
  spec = importlib.util.spec_from_file_location("bench_train_loop_cpu", REPO / "benchmarks" / "train_loop_cpu.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_steady_step_seconds_leaves_out_the_first_interval(bench, tmp_path):
  path = tmp_path / "metrics.jsonl"
  # batch 16: 0.5 ex/s in the first interval (compile), then 2, 4 and 2 ex/s -> 8, 4, 8 s/step
  path.write_text("".join(json.dumps({"step": 10 * (i + 1), "examples_per_s": r}) + "\n"
                          for i, r in enumerate([0.5, 2.0, 4.0, 2.0])))
  assert bench.steady_step_seconds(path, 16) == 8.0
  path.write_text(json.dumps({"step": 10, "examples_per_s": 1.0}) + "\n")
  assert bench.steady_step_seconds(path, 16) is None  # one interval: nothing after the compile
  assert bench.steady_step_seconds(tmp_path / "missing.jsonl", 16) is None


def test_summary_medians_speedup_and_failed_runs(bench):
  runs = [
      {"variant": "before", "exit_code": 0, "step_s": 8.0, "wall_s": 300.0, "peak_rss_gb": 6.6},
      {"variant": "before", "exit_code": 0, "step_s": 10.0, "wall_s": 320.0, "peak_rss_gb": 6.7},
      {"variant": "after_fixed_jemalloc", "exit_code": 0, "step_s": 4.5, "wall_s": 210.0, "peak_rss_gb": 12.0},
      {"variant": "after_fixed_jemalloc", "exit_code": 0, "step_s": 4.5, "wall_s": 220.0, "peak_rss_gb": 12.1},
      {"variant": "after_fixed_heap", "exit_code": -9, "step_s": None, "wall_s": 90.0, "peak_rss_gb": 23.7},
  ]
  rows = bench.summarize(runs, ["before", "after_fixed_jemalloc", "after_fixed_heap"])
  assert [r["step_s_median"] for r in rows] == [9.0, 4.5, None]
  assert [r["speedup_vs_first"] for r in rows] == [1.0, 2.0, None]
  assert rows[1]["wall_s_median"] == 215.0 and rows[1]["peak_rss_gb_max"] == 12.1
  assert rows[2]["failed"] == 1 and rows[2]["exit_codes"] == [-9] and rows[2]["peak_rss_gb_max"] == 23.7


def test_every_variant_sets_real_config_values(bench):
  from configs import scifact  # pylint: disable=import-outside-toplevel
  config = scifact.get_config()
  for name, (overrides, allocator) in bench.VARIANTS.items():
    for override in bench.RECIPE + overrides:
      key, value = override.split("=", 1)
      node = config
      *parents, leaf = key.split(".")
      for part in parents:
        node = node[part]
      assert leaf in node, (name, key)
      type(node[leaf])(value)  # parses as the value's type, as --config.KEY=VALUE does
    assert allocator in ("default", "jemalloc", "heap"), name
  assert bench.VARIANTS["before"] == ([], "default")  # before is configs/scifact.py as it is


@pytest.mark.parametrize("argv, message", [
    (["--variants=before,nope"], "unknown variants"),
    (["--steps=10"], "--steps must be >= 20"),
])
def test_bad_arguments_stop_before_any_work(bench, tmp_path, argv, message):
  with pytest.raises(SystemExit, match=message):
    bench.main(argv + [f"--work_dir={tmp_path / 'w'}"])
  assert not (tmp_path / "w").exists()


def test_wait_tracing_rss_returns_the_status_and_samples_of_the_child(bench):
  import subprocess  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(0.5)"])
  status, usage, trace = bench.wait_tracing_rss(proc.pid, t0, every_s=0.05)
  assert status == 0 and usage.ru_maxrss > 64 << 10  # KiB: the child held 64 MiB
  assert trace and max(gb for _, gb in trace) >= 0.06  # the 64 MiB, sampled while it ran
  assert bench.resident_gb(proc.pid) is None  # reaped: gone
