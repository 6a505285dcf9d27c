"""A tiny random BERT on the built-in synthetic dataset: trains on 2 CPU cores in ~1 minute.

Nothing to download: the data and its vocabulary are generated into WORKDIR/tiny_data.

Launch:
  python -m bpr_jax.main --config=configs/tiny.py --workdir=/tmp/bpr-tiny
"""
from configs.common import base_config


def get_config():
  c = base_config()
  c.batch_size = 16
  c.num_epochs = 10
  c.log_every = 10
  c.eval_every = 50
  c.eval_max_examples = 64
  c.checkpoint_every = 50
  c.model.init = "random"
  c.model.pooling = "mean"  # from random init, mean pooling learns this task far faster than [CLS]
  c.model.hf_dir = ""
  c.model.bert.update(dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=64))
  c.data.source = "tiny"
  c.data.dev_split = "dev"
  c.data.question_max_length = 16
  c.data.passage_max_length = 32
  c.optim.learning_rate = 1e-3
  c.loss.gamma = 1.0  # few steps: anneal beta faster than the paper's 0.1
  return c
