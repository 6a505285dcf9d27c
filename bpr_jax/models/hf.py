"""Conversion between Hugging Face BERT / DPR checkpoints and `BertEncoder`.

Reading (`load_bert`, `load_dpr_checkpoint`), building (`bert_from_state_dict`) and writing
(`write_bert_files`, `save_dpr`) share the one name map below; `read_pooling` reads a
sentence-transformers model's own pooling ('cls' or 'mean').

HF `BertModel` tensor names map to `BertEncoder` parameter paths as follows
(linear weights are transposed: torch stores [out, in], Flax [in, out]):

  embeddings.word_embeddings.weight         -> embeddings.word_embeddings.embedding
  embeddings.position_embeddings.weight     -> embeddings.position_embeddings.embedding
  embeddings.token_type_embeddings.weight   -> embeddings.token_type_embeddings.embedding
  embeddings.LayerNorm.{weight,bias}        -> embeddings.norm.{scale,bias}
  encoder.layer.<i>.attention.self.{query,key,value}.{weight,bias}
                                            -> layers.<i>.attention.{query,key,value}.{kernel,bias}
  encoder.layer.<i>.attention.output.dense  -> layers.<i>.attention.output
  encoder.layer.<i>.attention.output.LayerNorm -> layers.<i>.attention_norm
  encoder.layer.<i>.intermediate.dense      -> layers.<i>.intermediate
  encoder.layer.<i>.output.dense            -> layers.<i>.output
  encoder.layer.<i>.output.LayerNorm        -> layers.<i>.output_norm

  dense.{weight,bias}, layer_norm.{weight,bias} -> code_head.dense, code_head.norm
                                            (the code head, names as the authors' BPR code;
                                            a checkpoint holding them loads with the head)

`pooler.*` and `embeddings.position_ids` are ignored on load and not written.
Old TF-converted names `LayerNorm.gamma` / `LayerNorm.beta` are accepted.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bpr_jax import io
from bpr_jax.models.bert import BertConfig, BertEncoder

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
DPR_QUESTION_PREFIX = "question_encoder.bert_model."
DPR_PASSAGE_PREFIX = "ctx_encoder.bert_model."
_IGNORED_PREFIXES = ("pooler.",)
_IGNORED_NAMES = ("embeddings.position_ids",)

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------
# Name mapping


CODE_HEAD_NAMES = ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias")


def hf_name_map(config: BertConfig, code_bits: int = 0) -> dict[str, tuple[tuple[Any, ...], bool]]:
  """HF BertModel tensor name -> (BertEncoder param path, transpose?)."""
  names: dict[str, tuple[tuple[Any, ...], bool]] = {}
  for kind in ("word", "position", "token_type"):
    names[f"embeddings.{kind}_embeddings.weight"] = (
        ("embeddings", f"{kind}_embeddings", "embedding"), False)

  def linear(hf: str, path: tuple[Any, ...]):
    names[f"{hf}.weight"] = (path + ("kernel",), True)
    names[f"{hf}.bias"] = (path + ("bias",), False)

  def norm(hf: str, path: tuple[Any, ...]):
    names[f"{hf}.weight"] = (path + ("scale",), False)
    names[f"{hf}.bias"] = (path + ("bias",), False)

  norm("embeddings.LayerNorm", ("embeddings", "norm"))
  for i in range(config.num_hidden_layers):
    hf, ours = f"encoder.layer.{i}", ("layers", i)
    for proj in ("query", "key", "value"):
      linear(f"{hf}.attention.self.{proj}", ours + ("attention", proj))
    linear(f"{hf}.attention.output.dense", ours + ("attention", "output"))
    norm(f"{hf}.attention.output.LayerNorm", ours + ("attention_norm",))
    linear(f"{hf}.intermediate.dense", ours + ("intermediate",))
    linear(f"{hf}.output.dense", ours + ("output",))
    norm(f"{hf}.output.LayerNorm", ours + ("output_norm",))
  if code_bits:
    linear("dense", ("code_head", "dense"))
    norm("layer_norm", ("code_head", "norm"))
  return names


def code_bits_of(state_dict: Mapping[str, np.ndarray]) -> int:
  """Output dims of the code head held in a state dict (0: none)."""
  present = [n for n in CODE_HEAD_NAMES if n in state_dict]
  if not present:
    return 0
  if len(present) != len(CODE_HEAD_NAMES):
    missing = sorted(set(CODE_HEAD_NAMES) - set(present))
    raise ValueError(f"incomplete code head: missing {', '.join(missing)}")
  return int(np.shape(state_dict["dense.weight"])[0])


def _canonical_name(name: str) -> str:
  """Renames old TF-style LayerNorm.gamma / .beta to .weight / .bias."""
  if name.endswith("LayerNorm.gamma"):
    return name[:-len("gamma")] + "weight"
  if name.endswith("LayerNorm.beta"):
    return name[:-len("beta")] + "bias"
  return name


def _is_ignored(name: str) -> bool:
  return name in _IGNORED_NAMES or name.startswith(_IGNORED_PREFIXES)


def _param(model: BertEncoder, path: tuple[Any, ...]) -> nnx.Variable:
  """The nnx variable at `path` inside `model`."""
  node: Any = model
  for key in path:
    node = node[key] if isinstance(key, int) else getattr(node, key)
  return node


# ----------------------------------------------------------------------------
# Reading checkpoints


def _to_float32(array: np.ndarray) -> np.ndarray:
  if np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16":
    return np.asarray(array, dtype=np.float32)
  return np.asarray(array)


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """All tensors of a .safetensors file as numpy (floats as float32)."""
  from safetensors import safe_open
  out: dict[str, np.ndarray] = {}
  try:
    with safe_open(str(path), framework="np") as f:
      for name in f.keys():
        out[name] = _to_float32(f.get_tensor(name))
  except (TypeError, ValueError) as e:
    if "bf16" not in str(e).lower() and "bfloat16" not in str(e).lower():
      raise ValueError(f"{path}: cannot read safetensors file ({e})") from None
    with safe_open(str(path), framework="flax") as f:  # numpy has no bfloat16
      for name in f.keys():
        out[name] = _to_float32(np.asarray(f.get_tensor(name).astype(jnp.float32)))
  return out


def read_torch_bin(path: PathLike) -> dict[str, np.ndarray]:
  """All tensors of a pytorch_model.bin file as numpy (floats as float32)."""
  try:
    import torch
  except ImportError:
    raise ImportError(f"{path}: reading a pytorch_model.bin needs torch "
                      "(pip install torch), or convert it to model.safetensors") from None
  state = torch.load(str(path), map_location="cpu", weights_only=True)
  if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]
  if not isinstance(state, Mapping):
    raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
  out: dict[str, np.ndarray] = {}
  for name, tensor in state.items():
    if not hasattr(tensor, "detach"):
      continue
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
      tensor = tensor.float()
    out[name] = tensor.numpy()
  return out


def weights_file(model_dir: PathLike) -> pathlib.Path:
  """model.safetensors, else pytorch_model.bin, inside `model_dir`."""
  model_dir = pathlib.Path(model_dir)
  if not model_dir.is_dir():
    raise FileNotFoundError(f"model directory not found: {model_dir}")
  for name in (SAFETENSORS_FILE, TORCH_FILE):
    if (model_dir / name).is_file():
      return model_dir / name
  raise FileNotFoundError(f"no {SAFETENSORS_FILE} or {TORCH_FILE} in {model_dir}")


def read_weights(path: PathLike) -> dict[str, np.ndarray]:
  """Tensors of a weights file, or of the weights file inside a model dir."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = weights_file(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file not found: {path}")
  if path.suffix == ".safetensors":
    return read_safetensors(path)
  return read_torch_bin(path)


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str | None,
                 source: PathLike = "state dict") -> dict[str, np.ndarray]:
  """Keeps the tensors under `prefix` (stripped), then strips a leading 'bert.'.

  When some names start with 'bert.', only those are kept (task heads such as
  'cls.*' of BertForPreTraining are dropped).
  """
  items = dict(state_dict)
  if prefix:
    items = {k[len(prefix):]: v for k, v in items.items() if k.startswith(prefix)}
    if not items:
      raise ValueError(f"{source}: no tensor names start with prefix {prefix!r}")
  if any(k.startswith("bert.") for k in items):
    items = {k[len("bert."):]: v for k, v in items.items() if k.startswith("bert.")}
  return items


