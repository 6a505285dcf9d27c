"""benchmarks/scifact_device.py: packing for the GPU, the run plan, collecting (no GPU, no training)."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name, rel):
  spec = importlib.util.spec_from_file_location(name, REPO / rel)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def dev():
  return _load("bench_scifact_device", "benchmarks/scifact_device.py")


@pytest.fixture(scope="module")
def report():
  return _load("bench_scifact_report_for_device", "benchmarks/scifact_report.py")


def _fake_shared(root: pathlib.Path) -> dict:
  from safetensors.numpy import save_file
  rng = np.random.default_rng(0)
  model = root / "models" / "all-MiniLM-L6-v2"
  (model / "sentence_transformers").mkdir(parents=True)
  tensors = {"embeddings.word_embeddings.weight": rng.normal(0, 0.05, (5000, 8)).astype(np.float32),
             "encoder.layer.0.output.dense.bias": np.array([1e-3, -2.5, 7.0], np.float32),
             "embeddings.position_ids": np.arange(16, dtype=np.int64)[None]}
  save_file(tensors, str(model / "model.safetensors"))
  (model / "config.json").write_text('{"hidden_size": 8}')
  (model / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(20000)))  # > 64 KB: travels as .xz
  (model / "sentence_transformers" / "pooling_config.json").write_text('{"pooling_mode_mean_tokens": true}')
  data = root / "data" / "scifact"
  (data / "qrels").mkdir(parents=True)
  docs = [{"_id": str(i), "title": f"t{i}", "text": "word " * 50} for i in range(40)]
  (data / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
  (data / "queries.jsonl").write_text('{"_id": "q1", "text": "a claim"}\n')
  (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\t35\t1\n")
  (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\t39\t1\n")
  return tensors


def _wheels(root: pathlib.Path) -> pathlib.Path:
  root.mkdir()
  (root / "demo-1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06" + b"\0" * 18)
  return root


def test_pack_then_unpack_gives_float16_weights_as_float32_and_the_same_data(dev, tmp_path):
  from bpr_jax.models.hf import read_safetensors
  tensors = _fake_shared(tmp_path / "shared")
  (tmp_path / "negatives.json").write_text('{"mined": "on the CPU"}')
  manifest = dev.pack(tmp_path / "carry", tmp_path / "shared", wheel_dir=str(_wheels(tmp_path / "whl")),
                      cpu_negatives=str(tmp_path / "negatives.json"))
  assert manifest["wheels"] == ["demo-1.0-py3-none-any.whl"]
  assert manifest["cpu_hard_negatives_sha256"] == dev.sha256(b'{"mined": "on the CPU"}')
  assert (tmp_path / "carry" / "wheels" / "demo-1.0-py3-none-any.whl").exists()
  stored = manifest["files"]
  assert stored["models/all-MiniLM-L6-v2/model.safetensors"]["stored_as"].endswith(".xz")
  assert stored["models/all-MiniLM-L6-v2/vocab.txt"]["stored_as"].endswith(".xz")
  assert stored["data/scifact/qrels/test.tsv"]["stored_as"] == "data/scifact/qrels/test.tsv"  # small: as it is
  w = tensors["embeddings.word_embeddings.weight"]
  assert manifest["model_float16"]["max_abs_error"] == pytest.approx(
      max(float(np.max(np.abs(t.astype(np.float16).astype(np.float32) - t)))
          for t in tensors.values() if t.dtype.kind == "f"))
  assert 0 < manifest["model_float16"]["max_error_over_max_abs_weight"] < 1e-3
  assert manifest["carry_bytes"] > 0 and manifest["tree_bytes"] > 0
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

  dev.unpack(tmp_path / "carry", tmp_path / "restored")
  got = read_safetensors(tmp_path / "restored" / "models/all-MiniLM-L6-v2/model.safetensors")
  assert got["embeddings.word_embeddings.weight"].dtype == np.float32
  np.testing.assert_array_equal(got["embeddings.word_embeddings.weight"], w.astype(np.float16).astype(np.float32))
  np.testing.assert_array_equal(got["embeddings.position_ids"], tensors["embeddings.position_ids"])
  for rel in ("data/scifact/corpus.jsonl", "data/scifact/qrels/train.tsv", "models/all-MiniLM-L6-v2/vocab.txt",
              "models/all-MiniLM-L6-v2/sentence_transformers/pooling_config.json"):
    assert (tmp_path / "restored" / rel).read_bytes() == (tmp_path / "shared" / rel).read_bytes()


def test_pack_refuses_what_would_not_travel_and_writes_nothing(dev, tmp_path):
  _fake_shared(tmp_path / "shared")
  with pytest.raises(SystemExit, match="would not travel.*nothing written"):
    dev.pack(tmp_path / "carry", tmp_path / "shared", wheel_dir=str(_wheels(tmp_path / "whl")), limit=4096)
  assert not (tmp_path / "carry").exists()
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_pack_names_a_missing_shared_folder(dev, tmp_path):
  with pytest.raises(SystemExit, match="not found.*BPR_SHARED_DIR"):
    dev.pack(tmp_path / "carry", tmp_path / "nothing", wheel_dir=str(tmp_path))


def test_unpack_finds_a_damaged_file(dev, tmp_path):
  _fake_shared(tmp_path / "shared")
  dev.pack(tmp_path / "carry", tmp_path / "shared", wheel_dir=str(_wheels(tmp_path / "whl")))
  path = tmp_path / "carry" / "shared" / "data/scifact/qrels/train.tsv"
  path.write_text(path.read_text().replace("35", "36"))
  with pytest.raises(SystemExit, match="sha256 differs"):
    dev.unpack(tmp_path / "carry", tmp_path / "restored")


def test_a_subset_corpus_keeps_every_judged_document(dev, tmp_path):
  _fake_shared(tmp_path / "shared")
  lines = dev.subset_corpus(tmp_path / "shared" / "data" / "scifact", max_docs=5).decode().splitlines()
  ids = [json.loads(l)["_id"] for l in lines]
  assert ids[:2] == ["35", "39"] and ids[2:] == ["0", "1", "2"]


def _result():
  def row(name, variant="", selected=None, bpp=48.0, overrides=()):
    r = {"name": name, "split": "test", "bytes_per_passage": bpp, "variant": variant, "overrides": list(overrides)}
    if selected is not None:
      r["selected_on_dev"] = selected
    return r
  if_cpu = ["num_train_steps=200", "model.attention_dropout=0.0"]
  return {"rows": [
      row("bpr-flat", "", False, overrides=if_cpu),
      row("bpr-flat", "ste", True, overrides=if_cpu + ["loss.relaxation=ste"]),
      row("bpr-flat", "ste-head768", True, 96.0, if_cpu + ["loss.relaxation=ste", "model.code_bits=768"]),
      dict(row("bpr-flat", "ste", True, overrides=if_cpu), split="dev"),  # dev rows never plan a run
      row("dpr-flat", "", None, 1536.0, if_cpu),
      row("dpr-flat", "400", None, 1536.0, ["num_train_steps=400"])]}


def test_the_plan_keeps_the_dev_selected_recipes_and_replaces_only_the_budget(dev):
  runs = dev.plan_runs(_result(), [48.0, 96.0], epochs=40, batch=64)
  assert [(r["mode"], r["cpu_variant"], r["tag"]) for r in runs] == [
      ("bpr", "ste", "gpu-ste-e40-b64"), ("dpr", "", "gpu-main-e40-b64"), ("bpr", "ste-head768", "gpu-ste-head768-e40-b64")]
  budget = ["num_train_steps=-1", "num_epochs=40", "batch_size=64", "checkpoint_every=100000"]
  assert runs[0]["overrides"] == ["model.attention_dropout=0.0", "loss.relaxation=ste"] + budget
  assert runs[1]["overrides"] == ["model.attention_dropout=0.0"] + budget
  assert runs[2]["overrides"] == ["model.attention_dropout=0.0", "loss.relaxation=ste", "model.code_bits=768"] + budget
  steps = dev.plan_runs(_result(), [48.0], epochs=40, batch=8, num_train_steps=2)
  assert steps[0]["tag"] == "gpu-ste-s2-b8" and steps[0]["overrides"][-3:] == [
      "num_train_steps=2", "batch_size=8", "checkpoint_every=100000"]


def test_teacher_runs_follow_with_their_recipes_made_on_the_device(dev, monkeypatch, tmp_path):
  from benchmarks import scifact
  runs = dev.plan_runs(_result(), [48.0], epochs=40, batch=64, teacher_runs=("nested", "label48", "free48"))
  assert [(r["mode"], r.get("teacher_run"), r["tag"]) for r in runs] == [
      ("bpr", None, "gpu-ste-e40-b64"), ("dpr", None, "gpu-main-e40-b64"), ("bpr", "nested", "gpu-nested-e40-b64"),
      ("bpr", "label48", "gpu-label48-e40-b64"), ("bpr", "free48", "gpu-free48-e40-b64")]
  with pytest.raises(SystemExit, match="unknown run 'free96'"):
    dev.plan_runs(_result(), [48.0], epochs=40, batch=64, teacher_runs=("free96",))
  commands = []
  monkeypatch.setattr(scifact, "prepare_train_data", lambda work, *a: (work / "scifact-split", {}))
  monkeypatch.setattr(scifact, "run_command", lambda cmd, env, log: commands.append(cmd) or 1.0)
  budget = runs[2]["overrides"]
  nested = dev.teacher_overrides(runs[2], tmp_path, {"BPR_SHARED_DIR": "/s"}, "gpu-main-e40-b64")
  assert nested == ["model.attention_dropout=0.0", "loss.relaxation=ste", "model.code_bits=768",
                    "model.code_head_norm=2.5", "loss.nested_bits=128,384,768"] + budget and not commands
  label = dev.teacher_overrides(runs[3], tmp_path, {"BPR_SHARED_DIR": "/s"}, "gpu-main-e40-b64")
  assert f"loss.teacher={tmp_path / 'ft-dpr-gpu-main-e40-b64' / 'model'}" in label  # the device's own DPR
  free = dev.teacher_overrides(runs[4], tmp_path, {"BPR_SHARED_DIR": "/s"}, "gpu-main-e40-b64")
  assert [c[3].split("=")[0] for c in commands] == ["--hf_model", "--teacher"]  # export, then mining
  assert f"data.train_path={tmp_path / 'teacher_mined_train.json'}" in free and free[-4:] == budget


def test_the_plan_names_a_size_without_a_dev_selection(dev):
  with pytest.raises(SystemExit, match="no BPR row chosen on dev at 16 B"):
    dev.plan_runs(_result(), [48.0, 16.0], epochs=40, batch=64)


def test_the_committed_results_plan_every_size(dev):
  result = json.loads((REPO / "benchmarks" / "results" / "scifact.json").read_text())
  runs = dev.plan_runs(result, [48.0, 96.0, 16.0], epochs=40, batch=64)
  assert [r["mode"] for r in runs] == ["bpr", "dpr", "bpr", "bpr"]
  assert [r["bytes_per_passage"] for r in runs] == [48.0, 1536.0, 96.0, 16.0]
  assert all(len(" ".join(r["overrides"])) < 400 for r in runs)


def test_collect_takes_only_a_full_accelerator_run(dev, tmp_path):
  good = {"benchmark": "scifact-device", "backend": "gpu", "device_kind": "NVIDIA H200",
          "subset_corpus_max_docs": 0, "runs": [{"tag": "t", "status": "done"}], "rows": [{"name": "bpr-flat"}]}
  for bad, why in ((dict(good, backend="cpu"), "not an accelerator"), (dict(good, subset_corpus_max_docs=1300),
                   "subset corpus"), (dict(good, rows=[]), "no finished run"), ({"benchmark": "x"}, "not a")):
    (tmp_path / "in.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit, match=why):
      dev.collect(tmp_path / "in.json", tmp_path / "out.json")
  assert not (tmp_path / "out.json").exists()
  (tmp_path / "in.json").write_text(json.dumps(good))
  dev.collect(tmp_path / "in.json", tmp_path / "out.json")
  assert json.loads((tmp_path / "out.json").read_text()) == good


def test_the_device_command_fits_the_tool(dev):
  cmd = dev.DEVICE_COMMAND.format(carry=".device")
  assert len(cmd) <= 2000 and "--target /tmp/site .device/wheels/*.whl" in cmd and "--out=$OUT" in cmd


def test_the_report_says_when_no_gpu_ran_and_lists_the_device_rows(report):
  assert "Not run: no GPU" in "\n".join(report.device_lines(None))
  device = {"device_kind": "NVIDIA H200", "backend": "gpu", "epochs": 40, "batch_size": 64, "time": "t",
            "initial_model": "fp16", "runs": [{"tag": "gpu-ste-e40-b64", "cpu_variant": "ste", "status": "done"},
                                             {"tag": "gpu-main-e40-b64", "cpu_variant": "", "status": "not started"}],
            "rows": [{"name": "bpr-flat", "variant": "gpu-ste-e40-b64", "split": "test", "ndcg@10": 0.75,
                      "recall@100": 0.95, "bytes_per_passage": 48.0, "train_steps": 443, "training_s": 60.0},
                     {"name": "bpr-hash", "variant": "gpu-ste-e40-b64", "split": "test", "ndcg@10": 0.7}]}
  text = "\n".join(report.device_lines(device))
  assert "NVIDIA H200 (gpu), 40 epochs at batch 64" in text
  assert "| gpu-ste-e40-b64 | ste | done | bpr-flat | test | 0.7500 | 0.9500 | 48 | 443 | 60 |" in text
  assert "| gpu-main-e40-b64 | main | not started |" in text
  assert "bpr-hash" not in text
