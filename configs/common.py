"""The config schema shared by every configs/*.py file, with the paper's settings as defaults.

Every field a run reads is defined here, so a typo in a command-line override
(`--config.batch_sise=...`) is an error, not a silently ignored new field.
"""
import os

import ml_collections


def env_path(name: str, *parts: str) -> str:
  """$name joined with parts, or '' when the variable is unset (paths are never hard-coded)."""
  base = os.environ.get(name, "")
  return os.path.join(base, *parts) if base else ""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "bpr"                 # 'bpr' (hash layer, L_cand + L_rerank) or 'dpr' (baseline)
  c.seed = 42
  c.batch_size = 128             # global batch over all devices and hosts
  c.num_epochs = 40
  c.num_train_steps = -1         # > 0 overrides num_epochs
  c.log_every = 100
  c.eval_every = 1000            # dev average rank of the positive passage; 0 disables
  c.eval_max_examples = 4096
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.prefetch = 2
  c.testing_crash_after_step = 0  # tests only: SIGKILL right after this step's checkpoint

  c.model = ml_collections.ConfigDict()
  c.model.init = "hf"            # 'hf': load model.hf_dir; 'random': model.bert architecture
  c.model.hf_dir = env_path("BPR_MODEL_DIR", "bert-base-uncased")
  c.model.pooling = "cls"        # 'cls' (paper) or 'mean'
  c.model.dtype = "float32"      # compute dtype: 'float32' or 'bfloat16'
  c.model.shared_encoder = False
  c.model.remat = False
  c.model.dropout = 0.1          # < 0 keeps the checkpoint's own rates
  # Attention-probability dropout. 0 (default) lets model.attention='auto' run attention as
  # jax.nn.dot_product_attention (cuDNN flash attention on GPU in bfloat16; XLA on TPU; the
  # einsum path on CPU, where it measured faster); > 0 needs the 'manual' einsum/softmax path;
  # < 0 follows model.dropout (BERT's own recipe).
  c.model.attention_dropout = 0.0
  c.model.attention = "auto"     # 'auto' | 'manual' | 'xla' | 'cudnn' (bpr_jax/models/bert.py)
  # Positives and hard negatives in one passage-encoder forward (off: slower on CPU, see
  # benchmarks/results/train_step_speed.json; unmeasured on GPU).
  c.model.fuse_passages = False
  # Layers as one lax.scan (same parameter tree). Off: on CPU it did not cut MiniLM's
  # train-step compile time (benchmarks/train_step_speed.py).
  c.model.scan_layers = False
  c.model.param_sharding = "replicated"  # or 'fsdp'
  c.model.bert = ml_collections.ConfigDict(dict(
      vocab_size=0, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
      intermediate_size=3072, max_position_embeddings=512))

  c.data = ml_collections.ConfigDict()
  c.data.source = "dpr_json"     # 'tiny' | 'dpr_json' | 'beir' | 'tfds'
  c.data.train_path = ""
  c.data.dev_path = ""
  c.data.beir_dir = ""
  c.data.train_split = "train"
  c.data.dev_split = ""
  c.data.hard_negatives_json = ""
  c.data.dev_hard_negatives_json = ""
  c.data.tfds_name = ""
  c.data.tfds_data_dir = ""
  c.data.tokenizer_dir = ""      # default: model.hf_dir
  c.data.question_max_length = 256
  c.data.passage_max_length = 256
  c.data.num_hard_negatives = 1
  c.data.shuffle_positives = False
  c.data.skip_invalid = False    # True: skip (and count) malformed records instead of failing
  c.data.tiny_seed = 0

  c.loss = ml_collections.ConfigDict()
  c.loss.alpha = 2.0             # margin of L_cand (paper; the original code's default was 0.1)
  c.loss.gamma = 0.1             # beta = sqrt(gamma * step + 1)
  c.loss.cand_reduction = "mean"  # 'mean' over (question, negative) pairs (original code) or 'sum' (paper)

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 2e-5
  c.optim.warmup_fraction = 0.06
  c.optim.weight_decay = 0.0
  c.optim.adam_eps = 1e-8
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip = 2.0
  return c