def load_state_dict(model_dir: PathLike, prefix: str | None = None) -> dict[str, np.ndarray]:
  """Reads a HF checkpoint (model.safetensors, else pytorch_model.bin) as float32 numpy.

  `model_dir` may also be the weights file itself. Names are returned in
  BertModel naming: `prefix` (e.g. 'question_encoder.bert_model.') and a
  leading 'bert.' are stripped.
  """
  path = pathlib.Path(model_dir)
  if not path.exists():
    raise FileNotFoundError(f"model directory not found: {path}")
  source = weights_file(path) if path.is_dir() else path
  return strip_prefix(read_weights(source), prefix, source)


# ----------------------------------------------------------------------------
# Building models


def bert_from_state_dict(config: BertConfig, state_dict: Mapping[str, np.ndarray], *,
                         pooling: str = "cls", dtype=jnp.float32,
                         rngs: nnx.Rngs | None = None) -> BertEncoder:
  """A BertEncoder holding the tensors of a HF BertModel state dict.

  Raises ValueError listing missing, unexpected and wrongly shaped tensors.
  Without `rngs` the model is built abstractly (no random initialisation).
  """
  given = {_canonical_name(k): v for k, v in state_dict.items() if not _is_ignored(k)}
  code_bits = code_bits_of(given)
  names = hf_name_map(config, code_bits)
  missing = sorted(set(names) - set(given))
  unexpected = sorted(set(given) - set(names))
  bad_shapes = []
  for name, (path, transpose) in names.items():
    if name not in given:
      continue
    want = tuple(reversed(_expected_shape(config, path, code_bits))) if transpose else \
        _expected_shape(config, path, code_bits)
    if tuple(np.shape(given[name])) != want:
      bad_shapes.append(f"{name} {tuple(np.shape(given[name]))} != {want}")
  problems = []
  if missing:
    problems.append(f"missing: {', '.join(missing)}")
  if unexpected:
    problems.append(f"unexpected: {', '.join(unexpected)}")
  if bad_shapes:
    problems.append(f"wrong shape: {', '.join(bad_shapes)}")
  if problems:
    raise ValueError("state dict does not match BertConfig; " + "; ".join(problems))

  def build() -> BertEncoder:
    return BertEncoder(config, pooling=pooling, dtype=dtype, code_bits=code_bits,
                       rngs=rngs if rngs is not None else nnx.Rngs(0))

  model = build() if rngs is not None else nnx.eval_shape(build)
  for name, (path, transpose) in names.items():
    array = np.asarray(given[name], dtype=np.float32)
    if transpose:
      array = array.T
    variable = _param(model, path)
    variable.set_value(jnp.asarray(array, dtype=model.param_dtype))
  return model


