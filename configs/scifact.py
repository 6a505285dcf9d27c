"""BPR (or DPR) fine-tuned from all-MiniLM-L6-v2 on BEIR SciFact, sized for a 2-core CPU.

Paths (nothing is hard-coded):
  $BPR_SHARED_DIR                 default: `shared/` beside the repository root
    models/all-MiniLM-L6-v2       the initial encoder (HF layout; model.init='hf')
    data/scifact                  BEIR SciFact: corpus.jsonl, queries.jsonl, qrels/{train,test}.tsv
  $BPR_SCIFACT_HARD_NEGATIVES     BM25 hard negatives of the train queries (DPR JSON written by
                                  bpr_jax.mine_negatives); default
                                  <system temp dir>/bpr-scifact/hard_negatives_train.json
                                  (e.g. /tmp/bpr-scifact/hard_negatives_train.json), whatever
                                  $BPR_WORKDIR is.

Settings and why (the paper trains bert-base for 40 epochs at batch 128 on NQ on TPUs; here
the goal is a run that finishes on 2 CPU cores):
  * batch 16 questions, each with its first positive and 1 BM25 hard negative (48 sequences
    a step); 809 train queries -> 50 steps per epoch; 2 epochs = 100 steps.
  * question length 64 (SciFact claims are single sentences: under 64 WordPiece tokens),
    passage length 256 (titles + abstracts; ~70% of abstracts are truncated at 256).
  * mean pooling, as the released MiniLM was trained (BPR/DPR use [CLS]; a 50-step run with
    [CLS] pooling left fine-tuned DPR at nDCG@10 0.628, below the untrained model's 0.651:
    the [CLS] vector has to be learned from scratch). lr 3e-5 rather than the paper's 2e-5,
    10% warm-up, because there are only 100 steps.
  * BPR's tanh(beta * e) approximation anneals beta = sqrt(gamma * step + 1); with 100 steps
    the paper's gamma = 0.1 would end at beta ~ 3.3, so gamma = 1.0 (beta ~ 10 at the end).
  * no dev split in SciFact: validation off (eval_every = 0); checkpoints every 50 steps.
  * dropout 0.1 (BERT's); float32.
These were first chosen for run time, before the benchmark had a dev split: mean pooling after a
50-step [CLS] run, gamma 1 and lr 3e-5 after 100-step runs, all judged on test (see the git
history of benchmarks/results/scifact.md). `benchmarks/scifact.py --stage=finetune` now carves
a seeded dev split out of train (100 of 809 queries) and trains its rows for 200 steps
(--override=num_train_steps=200 --override=model.attention_dropout=0.0); the variants it tried
(code head sizes, STE) were chosen on dev, and so, since, were pooling, gamma and lr: around the
dev-chosen STE recipe, dev nDCG@10 (200 steps) was 0.7438 with these values, 0.7091 with [CLS]
pooling, 0.7070 with gamma 0.1, 0.7394 with lr 1e-4 and 0.7157 with the softmax-CE candidate
loss (loss.cand_loss='ce'), so they stay (see "Variants tried" in
benchmarks/results/scifact.md). A schedule that saturates the codes (loss.beta_schedule='final',
final_beta 43, tanh relaxation) reached dev 0.7031, below gamma 1's tanh run (0.7344): kept gamma.

Commands (from the repository root; `export BPR_SHARED_DIR=../shared` if it is elsewhere;
W and the outputs under /tmp are examples):

  export BPR_SCIFACT_HARD_NEGATIVES=/tmp/bpr-scifact/hard_negatives_train.json
  # 1. mine BM25 hard negatives for the train queries (seconds)
  python -m bpr_jax.mine_negatives --beir_dir=$BPR_SHARED_DIR/data/scifact --split=train \
      --output=$BPR_SCIFACT_HARD_NEGATIVES
  # 2. train (BPR; add --config.mode=dpr for the DPR baseline)
  python -m bpr_jax.main --config=configs/scifact.py --workdir=/tmp/bpr-scifact/bpr
  #    faster on a CPU (1.58x per step, benchmarks/train_loop_cpu.py; needs libjemalloc2; attention
  #    dropout 0 changes the recipe, as the committed SciFact runs do; one batch shape draws other dropout masks):
  #    eval "$(python -m bpr_jax.cpu_env --allocator=jemalloc)" and add
  #    --config.model.attention_dropout=0.0 --config.data.pad_multiple=0
  # 3. export the encoders
  python -m bpr_jax.export --workdir=/tmp/bpr-scifact/bpr --output=/tmp/bpr-scifact/bpr-model
  # 4. encode the corpus (binary codes; --save_float also keeps float32 embeddings for the
  #    float baselines)
  python -m bpr_jax.encode --model=/tmp/bpr-scifact/bpr-model \
      --passages=$BPR_SHARED_DIR/data/scifact/corpus.jsonl --output=/tmp/bpr-scifact/bpr-codes \
      --save_float --batch_size=32
  # 5. index (flat = exact Hamming; hash = bucketed candidates)
  python -m bpr_jax.index --codes=/tmp/bpr-scifact/bpr-codes --kind=flat --output=/tmp/bpr-scifact/bpr-flat
  python -m bpr_jax.index --codes=/tmp/bpr-scifact/bpr-codes --kind=hash --output=/tmp/bpr-scifact/bpr-hash
  # 6. evaluate on the test qrels (nDCG@10, Recall@k, bytes, ms/query; float baselines
  #    flat_ip / hnsw / lsh / pq over the --save_float embeddings)
  python -m bpr_jax.evaluate --model=/tmp/bpr-scifact/bpr-model --index=/tmp/bpr-scifact/bpr-flat \
      --passages=$BPR_SHARED_DIR/data/scifact/corpus.jsonl --beir_dir=$BPR_SHARED_DIR/data/scifact \
      --split=test --k=10,100 --output=/tmp/bpr-scifact/bpr-flat.json

`benchmarks/scifact.py --stage=finetune` runs steps 2-6 for BPR and DPR and collects the rows.
"""
import os
import pathlib
import tempfile

from configs.common import base_config

_REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_dir() -> str:
  return os.environ.get("BPR_SHARED_DIR") or str(_REPO.parent / "shared")


def default_hard_negatives() -> str:
  return os.path.join(tempfile.gettempdir(), "bpr-scifact", "hard_negatives_train.json")


def get_config():
  c = base_config()
  shared = shared_dir()
  c.mode = "bpr"
  c.seed = 42
  c.batch_size = 16
  c.num_epochs = 2
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint_every = 50
  c.keep_checkpoints = 2

  c.model.init = "hf"
  c.model.hf_dir = os.path.join(shared, "models", "all-MiniLM-L6-v2")
  c.model.pooling = "mean"
  c.model.dtype = "float32"
  c.model.dropout = 0.1

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
  return c
