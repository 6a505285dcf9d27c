"""save_exported / load_exported / import_dpr with tiny random encoders."""
import contextlib
import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import save_file

from bpr_jax import export_format, exported_model, importers
from bpr_jax.models import hf
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.tokenization import Tokenizer
from conftest import save_bert_dir

WORDS = ["who", "what", "wrote", "is", "the", "a", "binary", "passage", "retriever",
         "hash", "code", "paper", "title", "text", "about", "retrieval", "fast", "search"]
QUESTIONS = ["who wrote the paper", "what is a binary code", "fast search", "hash"]
TITLES = ["binary passage retriever", "", "hash code"]
TEXTS = ["a paper about fast retrieval", "the text is about search", "what is the code"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(tokenizer, config, question encoder, passage encoder, settings)."""
  vocab_dir = tmp_path_factory.mktemp("vocab")
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  (vocab_dir / "vocab.txt").write_text("\n".join(specials + WORDS) + "\n")
  tokenizer = Tokenizer.from_dir(vocab_dir)
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
  q = BertEncoder(config, rngs=nnx.Rngs(0))
  p = BertEncoder(config, rngs=nnx.Rngs(1))
  settings = {"mode": "bpr", "pooling": "cls", "question_max_length": 8,
              "passage_max_length": 16, "code_bits": 32, "hidden_size": 32,
              "shared_encoder": False}
  return tokenizer, config, q, p, settings


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
  tokenizer, _, q, p, settings = tiny
  out = tmp_path_factory.mktemp("export") / "model"
  export_format.save_exported(q, p, tokenizer, settings, out)
  return out


def _direct(model, batch):
  return np.asarray(model(*(jnp.asarray(batch[k]) for k in
                            ("input_ids", "attention_mask", "token_type_ids"))))


def test_layout(exported, tiny):
  for name in ("question_encoder", "passage_encoder"):
    files = {p.name for p in (exported / name).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
  settings = json.loads((exported / export_format.SETTINGS_FILE).read_text())
  for key, value in tiny[4].items():
    assert settings[key] == value
  assert not any(p.name.startswith(".") for p in exported.parent.iterdir())


def test_round_trip_and_encode(exported, tiny):
  tokenizer, config, q, p, settings = tiny
  model = exported_model.load_exported(exported)
  assert model.settings["mode"] == "bpr" and model.question_encoder.config == config
  q_vecs = model.encode_questions(QUESTIONS, batch_size=3)  # 3 + 1 padded rows
  assert q_vecs.shape == (4, 32) and q_vecs.dtype == np.float32
  expected = _direct(q, tokenizer.questions(QUESTIONS, 8))
  np.testing.assert_allclose(q_vecs, expected, atol=1e-5)
  p_vecs = model.encode_passages(TITLES, TEXTS)
  assert p_vecs.shape == (3, 32)
  np.testing.assert_allclose(p_vecs, _direct(p, tokenizer.passages(TITLES, TEXTS, 16)), atol=1e-5)
  assert np.abs(p_vecs - _direct(q, tokenizer.passages(TITLES, TEXTS, 16))).max() > 1e-3
  assert model.encode_questions([]).shape == (0, 32)


def test_passage_encoder_loads_in_transformers(exported, tiny):
  tokenizer = tiny[0]
  batch = tokenizer.passages(TITLES, TEXTS, 16)
  tm = transformers.BertModel.from_pretrained(str(exported / "passage_encoder"),
                                              add_pooling_layer=False).eval()
  with torch.no_grad():
    out = tm(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
  expected = out.last_hidden_state[:, 0].numpy()
  ours = exported_model.load_exported(exported).encode_passages(TITLES, TEXTS)
  np.testing.assert_allclose(ours, expected, atol=1e-5)
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(exported / "passage_encoder"))
  assert hf_tok("binary passage", "about search")["input_ids"] == \
      tokenizer.passages(["binary passage"], ["about search"], 7)["input_ids"][0].tolist()


def test_shared_encoder_and_mean_pooling(tmp_path, tiny):
  tokenizer, config, q, _, settings = tiny
  mean = BertEncoder(config, pooling="mean", rngs=nnx.Rngs(2))
  shared = {**settings, "shared_encoder": True, "pooling": "mean", "mode": "dpr", "code_bits": 0}
  export_format.save_exported(mean, mean, tokenizer, shared, tmp_path / "m")
  model = exported_model.load_exported(tmp_path / "m")
  assert model.question_encoder is model.passage_encoder
  batch = tokenizer.questions(QUESTIONS, 8)
  np.testing.assert_allclose(model.encode_questions(QUESTIONS), _direct(mean, batch), atol=1e-5)
  with pytest.raises(ValueError, match="pooling"):
    export_format.save_exported(q, q, tokenizer, shared, tmp_path / "bad")
  assert not (tmp_path / "bad").exists()


def test_errors(tmp_path, exported, tiny):
  tokenizer, _, q, p, settings = tiny
  with pytest.raises(FileNotFoundError, match="not found"):
    exported_model.load_exported(tmp_path / "absent")
  with pytest.raises(FileNotFoundError, match="bpr.json"):
    exported_model.load_exported(tmp_path)
  with pytest.raises(ValueError, match="missing settings code_bits"):
    export_format.save_exported(q, p, tokenizer, {k: v for k, v in settings.items() if k != "code_bits"},
                                tmp_path / "x")
  with pytest.raises(ValueError, match="mode"):
    export_format.save_exported(q, p, tokenizer, {**settings, "mode": "colbert"}, tmp_path / "x")
  with pytest.raises(ValueError, match="hidden_size"):
    export_format.save_exported(q, p, tokenizer, {**settings, "hidden_size": 64}, tmp_path / "x")
  broken = tmp_path / "broken"
  export_format.save_exported(q, p, tokenizer, settings, broken)
  (broken / "passage_encoder" / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="passage_encoder"):
    exported_model.load_exported(broken)
  for piece in ("passage_encoder", "question_encoder"):
    shutil.rmtree(broken / piece)
    with pytest.raises(FileNotFoundError, match=piece):
      exported_model.load_exported(broken)
  (broken / "bpr.json").write_text("{not json")
  with pytest.raises(ValueError, match="bpr.json"):
    exported_model.load_exported(broken)


def test_import_dpr(tmp_path, tiny):
  tokenizer, config, q, p, _ = tiny
  ckpt = tmp_path / "dpr"
  ckpt.mkdir()
  tensors = {f"question_encoder.bert_model.{k}": v for k, v in hf.state_dict_from_bert(q).items()}
  tensors.update({f"ctx_encoder.bert_model.{k}": v for k, v in hf.state_dict_from_bert(p).items()})
  save_file(tensors, str(ckpt / "model.safetensors"))
  (ckpt / "config.json").write_text(json.dumps({**config.to_dict(), "model_type": "dpr",
                                                "projection_dim": 0}))
  vocab_dir = tmp_path / "vocab"
  tokenizer.save(vocab_dir)
  importers.import_dpr(ckpt, tmp_path / "out", tokenizer_dir=vocab_dir, max_length=16)
  model = exported_model.load_exported(tmp_path / "out")
  assert model.settings["code_bits"] == 32 and model.settings["passage_max_length"] == 16
  np.testing.assert_allclose(model.encode_passages(TITLES, TEXTS),
                             _direct(p, tokenizer.passages(TITLES, TEXTS, 16)), atol=1e-5)
  with pytest.raises(FileNotFoundError, match="config.json"):
    (ckpt / "config.json").unlink()
    importers.import_dpr(ckpt, tmp_path / "out2", tokenizer_dir=vocab_dir)


def test_export_of_an_off_the_shelf_hf_encoder(tmp_path, minilm_dir):
  """`export --hf_model`: one HF BERT as both encoders (post-hoc sign-code baseline)."""
  import subprocess
  import sys

  from bpr_jax.exported_model import load_exported
  from bpr_jax.models.hf import load_bert
  out = tmp_path / "minilm"
  proc = subprocess.run([sys.executable, "-m", "bpr_jax.export", f"--hf_model={minilm_dir}", "--pooling=mean",
                         "--max_length=64", f"--output={out}"], capture_output=True, text=True, timeout=300,
                        cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 0, proc.stderr[-2000:]
  exported = load_exported(out)
  assert exported.settings["shared_encoder"] and exported.settings["code_bits"] == 384
  texts = ["binary codes for passage retrieval", "a second question"]
  direct = load_bert(minilm_dir, pooling="mean")
  tokens = exported.tokenizer.questions(texts, 64)
  want = np.asarray(direct(tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"]))
  np.testing.assert_allclose(exported.encode_questions(texts), want, atol=1e-5)
  bad = subprocess.run([sys.executable, "-m", "bpr_jax.export", f"--output={tmp_path / 'x'}"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "exactly one of --workdir" in bad.stderr


def test_length_buckets_do_not_change_embeddings(tmp_path, minilm_dir):
  from bpr_jax.exported_model import encode_batches, make_encode_fn
  from bpr_jax.models.hf import load_bert
  model = load_bert(minilm_dir, pooling="mean")
  tok = Tokenizer.from_dir(minilm_dir)
  texts = ["short", "a somewhat longer question about binary passage retrieval and hashing"]
  batch = tok.questions(texts, 128)
  fn = make_encode_fn(model)
  bucketed = encode_batches(fn, batch, 8, 384)
  whole = fn({k: np.pad(v, ((0, 6), (0, 0))) for k, v in batch.items()})[:2]  # all 128 columns
  np.testing.assert_allclose(bucketed, whole, atol=2e-5)


def test_warmup_compiles_every_serving_shape(tmp_path):
  from bpr_jax.exported_model import MIN_BUCKET
  vocab = tmp_path / "vocab"
  vocab.mkdir()
  (vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
  cfg = BertConfig(vocab_size=7, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=64)
  model = BertEncoder(cfg, rngs=nnx.Rngs(0))
  settings = {"mode": "bpr", "pooling": "cls", "question_max_length": 64, "passage_max_length": 64,
              "code_bits": 16, "hidden_size": 16, "shared_encoder": True}
  export_format.save_exported(model, model, Tokenizer.from_dir(vocab), settings, tmp_path / "e")
  exported = exported_model.load_exported(tmp_path / "e")
  assert MIN_BUCKET == 16
  # Oracle: XLA's own compile events (jax.monitoring), not the function's count.
  with _count_compiles() as warm:
    shapes = exported.warmup_questions(5)
  # rows 1, 2, 4, 8 (max 5 -> 8) x lengths 16, 32, 64
  # one compile of the model per shape (JAX may add a host-to-device "stage" per shape too)
  assert shapes == 12 and warm.count("jit(encode)") == 12, warm
  with _count_compiles() as warm_again:
    exported.warmup_questions(5)
  assert warm_again == []  # the shapes are in the jit cache
  # Serving after warm-up never compiles: 1..5 questions, token lengths in every bucket
  # (3, 16, 17, 33, 64 and truncated past question_max_length).
  with _count_compiles() as serving:
    for n in range(1, 6):
      for words in (1, 14, 15, 31, 62, 100):
        out = exported.encode_questions([" ".join(["a", "b"][i % 2] for i in range(words))] * n)
        assert out.shape == (n, 16)
  assert serving == [], serving
  with _count_compiles() as bigger:  # a 9-question batch is a new row count: the oracle sees it
    exported.encode_questions(["a"] * 9)
  assert bigger.count("jit(encode)") == 1, bigger


@contextlib.contextmanager
def _count_compiles():
  """Collects one entry per XLA backend compilation (jax.monitoring) inside the block."""
  from jax import monitoring
  events = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(kwargs.get("fun_name", event))
  monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    monitoring.unregister_event_duration_listener(listener)


# ----------------------------------------------------------------------------
# DPR door: transformers DPRQuestionEncoder / DPRContextEncoder dirs in, as a command

DPR_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def dpr_dirs(tmp_path_factory):
  """Tiny random DPR encoders saved by transformers' save_pretrained: (root, q, c, tok)."""
  root = tmp_path_factory.mktemp("dpr_hf")
  (root / "vocab.txt").write_text("\n".join(DPR_SPECIALS + WORDS) + "\n")
  cfg = transformers.DPRConfig(vocab_size=len(DPR_SPECIALS + WORDS), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
  torch.manual_seed(0)
  q = transformers.DPRQuestionEncoder(cfg).eval()
  c = transformers.DPRContextEncoder(cfg).eval()
  q.save_pretrained(str(root / "question"))  # config.json + model.safetensors, no tokenizer
  c.save_pretrained(str(root / "ctx"))
  tok = transformers.DPRQuestionEncoderTokenizer(vocab_file=str(root / "vocab.txt"))
  tok.save_pretrained(str(root / "tokenizer"))
  return root, q, c, tok


def _run_export(*args):
  import subprocess
  import sys
  return subprocess.run([sys.executable, "-m", "bpr_jax.export", *args], capture_output=True, text=True,
                        timeout=300, cwd=pathlib.Path(__file__).resolve().parents[1])


def _torch_pooled(model, batch):
  with torch.no_grad():
    return model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}).pooler_output.numpy()