def _expected_shape(config: BertConfig, path: tuple[Any, ...], code_bits: int = 0) -> tuple[int, ...]:
  """The shape of the BertEncoder parameter at `path` (without building one)."""
  h, m = config.hidden_size, config.intermediate_size
  leaf = path[-1]
  if path[0] == "code_head":
    return (h, code_bits) if leaf == "kernel" else (code_bits,)
  if path[0] == "embeddings":
    rows = {"word_embeddings": config.vocab_size,
            "position_embeddings": config.max_position_embeddings,
            "token_type_embeddings": config.type_vocab_size}
    return (h,) if path[1] == "norm" else (rows[path[1]], h)
  module = path[2]
  if module == "intermediate":
    return (h, m) if leaf == "kernel" else (m,)
  if module == "output" and leaf == "kernel":
    return (m, h)
  if module == "attention" and leaf == "kernel":
    return (h, h)
  return (h,)


def read_config(model_dir: PathLike) -> BertConfig:
  """The BertConfig of a HF model directory."""
  model_dir = pathlib.Path(model_dir)
  if not model_dir.is_dir():
    raise FileNotFoundError(f"model directory not found: {model_dir}")
  path = model_dir / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"no {CONFIG_FILE} in {model_dir}")
  return BertConfig.from_json(path)


