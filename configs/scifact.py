"""BPR (or DPR) fine-tuned from all-MiniLM-L6-v2 on BEIR SciFact: named recipes.

`get_config(arg)` picks the recipe (`--config=configs/scifact.py:NAME`); no argument gives `nested`:

  nested   one 768-bit code head (dense + LayerNorm, starting norm 2.5), STE, its loss averaged over
           the 128-, 384- and 768-bit prefixes: 16, 48 and 96 B from one model (`encode
           --code_bits=N` or `index --code_bits=N`). Chosen on dev at every size (200 steps, dev
           nDCG@10 16 B 0.6973, 48 B 0.7739, 96 B 0.7665, against the separate recipes below
           0.6924, 0.7438, 0.7381 and label48 0.7612; test 0.6779, 0.7421, 0.7503).
  bpr48    48 B a passage (the 384-bit pooled vector): STE, no code head. The best separately
           trained 48 B recipe on dev at 200 steps (dev nDCG@10 0.7438; [CLS] pooling 0.7091,
           gamma 0.1 0.7070, lr 1e-4 0.7394, softmax-CE candidate loss 0.7157, tanh 0.7344).
  bpr16    16 B (128 bits): STE and a 128-bit code head, starting norm 2.5: the best separately
           trained 16 B variant on dev (no other way to get 128 bits from MiniLM's 384 dims).
  bpr96    96 B (768 bits): STE and a 768-bit code head: the best separately trained 96 B variant.
  dpr      the float DPR baseline with the same data, budget and optimiser.

Recipes that learn the codes from a float teacher (issue 24; runs in benchmarks/scifact_teacher.py):

  free48   label-free: the teacher ($BPR_SCIFACT_TEACHER, an export of MiniLM as released:
           `python -m bpr_jax.export --hf_model=... --mode=dpr`) is also the starting point; the
           training data are its own top-k for the train queries, qrels unused
           ($BPR_SCIFACT_TEACHER_NEGATIVES: `python -m bpr_jax.mine_negatives --teacher=...
           --similarity=cos`); loss = distillation of the teacher's cosines into the student's
           cosines of its rerank and candidate scores (both at temperature 0.05, MiniLM's training
           scale); 48 B. At 200 steps: test nDCG@10 0.6418 (98.6% of the teacher's float 0.6509;
           its post-hoc sign codes 0.6167, PQ 0.6376), dev 0.6738. `python -m bpr_jax.binarize`
           runs this recipe (configs/binarize.py) for any teacher and corpus.
  label48  bpr48 plus distillation (weight 1) from a fine-tuned float teacher ($BPR_SCIFACT_TEACHER,
           e.g. the `dpr` recipe's export). At 200 steps from the 200-step DPR: dev nDCG@10 0.7612
           (above bpr48's 0.7438) but test 0.6983 (bpr48 0.7082, DPR float 0.7287).

Every recipe: batch 16 questions (first positive + 1 BM25 hard negative each), question length
64, passage length 256, mean pooling (as MiniLM was trained), AdamW lr 3e-5 with 10% warm-up,
gamma 1 (beta = sqrt(step + 1)), dropout 0.1 with attention-probability dropout 0, 400 steps
(8 epochs of the benchmark's 709-query train split). Measured on SciFact test (nDCG@10 at 400
steps; benchmarks/README.md): bpr16 0.7030, bpr48 0.7299, bpr96 0.7703, dpr 0.7428 (nested,
free48 and label48 are measured at 200 steps only).

Paths come from the environment: $BPR_SHARED_DIR (default `shared/` beside the repository root)
holds models/all-MiniLM-L6-v2 and data/scifact; $BPR_SCIFACT_HARD_NEGATIVES is the hard-negative
file mined in step 1 (default <system temp dir>/bpr-scifact/hard_negatives_train.json).

Commands (from the repository root; outputs under /tmp are examples):

  export BPR_SCIFACT_HARD_NEGATIVES=/tmp/bpr-scifact/hard_negatives_train.json
  # 1. mine BM25 hard negatives for the train queries (seconds)
  python -m bpr_jax.mine_negatives --beir_dir=$BPR_SHARED_DIR/data/scifact --split=train \
      --output=$BPR_SCIFACT_HARD_NEGATIVES
  # 2. train (about 45 minutes on 2 CPU cores): the nested recipe
  python -m bpr_jax.main --config=configs/scifact.py --workdir=/tmp/bpr-scifact/bpr
  # 3. export the encoders
  python -m bpr_jax.export --workdir=/tmp/bpr-scifact/bpr --output=/tmp/bpr-scifact/bpr-model
  # 4. encode the corpus into binary codes (768 bits; --save_float keeps float vectors for baselines)
  python -m bpr_jax.encode --model=/tmp/bpr-scifact/bpr-model \
      --passages=$BPR_SHARED_DIR/data/scifact/corpus.jsonl --output=/tmp/bpr-scifact/bpr-codes
  # 5. index (flat = exact Hamming) at 48 B: the codes' first 384 bits (128: 16 B; none: 96 B)
  python -m bpr_jax.index --codes=/tmp/bpr-scifact/bpr-codes --kind=flat --code_bits=384 \
      --output=/tmp/bpr-scifact/bpr-flat
  # 6. evaluate on the test qrels (nDCG@10, Recall@100, bytes, ms/query)
  python -m bpr_jax.evaluate --model=/tmp/bpr-scifact/bpr-model --index=/tmp/bpr-scifact/bpr-flat \
      --passages=$BPR_SHARED_DIR/data/scifact/corpus.jsonl --beir_dir=$BPR_SHARED_DIR/data/scifact \
      --split=test --k=10,100 --output=/tmp/bpr-scifact/bpr-flat.json

`benchmarks/scifact.py --stage=finetune` runs steps 2-6 on a seeded train/dev split.
"""
import os
import pathlib
import tempfile

