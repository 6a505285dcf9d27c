"""BPR on Natural Questions with the paper's settings (Yamada et al. 2021, Sec. 4.1).

bert-base-uncased, global batch 128, length 256, 40 epochs, AdamW lr 2e-5, 6% warm-up then
linear decay, grad clip 2.0, dropout 0.1, alpha 2, gamma 0.1, one BM25 hard negative.

Data: DPR's `biencoder-nq-train.json` / `biencoder-nq-dev.json` under $BPR_DATA_DIR/retriever,
model: Hugging Face `bert-base-uncased` directory at $BPR_MODEL_DIR/bert-base-uncased.

Launch (one host, all local accelerators):
  python -m bpr_jax.main --config=configs/nq.py --workdir=$WORKDIR
TPU pod:
  CONFIG=configs/nq.py WORKDIR=gs://BUCKET/bpr-nq launch/tpu_pod.sh
DPR baseline with the same settings:
  python -m bpr_jax.main --config=configs/nq.py --config.mode=dpr --workdir=$WORKDIR
"""
from configs.common import base_config, env_path


def get_config():
  c = base_config()
  c.data.source = "dpr_json"
  c.data.train_path = env_path("BPR_DATA_DIR", "retriever", "nq-train.json")
  c.data.dev_path = env_path("BPR_DATA_DIR", "retriever", "nq-dev.json")
  c.data.dev_split = "dev"
  return c
