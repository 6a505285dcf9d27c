"""BPR on TriviaQA with the paper's settings (as configs/nq.py, DPR's TriviaQA files).

Launch:
  python -m bpr_jax.main --config=configs/tqa.py --workdir=$WORKDIR
"""
from configs.common import base_config, env_path


def get_config():
  c = base_config()
  c.data.source = "dpr_json"
  c.data.train_path = env_path("BPR_DATA_DIR", "retriever", "trivia-train.json")
  c.data.dev_path = env_path("BPR_DATA_DIR", "retriever", "trivia-dev.json")
  c.data.dev_split = "dev"
  return c
