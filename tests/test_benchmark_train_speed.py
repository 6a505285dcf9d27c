"""benchmarks/train_speed.py: its flags per --what, the loop's figures from metrics.jsonl, the allocator
combinations, the variants' config values, and one tiny throughput run end to end."""
import json
import math
import subprocess
import sys
import time

import pytest

from benchmarks import train_speed as bench


# ----------------------------------------------------------------------------- flags


def test_each_measurement_fills_its_own_defaults():
  assert bench.parse_args(["--what=step"]).rounds == 3
  assert bench.parse_args(["--what=allocators"]).rounds == 5
  args = bench.parse_args(["--what=loop", "--rounds=4"])
  assert args.rounds == 4 and args.steps == 30 and args.variants == "before,after,after_fixed_jemalloc"
  args = bench.parse_args(["--what=throughput"])
  assert args.steps == 5 and args.force_bert_base is False and args.cases == "tiny,minilm,bert-base"


@pytest.mark.parametrize("argv, message", [
    (["--what=loop", "--combos=after:heap"], "--combos: not a flag of --what=loop"),
    (["--what=throughput", "--variants=before"], "--variants: not a flag of --what=throughput"),
    (["--what=step", "--force_bert_base"], "--force_bert_base: not a flag of --what=step"),
    (["--what=step", "--worker=after"], "--worker=after: an allocators worker"),
])
def test_a_flag_of_another_measurement_is_refused(argv, message):
  with pytest.raises(ValueError, match=message):
    bench.parse_args(argv)


def test_every_step_variant_sets_real_config_values():
  from configs.common import base_config  # pylint: disable=import-outside-toplevel
  base = base_config()
  for name, overrides in bench.STEP_VARIANTS.items():
    config = base_config()
    for key in overrides:
      node = base
      *parents, leaf = key.split(".")
      for part in parents:
        node = node[part]
      assert leaf in node, (name, key)
    bench.set_values(config, overrides)
    assert config.model.attention_dropout == overrides.get("model.attention_dropout", base.model.attention_dropout)
  assert bench.STEP_VARIANTS["before"]["model.attention_dropout"] < 0  # the paper recipe: follows dropout


# ----------------------------------------------------------------------------- --what=throughput


def test_tiny_throughput_runs_and_writes_its_result(tmp_path):
  out = tmp_path / "throughput.json"
  bench.main(["--what=throughput", "--cases=tiny", "--warmup=0", "--tiny_steps=2", f"--output={out}"])
  result = json.loads(out.read_text())
  assert result["benchmark"] == "train_speed --what=throughput" and result["command"].endswith(f"--output={out}")
  (row,) = result["rows"]
  assert row["case"] == "tiny" and row["timed_steps"] == 2 and row["examples_per_s"] > 0
  assert math.isfinite(row["final_loss"]) and row["model_flops_per_step"] > 0 and "mfu" not in row


def test_unknown_case_stops_before_any_work(tmp_path):
  with pytest.raises(ValueError, match="--cases: unknown"):
    bench.main(["--what=throughput", "--cases=tiny,nope", f"--output={tmp_path / 'r.json'}"])
  assert not (tmp_path / "r.json").exists()


# ----------------------------------------------------------------------------- --what=allocators


def test_combos_take_an_optional_xla_setting():
  assert bench.parse_combos("after:default:onednn,before,after:heap") == [
      ("after", "default", "onednn"), ("before", "default", "none"), ("after", "heap", "none")]
  for bad in ("after:default:nosuch", "nosuch", "after:nosuch", "after:default:onednn:x"):
    with pytest.raises(ValueError, match="VARIANT:ALLOCATOR\\[:XLA\\]"):
      bench.parse_combos(bad)


def test_a_worker_adds_the_xla_setting_to_the_flags_it_inherits(monkeypatch):
  started = {}

  class FakeProc:
    def __init__(self, cmd, env, **kw):
      started["env"], started["cmd"] = env, cmd
      self.stdout = type("R", (), {"readline": lambda self: '{"ready": true, "compile_s": 1.0}\n'})()
  monkeypatch.setattr(bench.subprocess, "Popen", FakeProc)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  args = type("A", (), dict(batch=2, q_len=8, p_len=8, negatives=1, warmup=0))()
  w = bench.Worker("after", "default", args, "onednn")
  assert started["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1 --xla_cpu_use_onednn=true"
  assert w.name == "after:default:onednn"
  assert "--what=allocators" in started["cmd"] and "--worker=after" in started["cmd"]
  assert bench.parse_args(started["cmd"][2:]).worker == "after"  # the worker's command line parses
  bench.Worker("after", "default", args)
  assert started["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"


# ----------------------------------------------------------------------------- --what=loop


def test_steady_step_seconds_leaves_out_the_first_interval(tmp_path):
  path = tmp_path / "metrics.jsonl"
  # batch 16: 0.5 ex/s in the first interval (compile), then 2, 4 and 2 ex/s -> 8, 4, 8 s/step
  path.write_text("".join(json.dumps({"step": 10 * (i + 1), "examples_per_s": r}) + "\n"
                          for i, r in enumerate([0.5, 2.0, 4.0, 2.0])))
  assert bench.steady_step_seconds(path, 16) == 8.0
  path.write_text(json.dumps({"step": 10, "examples_per_s": 1.0}) + "\n")
  assert bench.steady_step_seconds(path, 16) is None  # one interval: nothing after the compile
  assert bench.steady_step_seconds(tmp_path / "missing.jsonl", 16) is None


def test_summary_medians_speedup_and_failed_runs():
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


def test_every_loop_variant_sets_real_config_values():
  from configs import scifact  # pylint: disable=import-outside-toplevel
  config = scifact.get_config()
  for name, (overrides, allocator) in bench.LOOP_VARIANTS.items():
    for override in bench.RECIPE + overrides:
      key, value = override.split("=", 1)
      node = config
      *parents, leaf = key.split(".")
      for part in parents:
        node = node[part]
      assert leaf in node, (name, key)
      type(node[leaf])(value)  # parses as the value's type, as --config.KEY=VALUE does
    assert allocator in ("default", "jemalloc", "heap"), name
  assert bench.LOOP_VARIANTS["before"] == ([], "default")  # before is configs/scifact.py as it is


@pytest.mark.parametrize("argv, message", [
    (["--variants=before,nope"], "unknown variants"),
    (["--steps=10"], "--steps must be >= 20"),
])
def test_bad_loop_arguments_stop_before_any_work(tmp_path, argv, message):
  with pytest.raises(ValueError, match=message):
    bench.main(["--what=loop"] + argv + [f"--work_dir={tmp_path / 'w'}"])
  assert not (tmp_path / "w").exists()


def test_wait_tracing_rss_returns_the_status_and_samples_of_the_child():
  t0 = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(0.5)"])
  status, usage, trace = bench.wait_tracing_rss(proc.pid, t0, every_s=0.05)
  assert status == 0 and usage.ru_maxrss > 64 << 10  # KiB: the child held 64 MiB
  assert trace and max(gb for _, gb in trace) >= 0.06  # the 64 MiB, sampled while it ran
  assert bench.resident_gb(proc.pid) is None  # reaped: gone


def test_a_bad_flag_is_one_error_line_with_exit_status_2(tmp_path):
  proc = subprocess.run([sys.executable, "benchmarks/train_speed.py", "--what=loop", "--steps=5",
                         f"--work_dir={tmp_path / 'w'}"], cwd=bench.REPO, capture_output=True, text=True)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "error: --steps must be >= 20 (two logged intervals of 10: the first holds the compile)"]
