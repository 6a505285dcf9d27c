"""Binary codes learned from a float teacher without labels: the recipe `python -m bpr_jax.binarize` trains.

The student is BPR starting from the teacher's weights (so step 0 is the teacher's post-hoc sign
codes), trained only on the teacher's scores (label_weight 0) over the teacher's own top-k for each
question (mined by binarize): KL of the teacher's cosines against the student's cosines of its
rerank and candidate scores, both at temperature 0.05 (sentence-transformers' training scale),
straight-through sign (STE), AdamW 3e-5 with 10% warm-up, batch 16, 1 hard negative per question,
attention-probability dropout 0; the SciFact `free48` recipe (configs/scifact.py), on epochs
instead of steps. binarize fills in the teacher (model.hf_dir, loss.teacher), its pooling and
lengths (read from its bpr.json), and the mined data; every field can be overridden with
--config.FIELD=VALUE, e.g. --config.model.code_bits=768 --config.model.code_head_norm=2.5 for a
96 B code head, or --config.loss.distill_similarity=dot --config.loss.distill_temperature=1 for a
DPR teacher trained on inner products.

  python -m bpr_jax.binarize --teacher=T --passages=corpus.jsonl --questions=questions.txt --output=OUT
"""
from configs.common import base_config


def get_config():
  c = base_config()
  c.mode = "bpr"
  c.seed = 42
  c.batch_size = 16
  c.num_epochs = 5
  c.num_train_steps = -1
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint_every = 100
  c.keep_checkpoints = 2

  c.model.init = "hf"
  c.model.hf_dir = ""  # the teacher (binarize)
  c.model.dtype = "float32"
  c.model.dropout = 0.1
  c.model.attention_dropout = 0.0

  c.data.source = "dpr_json"
  c.data.train_path = ""  # the mined file (binarize)
  c.data.dev_split = ""
  c.data.num_hard_negatives = 1

  c.optim.learning_rate = 3e-5
  c.optim.warmup_fraction = 0.1

  c.loss.gamma = 1.0
  c.loss.relaxation = "ste"
  c.loss.teacher = ""  # the teacher (binarize)
  c.loss.label_weight = 0.0
  c.loss.distill_weight = 1.0
  c.loss.distill_cand_weight = 1.0
  c.loss.distill_similarity = "cos"
  c.loss.distill_temperature = 0.05
  return c
