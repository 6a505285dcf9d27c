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
  # PRNG of the dropout masks: 'threefry2x32' (JAX's default; what the paper configs train with)
  # or 'rbg' / 'unsafe_rbg' (XLA's RngBitGenerator: cheaper random bits, other masks; MaxText's
  # choice). Parameter init always uses threefry, so a fresh model starts the same either way.
  c.rng_impl = "threefry2x32"
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

  c.model = ml_collections.ConfigDict()
  c.model.init = "hf"            # 'hf': load model.hf_dir; 'random': model.bert architecture
  c.model.hf_dir = env_path("BPR_MODEL_DIR", "bert-base-uncased")
  c.model.pooling = "cls"        # 'cls' (paper) or 'mean'
  c.model.dtype = "float32"      # compute dtype: 'float32' or 'bfloat16'
  c.model.shared_encoder = False
  c.model.remat = False
  c.model.dropout = 0.1          # < 0 keeps the checkpoint's own rates
  # Attention-probability dropout. < 0 (default) follows model.dropout, BERT's and the paper's
  # recipe, and runs the 'manual' einsum/softmax path. 0 lets model.attention='auto' run
  # jax.nn.dot_product_attention (cuDNN flash attention on GPU in bfloat16; XLA on TPU; the
  # einsum path on CPU, where it measured faster) and cut a MiniLM CPU step 1.55x
  # (benchmarks/results/train_step_speed.json); it changes the recipe, so it is opt-in.
  c.model.attention_dropout = -1.0
  c.model.attention = "auto"     # 'auto' | 'manual' | 'xla' | 'cudnn' (bpr_jax/models/bert.py)
  # Positives and hard negatives in one passage-encoder forward (off: slower on CPU, see
  # benchmarks/results/train_step_speed.json; unmeasured on GPU).
  c.model.fuse_passages = False
  # Layers as one lax.scan (same parameter tree). Off: on CPU it did not cut MiniLM's
  # train-step compile time (benchmarks/train_step_speed.py).
  c.model.scan_layers = False
  c.model.param_sharding = "replicated"  # or 'fsdp'
  c.model.code_bits = 0          # 0: the code is the pooled vector (paper); N > 0: dense + LayerNorm to N dims
  # A fresh code head's vectors start with this norm (LayerNorm scale init_norm / sqrt(N)), i.e. the
  # scale of the rerank logits <e_q, h~p> at the start; 0: LayerNorm's scale 1 (norm sqrt(N), as the original).
  c.model.code_head_norm = 0.0
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
  c.data.pad_multiple = 32       # pad each batch to its longest row rounded up to this (<= max length); 0: to the max
  c.data.token_cache_dir = ""    # token ids made once, kept here between runs; "": WORKDIR/token_cache (local workdirs)
  c.data.teacher_cache_dir = ""  # loss.teacher's vectors made once, kept here; "": WORKDIR/teacher_cache (local workdirs)
  c.data.num_hard_negatives = 1
  c.data.shuffle_positives = False
  c.data.skip_invalid = False    # True: skip (and count) malformed records instead of failing
  c.data.tiny_seed = 0

  c.loss = ml_collections.ConfigDict()
  c.loss.alpha = 2.0             # margin of L_cand (paper; the original code's default was 0.1)
  c.loss.gamma = 0.1             # beta = sqrt(gamma * step + 1)
  c.loss.cand_reduction = "mean"  # 'mean' over (question, negative) pairs (original code) or 'sum' (paper)
  c.loss.relaxation = "tanh"     # 'tanh' (paper) or 'ste' (forward sign, gradient of tanh; original --use_ste)
  c.loss.cand_loss = "margin"    # 'margin' (paper) or 'ce' (original --use_binary_cross_entropy_loss)
  c.loss.terms = "both"          # 'both' (L_cand + L_rerank), 'cand' (--no_dense_loss), 'rerank' (--no_binary_loss)
  c.loss.beta_schedule = "gamma"  # 'gamma': sqrt(gamma step + 1); 'final': same shape reaching final_beta at the end
  c.loss.final_beta = 0.0        # with beta_schedule='final' (>= 1), e.g. 43 (the paper's runs end near it)
  # Teacher distillation (bpr_jax/losses.py, bpr_jax/teacher.py); off by default (the paper's loss).
  # L = label_weight * L_bpr + distill_weight * KL_T(teacher || <e_q, h~p>)
  #     + distill_cand_weight * KL_T(teacher || <h~q, h~p>), teacher scores over the global batch's candidates.
  c.loss.teacher = ""            # a float teacher: an exported model dir (training export, --hf_model or DPR import)
  c.loss.label_weight = 1.0      # weight of the label terms (L_cand + L_rerank); 0: label-free, only the teacher
  c.loss.distill_weight = 0.0    # weight of KL_T(teacher || rerank scores <e_q, h~p>) (DPR mode: <e_q, e_p>); 0: off
  c.loss.distill_cand_weight = 0.0  # weight of KL_T(teacher || candidate scores <h~q, h~p>); 0: off
  c.loss.distill_temperature = 1.0  # T of the student's softmax (the KL is multiplied by T^2, as Hinton et al.)
  c.loss.distill_teacher_temperature = 0.0  # T of the teacher's softmax; 0: the same as distill_temperature
  c.loss.distill_similarity = "dot"  # teacher score: 'dot' (<t_q, t_p>, DPR) or 'cos' (sentence-transformers models)
  # Nested codes: the loss averaged over these prefixes of the code, e.g. '128,384,768' of a 768-bit
  # code; each a multiple of 8, increasing, at most the code size. '': off (the whole code only).
  c.loss.nested_bits = ""

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 2e-5
  c.optim.warmup_fraction = 0.06
  c.optim.weight_decay = 0.0
  c.optim.adam_eps = 1e-8
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip = 2.0
  return c