def test_dpr_encoders_in_as_a_command_give_torch_vectors(tmp_path, dpr_dirs):
  root, q, c, tok = dpr_dirs
  out = tmp_path / "export"
  proc = _run_export(f"--dpr_question_encoder={root / 'question'}", f"--dpr_ctx_encoder={root / 'ctx'}",
                     f"--tokenizer={root / 'tokenizer'}", "--mode=dpr", "--max_length=16", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  model = exported_model.load_exported(out)
  assert model.settings["mode"] == "dpr" and model.settings["pooling"] == "cls"
  assert model.settings["code_bits"] == 32 and not model.settings["shared_encoder"]
  titles, texts = TITLES, TEXTS
  q_batch = model.tokenizer.questions(QUESTIONS, 16)
  p_batch = model.tokenizer.passages(titles, texts, 16)
  # The project's tokenisation is DPR's: [CLS] q [SEP]; [CLS] title [SEP] text [SEP] with token types.
  assert tok(QUESTIONS[0])["input_ids"] == [i for i in q_batch["input_ids"][0].tolist() if i]
  pair = tok(titles[0], texts[0])
  assert pair["input_ids"] == [i for i in p_batch["input_ids"][0].tolist() if i]
  assert pair["token_type_ids"] == p_batch["token_type_ids"][0][:len(pair["input_ids"])].tolist()
  np.testing.assert_allclose(model.encode_questions(QUESTIONS), _torch_pooled(q, q_batch), atol=1e-5)
  np.testing.assert_allclose(model.encode_passages(titles, texts), _torch_pooled(c, p_batch), atol=1e-5)


def test_dpr_import_errors(tmp_path, dpr_dirs):
  root = dpr_dirs[0]
  q_dir, c_dir = f"--dpr_question_encoder={root / 'question'}", f"--dpr_ctx_encoder={root / 'ctx'}"
  no_tok = _run_export(q_dir, c_dir, f"--output={tmp_path / 'a'}")
  assert no_tok.returncode != 0 and "--tokenizer" in no_tok.stderr
  one = _run_export(q_dir, f"--output={tmp_path / 'b'}")
  assert one.returncode != 0 and "both --dpr_question_encoder and --dpr_ctx_encoder" in one.stderr
  swapped = _run_export(f"--dpr_question_encoder={root / 'ctx'}", f"--dpr_ctx_encoder={root / 'question'}",
                        f"--tokenizer={root / 'tokenizer'}", f"--output={tmp_path / 'c'}")
  assert swapped.returncode != 0 and "question_encoder.bert_model." in swapped.stderr
  assert not any((tmp_path / n).exists() for n in "abc")


def test_dpr_layout_round_trip(tmp_path, tiny):
  """hf.save_dpr writes what transformers loads as DPRQuestionEncoder / DPRContextEncoder."""
  tokenizer, _, q, p, _ = tiny
  hf.save_dpr(q, tmp_path / "q", kind="question", tokenizer=tokenizer)
  hf.save_dpr(p, tmp_path / "c", kind="ctx", tokenizer=tokenizer)
  batch = tokenizer.passages(TITLES, TEXTS, 16)
  tq = transformers.DPRQuestionEncoder.from_pretrained(str(tmp_path / "q")).eval()
  tc = transformers.DPRContextEncoder.from_pretrained(str(tmp_path / "c")).eval()
  np.testing.assert_allclose(_torch_pooled(tq, batch), _direct(q, batch), atol=1e-5)
  np.testing.assert_allclose(_torch_pooled(tc, batch), _direct(p, batch), atol=1e-5)
  importers.import_dpr((tmp_path / "q", tmp_path / "c"), tmp_path / "back", max_length=16)
  back = exported_model.load_exported(tmp_path / "back")
  np.testing.assert_allclose(back.encode_passages(TITLES, TEXTS), _direct(p, batch), atol=1e-6)
  mean = BertEncoder(q.config, pooling="mean", rngs=nnx.Rngs(3))
  with pytest.raises(ValueError, match="CLS"):
    hf.save_dpr(mean, tmp_path / "m")
  assert not (tmp_path / "m").exists()


def test_training_starts_from_an_export(tmp_path, exported, tiny):
  """--config.model.hf_dir=EXPORT: tokenizer, config and both encoders' weights come from it."""
  import jax

  from bpr_jax import parallel, train
  from configs import tiny as tiny_config
  tokenizer, config, q, p, _ = tiny
  c = tiny_config.get_config()
  c.model.init, c.model.hf_dir, c.model.pooling = "hf", str(exported), "cls"
  c.data.source = "dpr_json"
  c.data.train_path = str(pathlib.Path(__file__).parent / "fixtures" / "dpr_small.json")
  got_tokenizer, train_source, _ = train.build_data(c, str(tmp_path))
  assert got_tokenizer.vocab_size == tokenizer.vocab_size and len(train_source) > 0
  bert = train.encoder_configs(c, got_tokenizer)
  assert bert.hidden_size == config.hidden_size and bert.num_hidden_layers == config.num_hidden_layers
  biencoder, params = train.build_biencoder(c, bert, load_weights=True, mesh=parallel.make_mesh())
  params = jax.tree.map(np.asarray, params)
  for which, want in (("question", q), ("passage", p)):
    module = biencoder.question_module(params) if which == "question" else biencoder.passage_module(params)
    got = hf.state_dict_from_bert(module)
    for name, value in hf.state_dict_from_bert(want).items():
      np.testing.assert_array_equal(got[name], value, err_msg=f"{which} {name}")
  c.model.shared_encoder = True  # shared: the question encoder
  biencoder, params = train.build_biencoder(c, bert, load_weights=True, mesh=parallel.make_mesh())
  got = hf.state_dict_from_bert(biencoder.passage_module(jax.tree.map(np.asarray, params)))
  np.testing.assert_array_equal(got["encoder.layer.1.output.dense.weight"],
                                hf.state_dict_from_bert(q)["encoder.layer.1.output.dense.weight"])
  # A plain HF BERT dir is used as is, for both encoders.
  save_bert_dir(p, tmp_path / "bert", tokenizer=tokenizer)
  assert export_format.encoder_dir(tmp_path / "bert", "passage") == str(tmp_path / "bert")
  c.model.hf_dir, c.model.shared_encoder = str(tmp_path / "bert"), False
  biencoder, params = train.build_biencoder(c, bert, load_weights=True, mesh=parallel.make_mesh())
  params = jax.tree.map(np.asarray, params)
  for module in (biencoder.question_module(params), biencoder.passage_module(params)):
    np.testing.assert_array_equal(hf.state_dict_from_bert(module)["encoder.layer.0.output.dense.weight"],
                                  hf.state_dict_from_bert(p)["encoder.layer.0.output.dense.weight"])