def load_bert(model_dir: PathLike, *, pooling: str = "cls", dtype=jnp.float32,
              prefix: str | None = None) -> BertEncoder:
  """Loads a HF BERT directory (config.json + weights) as a BertEncoder."""
  config = read_config(model_dir)
  state_dict = load_state_dict(model_dir, prefix)
  try:
    return bert_from_state_dict(config, state_dict, pooling=pooling, dtype=dtype)
  except ValueError as e:
    raise ValueError(f"{model_dir}: {e}") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "added_tokens.json")


def model_files(model_dir: PathLike) -> list[pathlib.Path]:
  """The files a HF BERT dir's encoder is read from: weights, config.json and tokenizer files."""
  model_dir = pathlib.Path(model_dir)
  files = [weights_file(model_dir)]
  files += [model_dir / n for n in (CONFIG_FILE, *TOKENIZER_FILES) if (model_dir / n).is_file()]
  return files


# ----------------------------------------------------------------------------
# Pooling of sentence-transformers models

ST_MODULES_FILE = "modules.json"
ST_POOLING_FILES = ("1_Pooling/config.json", "sentence_transformers/pooling_config.json")
_ST_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
             "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
             "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
POOLINGS_READ = ("cls", "mean")


def _read_json_file(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def pooling_file(model_dir: PathLike) -> pathlib.Path | None:
  """The sentence-transformers pooling config of a model dir, or None when it has none.

  Looked for in order: the Pooling module named by modules.json (its folder's config.json),
  1_Pooling/config.json, sentence_transformers/pooling_config.json.
  """
  model_dir = pathlib.Path(model_dir)
  modules = model_dir / ST_MODULES_FILE
  if modules.is_file():
    entries = _read_json_file(modules)
    if not isinstance(entries, list):
      raise ValueError(f"{modules}: expected a list of modules")
    for entry in entries:
      if isinstance(entry, dict) and str(entry.get("type", "")).endswith("Pooling"):
        path = model_dir / str(entry.get("path", "")) / CONFIG_FILE
        if not path.is_file():
          raise FileNotFoundError(f"{modules}: its Pooling module has no {path}")
        return path
  for name in ST_POOLING_FILES:
    if (model_dir / name).is_file():
      return model_dir / name
  return None


def pooling_of(path: PathLike) -> str:
  """The pooling a sentence-transformers pooling config asks for: 'cls', 'mean' or another mode.

  Raises ValueError (naming the file) when it sets no mode, or several at once (concatenated).
  """
  path = pathlib.Path(path)
  config = _read_json_file(path)
  if not isinstance(config, dict):
    raise ValueError(f"{path}: expected a JSON object")
  modes = [name for key, name in _ST_MODES.items() if config.get(key)]
  if len(modes) != 1:
    raise ValueError(f"{path}: expected one pooling mode, got {', '.join(modes) or 'none'}")
  return modes[0]


def read_pooling(model_dir: PathLike) -> str | None:
  """The pooling of a sentence-transformers model dir ('cls' or 'mean'); None when it has no
  pooling file. A mode this project cannot do (max, ...) raises ValueError naming the file."""
  path = pooling_file(model_dir)
  if path is None:
    return None
  mode = pooling_of(path)
  if mode not in POOLINGS_READ:
    raise ValueError(f"{path}: pooling {mode!r} is not supported (bpr-jax pools 'cls' or 'mean')")
  return mode


# ----------------------------------------------------------------------------
# Writing checkpoints


def state_dict_from_bert(model: BertEncoder) -> dict[str, np.ndarray]:
  """The model's weights as a HF BertModel state dict (float32 numpy, no 'bert.')."""
  out = {}
  for name, (path, transpose) in hf_name_map(model.config, model.code_bits).items():
    array = np.asarray(_param(model, path).get_value(), dtype=np.float32)
    out[name] = np.ascontiguousarray(array.T if transpose else array)
  return out


def write_bert_files(model: BertEncoder, out_dir: PathLike, *, tokenizer=None) -> None:
  """Writes config.json, model.safetensors (and tokenizer files) into an existing dir."""
  from safetensors.numpy import save_file
  out_dir = pathlib.Path(out_dir)
  with open(out_dir / CONFIG_FILE, "w", encoding="utf-8") as f:
    json.dump(model.config.to_dict(), f, indent=2, sort_keys=True)
    f.write("\n")
  save_file(state_dict_from_bert(model), str(out_dir / SAFETENSORS_FILE),
            metadata={"format": "pt"})
  if tokenizer is not None:
    tokenizer.save(out_dir)


# ----------------------------------------------------------------------------
# DPR checkpoints


def _check_no_projection(tensors: Mapping[str, np.ndarray], prefix: str, source) -> None:
  head = prefix.split(".")[0] + ".encode_proj."
  if any(k.startswith(head) for k in tensors):
    raise ValueError(f"{source}: DPR projection layers ({head}*) are not supported "
                     "(projection_dim must be 0)")


def load_dpr_checkpoint(path: PathLike | tuple[PathLike, PathLike] | list[PathLike]
                        ) -> tuple[dict, dict]:
  """(question, passage) state dicts in BertModel naming from a DPR checkpoint.

  `path` is a dir or safetensors/bin file holding both encoders in transformers
  DPR naming ('question_encoder.bert_model.*', 'ctx_encoder.bert_model.*'), or
  a pair of dirs/files (DPRQuestionEncoder, DPRContextEncoder).
  """
  if isinstance(path, (tuple, list)):
    if len(path) != 2:
      raise ValueError(f"expected (question_path, passage_path); got {len(path)} paths")
    q_path, p_path = (pathlib.Path(p) for p in path)
    q_all, p_all = _read_any(q_path), _read_any(p_path)
  else:
    q_path = p_path = pathlib.Path(path)
    q_all = p_all = _read_any(q_path)
  _check_no_projection(q_all, DPR_QUESTION_PREFIX, q_path)
  _check_no_projection(p_all, DPR_PASSAGE_PREFIX, p_path)
  question = strip_prefix(q_all, DPR_QUESTION_PREFIX, q_path)
  passage = strip_prefix(p_all, DPR_PASSAGE_PREFIX, p_path)
  return question, passage


def _read_any(path: pathlib.Path) -> dict[str, np.ndarray]:
  if not path.exists():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  return read_weights(path)


# ----------------------------------------------------------------------------
# Writing DPR checkpoints (transformers' DPRQuestionEncoder / DPRContextEncoder)

DPR_ARCHITECTURES = {"question": ("DPRQuestionEncoder", DPR_QUESTION_PREFIX),
                     "ctx": ("DPRContextEncoder", DPR_PASSAGE_PREFIX)}


def dpr_config_dict(config: BertConfig, kind: str) -> dict:
  """config.json of a transformers DPR encoder (projection_dim 0) around a BERT config."""
  if kind not in DPR_ARCHITECTURES:
    raise ValueError(f"kind must be one of {tuple(DPR_ARCHITECTURES)}, got {kind!r}")
  d = config.to_dict()
  d.update(architectures=[DPR_ARCHITECTURES[kind][0]], model_type="dpr", projection_dim=0)
  return d


def write_dpr_files(model: BertEncoder, out_dir: PathLike, *, kind: str = "question",
                    tokenizer=None) -> None:
  """Writes a dir that transformers loads as DPRQuestionEncoder ('question') or
  DPRContextEncoder ('ctx'); its pooler_output is the [CLS] hidden state, so only
  'cls' pooling models can be written."""
  from safetensors.numpy import save_file
  if model.pooling != "cls":
    raise ValueError(f"DPR encoders pool the [CLS] token; this model uses {model.pooling!r} pooling")
  if model.code_bits:
    raise ValueError(f"this model has a {model.code_bits}-dim code head (dense + LayerNorm), which the "
                     "DPR layout cannot hold (its projection is a bare linear layer)")
  config = dpr_config_dict(model.config, kind)
  prefix = DPR_ARCHITECTURES[kind][1]
  out_dir = pathlib.Path(out_dir)
  with open(out_dir / CONFIG_FILE, "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")
  tensors = {prefix + k: v for k, v in state_dict_from_bert(model).items()}
  save_file(tensors, str(out_dir / SAFETENSORS_FILE), metadata={"format": "pt"})
  if tokenizer is not None:
    tokenizer.save(out_dir)


def save_dpr(model: BertEncoder, out_dir: PathLike, *, kind: str = "question", tokenizer=None) -> None:
  """`write_dpr_files` into a fresh dir, replacing `out_dir` atomically."""
  with io.atomic_directory(out_dir) as tmp:
    write_dpr_files(model, tmp, kind=kind, tokenizer=tokenizer)