from configs.common import base_config

_REPO = pathlib.Path(__file__).resolve().parents[1]

# name -> (one-line reason, overrides on top of the shared settings)
RECIPES = {
    "bpr48": ("48 B: STE on the 384-bit pooled vector (best 48 B variant on dev)",
              {"mode": "bpr", "loss.relaxation": "ste"}),
    "bpr16": ("16 B: STE with a 128-bit code head (best 16 B variant on dev)",
              {"mode": "bpr", "loss.relaxation": "ste", "model.code_bits": 128,
               "model.code_head_norm": 2.5}),
    "bpr96": ("96 B: STE with a 768-bit code head (best 96 B variant on dev)",
              {"mode": "bpr", "loss.relaxation": "ste", "model.code_bits": 768,
               "model.code_head_norm": 2.5}),
    "dpr": ("float DPR baseline, same data, budget and optimiser", {"mode": "dpr"}),
    "free48": ("48 B label-free: distillation from the teacher's own top-k, starting from the teacher",
               {"mode": "bpr", "loss.relaxation": "ste", "data.source": "dpr_json",
                "data.train_path": "$BPR_SCIFACT_TEACHER_NEGATIVES", "model.hf_dir": "$BPR_SCIFACT_TEACHER",
                "loss.teacher": "$BPR_SCIFACT_TEACHER", "loss.label_weight": 0.0, "loss.distill_weight": 1.0,
                "loss.distill_cand_weight": 1.0, "loss.distill_similarity": "cos",
                "loss.distill_temperature": 0.05}),
    "label48": ("48 B: bpr48 plus distillation from a fine-tuned float teacher",
                {"mode": "bpr", "loss.relaxation": "ste", "loss.teacher": "$BPR_SCIFACT_TEACHER",
                 "loss.distill_weight": 1.0}),
    "nested": ("16, 48 and 96 B from one 768-bit code head trained on its prefixes (chosen on dev at every size)",
               {"mode": "bpr", "loss.relaxation": "ste", "model.code_bits": 768, "model.code_head_norm": 2.5,
                "loss.nested_bits": "128,384,768"}),
}
DEFAULT_RECIPE = "nested"


def shared_dir() -> str:
  return os.environ.get("BPR_SHARED_DIR") or str(_REPO.parent / "shared")


def default_hard_negatives() -> str:
  return os.path.join(tempfile.gettempdir(), "bpr-scifact", "hard_negatives_train.json")


def get_config(arg: str | None = None):
  name = arg or DEFAULT_RECIPE
  if name not in RECIPES:
    raise ValueError(f"configs/scifact.py: unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
  c = base_config()
  shared = shared_dir()
  c.seed = 42
  c.batch_size = 16
  c.num_train_steps = 400
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint_every = 50
  c.keep_checkpoints = 2

  c.model.init = "hf"
  c.model.hf_dir = os.path.join(shared, "models", "all-MiniLM-L6-v2")
  c.model.pooling = "mean"
  c.model.dtype = "float32"
  c.model.dropout = 0.1
  c.model.attention_dropout = 0.0

  c.data.source = "beir"
  c.data.beir_dir = os.path.join(shared, "data", "scifact")
  c.data.train_split = "train"
  c.data.dev_split = ""
  c.data.hard_negatives_json = os.environ.get("BPR_SCIFACT_HARD_NEGATIVES") or default_hard_negatives()
  c.data.question_max_length = 64
  c.data.passage_max_length = 256
  c.data.num_hard_negatives = 1

  c.optim.learning_rate = 3e-5
  c.optim.warmup_fraction = 0.1
  c.loss.gamma = 1.0
  for key, value in RECIPES[name][1].items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if isinstance(value, str) and value.startswith("$"):
      value = os.environ.get(value[1:], "")  # paths come from the environment
    node[leaf] = value
  return c
