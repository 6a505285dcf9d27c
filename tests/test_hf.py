"""HF checkpoint conversion: state dicts, save/load, torch .bin, DPR naming, errors."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from bpr_jax.models import hf
from bpr_jax.models.bert import BertConfig, BertEncoder
from conftest import save_bert_dir

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=24)
IDS = np.array([[101, 2023, 2003, 1037, 3231, 102, 0, 0],
                [101, 7592, 2088, 102, 1996, 3793, 2003, 102]], np.int32)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return hf.load_bert(minilm_dir)


def _tiny_dir(tmp_path, name="tiny", seed=0):
  model = BertEncoder(TINY, rngs=nnx.Rngs(seed))
  out = tmp_path / name
  save_bert_dir(model, out)
  return model, out


def _cls(model, ids=IDS):
  ids = jnp.asarray(ids)
  return np.asarray(model(ids, (ids > 0).astype(jnp.int32)))


def _torch_hidden(model_dir, ids=IDS):
  tm = transformers.BertModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
  ids_t = torch.tensor(ids, dtype=torch.long)
  with torch.no_grad():
    return tm(input_ids=ids_t, attention_mask=(ids_t > 0).long()).last_hidden_state.numpy()


def test_state_dict_round_trip(minilm_dir, minilm):
  loaded = hf.load_state_dict(minilm_dir)
  with safe_open(str(minilm_dir / "model.safetensors"), framework="np") as f:
    file_names = {k for k in f.keys() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    exported = hf.state_dict_from_bert(minilm)
    assert set(exported) == file_names
    for name in file_names:
      assert exported[name].dtype == np.float32
      np.testing.assert_array_equal(exported[name], f.get_tensor(name), err_msg=name)
  assert set(loaded) >= file_names


def test_bert_dir_loads_in_transformers(tmp_path, minilm):
  out = tmp_path / "saved"
  save_bert_dir(minilm, out)
  assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
  assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
  ids = IDS[:, :6]
  expected = _torch_hidden(out, ids)[:, 0]
  assert np.abs(_cls(minilm, ids) - expected).max() < 1e-4
  # Re-loading ours gives identical weights.
  again = hf.load_bert(out)
  np.testing.assert_array_equal(_cls(again, ids), _cls(minilm, ids))


def test_bert_dir_replaces_existing_dir_and_leaves_no_temp(tmp_path):
  model, out = _tiny_dir(tmp_path)
  (out / "stale.txt").write_text("x")
  save_bert_dir(model, out)
  assert not (out / "stale.txt").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_tiny_model_matches_transformers(tmp_path):
  model, out = _tiny_dir(tmp_path)
  ids = np.minimum(IDS, TINY.vocab_size - 1)
  np.testing.assert_allclose(_cls(model, ids), _torch_hidden(out, ids)[:, 0], atol=1e-5)


def test_pytorch_bin_loading(tmp_path):
  model, out = _tiny_dir(tmp_path)
  state = {f"bert.{k}": torch.from_numpy(v.copy()) for k, v in hf.state_dict_from_bert(model).items()}
  state["cls.predictions.bias"] = torch.zeros(TINY.vocab_size)  # a pretraining head is dropped
  (out / "model.safetensors").unlink()
  torch.save(state, out / "pytorch_model.bin")
  loaded = hf.load_bert(out)
  for name, value in hf.state_dict_from_bert(model).items():
    np.testing.assert_array_equal(hf.state_dict_from_bert(loaded)[name], value)


def test_bfloat16_and_old_layer_norm_names(tmp_path):
  model, out = _tiny_dir(tmp_path)
  state = hf.state_dict_from_bert(model)
  renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"):
             torch.from_numpy(v.copy()).to(torch.bfloat16) for k, v in state.items()}
  from safetensors.torch import save_file as torch_save_file
  torch_save_file(renamed, str(out / "model.safetensors"))
  loaded = hf.load_state_dict(out)
  assert all(v.dtype == np.float32 for v in loaded.values())
  reloaded = hf.state_dict_from_bert(hf.load_bert(out))
  for name, value in state.items():
    np.testing.assert_allclose(reloaded[name], value, atol=1e-2 * max(1.0, np.abs(value).max()))


def test_dpr_checkpoint_single_file_and_two_dirs(tmp_path, minilm_dir):
  base = hf.load_state_dict(minilm_dir)
  q = {f"question_encoder.bert_model.{k}": v for k, v in base.items()}
  p = {f"ctx_encoder.bert_model.{k}": v + 1.0 if v.dtype == np.float32 else v
       for k, v in base.items()}
  joint = tmp_path / "joint"
  joint.mkdir()
  save_file({**q, **p}, str(joint / "model.safetensors"))
  for source in (joint, joint / "model.safetensors"):
    q_state, p_state = hf.load_dpr_checkpoint(source)
    assert set(q_state) == set(base) == set(p_state)
    name = "encoder.layer.0.output.dense.weight"
    np.testing.assert_array_equal(q_state[name], base[name])
    np.testing.assert_array_equal(p_state[name], base[name] + 1.0)

  config = BertConfig.from_json(minilm_dir / "config.json")
  question = hf.bert_from_state_dict(config, q_state)
  np.testing.assert_array_equal(hf.state_dict_from_bert(question)[name], base[name])
  q_dir, p_dir = tmp_path / "q", tmp_path / "p"
  q_dir.mkdir()
  p_dir.mkdir()
  save_file(q, str(q_dir / "model.safetensors"))
  save_file(p, str(p_dir / "model.safetensors"))
  q2, p2 = hf.load_dpr_checkpoint((q_dir, p_dir))
  np.testing.assert_array_equal(p2[name], p_state[name])
  assert set(q2) == set(q_state)
  with pytest.raises(ValueError, match="ctx_encoder.bert_model."):
    hf.load_dpr_checkpoint((q_dir, q_dir))
  q["question_encoder.encode_proj.weight"] = np.zeros((2, 2), np.float32)
  save_file(q, str(q_dir / "model.safetensors"))
  with pytest.raises(ValueError, match="projection"):
    hf.load_dpr_checkpoint((q_dir, p_dir))


def test_prefix_stripping(tmp_path):
  model, out = _tiny_dir(tmp_path)
  state = {f"question_encoder.bert_model.{k}": v for k, v in hf.state_dict_from_bert(model).items()}
  save_file(state, str(out / "model.safetensors"))
  loaded = hf.load_bert(out, prefix="question_encoder.bert_model.")
  np.testing.assert_array_equal(_cls(loaded, np.minimum(IDS, 39)), _cls(model, np.minimum(IDS, 39)))
  with pytest.raises(ValueError, match="prefix"):
    hf.load_state_dict(out, prefix="nothing.")


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    hf.load_bert(tmp_path / "absent")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_bert(empty)
  (empty / "config.json").write_text(json.dumps(TINY.to_dict()))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load_bert(empty)

  model, out = _tiny_dir(tmp_path)
  state = hf.state_dict_from_bert(model)
  bad = dict(state)
  bad["encoder.layer.1.intermediate.dense.weight"] = np.zeros((3, 16), np.float32)
  del bad["embeddings.LayerNorm.bias"]
  bad["encoder.layer.9.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError) as e:
    hf.bert_from_state_dict(TINY, bad)
  message = str(e.value)
  assert "missing: embeddings.LayerNorm.bias" in message
  assert "unexpected: encoder.layer.9.extra.weight" in message
  assert "wrong shape: encoder.layer.1.intermediate.dense.weight (3, 16) != (32, 16)" in message
  save_file(bad, str(out / "model.safetensors"))
  with pytest.raises(ValueError, match=str(out)):
    hf.load_bert(out)
  # pooler tensors and position_ids are ignored.
  extra = {**state, "pooler.dense.weight": np.zeros((16, 16), np.float32),
           "embeddings.position_ids": np.arange(24)[None]}
  hf.bert_from_state_dict(TINY, extra, rngs=nnx.Rngs(0))

