"""Teacher distillation: the KL term by hand, the teacher cache, tiny training runs, teacher mining."""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bpr_jax import export_format, exported_model, losses, teacher, train
from bpr_jax.data.dpr import DprJsonSource
from bpr_jax.data.tiny import make_tiny_dataset
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.tokenization import Tokenizer
from test_losses import _reference_bpr
from test_train import shrunk_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _np_kl(student, teacher_scores, t, tt=None):
  tt = t if tt is None else tt
  def log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))
  log_p, log_q = log_softmax(teacher_scores / tt), log_softmax(student / t)
  return t * t * np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1))


def _batch(seed=0, b=3, n=1, d=16):
  rng = np.random.default_rng(seed)
  q, pos, neg = (rng.normal(size=s).astype(np.float32) for s in ((b, d), (b, d), (b * n, d)))
  return q, pos, neg, rng.normal(size=(b, b * (1 + n))).astype(np.float32) * 3


def test_distill_loss_by_hand():
  s = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], np.float32)
  t = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
  # row 0 at T=1: p = softmax(2,1,0) = (.6652, .2447, .0900); q = softmax(1,0,-1) = same shape shifted -> KL 0
  assert float(losses.distill_loss(s[:1], t[:1], 1.0)) == pytest.approx(0.0, abs=1e-6)
  for temp, t_temp in ((1.0, None), (2.0, None), (0.5, 0.1)):
    got = float(losses.distill_loss(jnp.asarray(s), jnp.asarray(t), temp, t_temp))
    assert got == pytest.approx(_np_kl(s, t, temp, t_temp), rel=1e-5)
  # by hand, row 1 at T=1: p = softmax(0,0,3), q = softmax(.5,2,0)
  p = np.exp([0, 0, 3.0]) / np.exp([0, 0, 3.0]).sum()
  q = np.exp([.5, 2, 0]) / np.exp([.5, 2, 0]).sum()
  assert float(losses.distill_loss(s[1:], t[1:], 1.0)) == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-5)


def test_kl_is_zero_when_student_equals_teacher():
  _, _, _, t = _batch()
  for temp in (0.5, 1.0, 3.0):
    assert float(losses.distill_loss(t, t, temp)) == pytest.approx(0.0, abs=1e-6)


def test_bpr_loss_with_distillation_off_is_the_papers_loss_exactly():
  q, pos, neg, t = _batch()
  base = losses.bpr_loss(q, pos, neg, 1.7)
  off = losses.bpr_loss(q, pos, neg, 1.7, teacher_scores=t, distill_weight=0.0, distill_cand_weight=0.0)
  assert float(base.loss) == float(off.loss) and float(off.distill) == 0.0
  ref = _reference_bpr(q, pos, neg, 1.7, 2.0, "mean")[0]
  assert float(base.loss) == pytest.approx(ref, rel=1e-5)


def test_bpr_loss_with_teacher_by_hand():
  q, pos, neg, t = _batch(1)
  beta, lw, w, wc, temp = 1.3, 0.5, 2.0, 0.7, 1.5
  out = losses.bpr_loss(q, pos, neg, beta, teacher_scores=t, label_weight=lw, distill_weight=w,
                        distill_cand_weight=wc, distill_temperature=temp)
  p = np.concatenate([pos, neg])
  hq, hp = np.tanh(beta * q), np.tanh(beta * p)
  rerank_kl, cand_kl = _np_kl(q @ hp.T, t, temp), _np_kl(hq @ hp.T, t, temp)
  bpr = _reference_bpr(q, pos, neg, beta, 2.0, "mean")[0]
  assert float(out.distill) == pytest.approx(rerank_kl, rel=1e-5)
  assert float(out.distill_cand) == pytest.approx(cand_kl, rel=1e-5)
  assert float(out.loss) == pytest.approx(lw * bpr + w * rerank_kl + wc * cand_kl, rel=1e-5)
  # label-free: only the teacher terms
  free = losses.bpr_loss(q, pos, neg, beta, teacher_scores=t, label_weight=0.0, distill_weight=1.0)
  assert float(free.loss) == pytest.approx(_np_kl(q @ hp.T, t, 1.0), rel=1e-5)
  # DPR with a teacher
  d = losses.dpr_loss(q, pos, neg, teacher_scores=t, distill_weight=w)
  assert float(d.distill) == pytest.approx(_np_kl(q @ p.T, t, 1.0), rel=1e-5)
  assert float(d.loss) == pytest.approx(float(losses.dpr_loss(q, pos, neg).loss) + w * float(d.distill), rel=1e-6)


def _np_cos(a, b):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  return a @ b.T


def test_cosine_distillation_compares_cosines_on_both_sides():
  q, pos, neg, _ = _batch(3, d=24)
  rng = np.random.default_rng(7)
  tq, tp = rng.normal(size=(3, 10)), rng.normal(size=(6, 10))
  t = _np_cos(tq, tp).astype(np.float32)  # what teacher.teacher_scores(..., 'cos') gives
  np.testing.assert_allclose(np.asarray(teacher.teacher_scores(jnp.asarray(tq), jnp.asarray(tp), "cos")), t,
                             rtol=1e-5, atol=1e-6)
  beta, temp = 2.0, 0.05
  out = losses.bpr_loss(q, pos, neg, beta, teacher_scores=t, label_weight=0.0, distill_weight=1.0,
                        distill_cand_weight=1.0, distill_temperature=temp, distill_similarity="cos")
  p = np.concatenate([pos, neg])
  hq, hp = np.tanh(beta * q), np.tanh(beta * p)
  assert float(out.distill) == pytest.approx(_np_kl(_np_cos(q, hp), t, temp), rel=1e-4)
  assert float(out.distill_cand) == pytest.approx(_np_kl(_np_cos(hq, hp), t, temp), rel=1e-4)
  # the student's scale does not matter: 10 q gives the same cosines (a dot student's KL changes)
  big = losses.bpr_loss(10 * q, pos, neg, beta, teacher_scores=t, label_weight=0.0, distill_weight=1.0,
                        distill_temperature=temp, distill_similarity="cos")
  assert float(big.distill) == pytest.approx(float(out.distill), rel=1e-4)
  # a student equal to its teacher (the teacher's own cosines) has nothing to learn
  same = losses.dpr_loss(tq.astype(np.float32), tp[:3].astype(np.float32), tp[3:].astype(np.float32),
                         teacher_scores=t, distill_weight=1.0, label_weight=0.0, distill_temperature=temp,
                         distill_similarity="cos")
  assert float(same.distill) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="distill_similarity"):
    losses.bpr_loss(q, pos, neg, beta, teacher_scores=t, distill_weight=1.0, distill_similarity="l2")


def test_gradient_flows_to_the_student_only():
  q, pos, neg, t = _batch(2)

  def f(q, t):
    return losses.bpr_loss(q, pos, neg, 1.0, teacher_scores=t, label_weight=0.0, distill_weight=1.0,
                           distill_cand_weight=1.0).loss
  gq, gt = jax.grad(f, argnums=(0, 1))(jnp.asarray(q), jnp.asarray(t))
  assert float(jnp.abs(gq).sum()) > 0
  assert float(jnp.abs(gt).sum()) == 0.0
  tq, tp = jnp.ones((2, 4)), jnp.arange(12.0).reshape(3, 4)
  gq_t = jax.grad(lambda a: teacher.teacher_scores(a, tp).sum())(tq)
  assert float(jnp.abs(gq_t).sum()) == 0.0


# ----------------------------------------------------------------------------- a tiny teacher


def _export_teacher(vocab_dir, out, seed=0, hidden=64):
  tokenizer = Tokenizer.from_dir(vocab_dir)
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
  model = BertEncoder(config, pooling="mean", rngs=nnx.Rngs(seed))
  settings = {"mode": "dpr", "pooling": "mean", "question_max_length": 12, "passage_max_length": 24,
              "code_bits": hidden, "hidden_size": hidden, "shared_encoder": True}
  export_format.save_exported(model, model, tokenizer, settings, out)
  return out


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
  root = tmp_path_factory.mktemp("teacher")
  paths = make_tiny_dataset(root / "data")  # the same data (seed 0) the tiny config trains on
  return paths, _export_teacher(paths["vocab_dir"], root / "teacher")


def test_teacher_cache_is_computed_once_and_recomputed_for_another_teacher(tiny_teacher, tmp_path, monkeypatch):
  paths, teacher_dir = tiny_teacher
  source = DprJsonSource(paths["train"])
  calls = []
  real = teacher.encode_texts
  monkeypatch.setattr(teacher, "encode_texts", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
  notes = []
  cache = tmp_path / "cache"
  first = teacher.teacher_vectors(teacher_dir, source, cache, note=notes.append)
  questions, titles, texts = teacher.training_texts(source)
  assert first.questions.shape == (len(source), 64) and first.passages.shape == (len(texts), 64)
  model = exported_model.load_exported(teacher_dir)  # rows are the teacher's own vectors of those texts
  np.testing.assert_allclose(first.questions[:5], model.encode_questions(questions[:5]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(first.passages[-3:], model.encode_passages(titles[-3:], texts[-3:]), rtol=1e-5, atol=1e-5)
  second = teacher.teacher_vectors(teacher_dir, source, cache, note=notes.append)
  assert len(calls) == 1 and not notes  # reused
  np.testing.assert_array_equal(np.asarray(second.passages), first.passages)
  other = _export_teacher(paths["vocab_dir"], tmp_path / "other", seed=5)
  third = teacher.teacher_vectors(other, source, cache, note=notes.append)
  assert len(calls) == 2 and len(notes) == 1 and "recomputing" in notes[0] and "teacher" in notes[0]
  assert not np.allclose(third.questions, first.questions)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "other"]  # no temporary left behind


def _metrics(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_with_labels_and_distillation_logs_the_terms(tiny_teacher, tmp_path):
  _, teacher_dir = tiny_teacher
  config = shrunk_config(num_train_steps=4, eval_every=4, checkpoint_every=4, **{
      "loss.teacher": str(teacher_dir), "loss.distill_weight": 1.0, "loss.distill_cand_weight": 0.5,
      "loss.distill_temperature": 2.0})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 4 and np.isfinite(result["loss"])
  logged = [r for r in _metrics(tmp_path) if "loss" in r]
  assert logged and all(r["loss_distill"] > 0 and r["loss_distill_cand"] > 0 for r in logged)
  assert (tmp_path / "teacher_cache" / "teacher.json").is_file()


def test_label_free_run_starting_from_the_teacher_with_a_code_head(tiny_teacher, tmp_path):
  paths, teacher_dir = tiny_teacher
  config = shrunk_config(num_train_steps=2, eval_every=2, checkpoint_every=2, **{
      "model.init": "hf", "model.hf_dir": str(teacher_dir), "model.code_bits": 32,
      "loss.teacher": str(teacher_dir), "loss.label_weight": 0.0, "loss.distill_weight": 1.0,
      "loss.distill_similarity": "cos", "loss.distill_teacher_temperature": 0.05})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and np.isfinite(result["loss"])
  logged = [r for r in _metrics(tmp_path) if "loss" in r]
  # label-free: the loss is the distillation term alone
  assert all(r["loss"] == pytest.approx(r["loss_distill"], rel=1e-5) for r in logged)


def test_distillation_config_errors(tiny_teacher, tmp_path):
  _, teacher_dir = tiny_teacher
  for overrides, match in (
      ({"loss.distill_weight": 1.0}, "needs loss.teacher"),
      ({"loss.distill_weight": 1.0, "loss.teacher": str(tmp_path / "nope")}, "not an exported model dir"),
      ({"loss.teacher": str(teacher_dir)}, "distill_weight"),
      ({"loss.label_weight": 0.0}, "nothing would be trained"),
      ({"loss.distill_weight": 1.0, "loss.teacher": str(teacher_dir), "loss.distill_similarity": "l2"},
       "distill_similarity"),
      ({"loss.distill_weight": 1.0, "loss.teacher": str(teacher_dir), "loss.distill_temperature": 0.0},
       "distill_temperature"),
  ):
    with pytest.raises(ValueError, match=match) as err:
      train.validate_config(shrunk_config(**overrides))
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- mining with the teacher


def _tiny_beir(paths, out):
  """A BEIR folder from the tiny data: its passages as the corpus, 12 dev questions as queries."""
  from bpr_jax.data.passages import iter_passages
  out.mkdir()
  passages = list(iter_passages(paths["passages"]))
  with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
    for p in passages:
      f.write(json.dumps({"_id": p.id, "title": p.title, "text": p.text}) + "\n")
  dev = DprJsonSource(paths["dev"])
  with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
    for i in range(12):
      f.write(json.dumps({"_id": f"q{i}", "text": dev[i].question}) + "\n")
  (out / "qrels").mkdir()
  (out / "qrels" / "train.tsv").write_text(
      "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{passages[i].id}\t1\n" for i in range(12)))
  return passages, [dev[i].question for i in range(12)]


def test_mine_with_the_teacher_takes_its_top1_as_positive(tiny_teacher, tmp_path):
  paths, teacher_dir = tiny_teacher
  passages, questions = _tiny_beir(paths, tmp_path / "beir")
  out = tmp_path / "mined.json"
  proc = subprocess.run(
      [sys.executable, "-m", "bpr_jax.mine_negatives", f"--teacher={teacher_dir}", f"--beir_dir={tmp_path / 'beir'}",
       f"--output={out}", "--top_k=8", "--num_hard_negatives=3", "--skip_ranks=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "qrels unused" in proc.stdout
  model = exported_model.load_exported(teacher_dir)
  scores = model.encode_questions(questions) @ model.encode_passages([p.title for p in passages],
                                                                     [p.text for p in passages]).T
  order = np.argsort(-scores, axis=1, kind="stable")
  records = json.loads(out.read_text())
  assert [r["qid"] for r in records] == [f"q{i}" for i in range(12)]
  for i, r in enumerate(records):
    assert r["positive_source"] == "teacher_top1"
    assert r["positive_ctxs"][0]["passage_id"] == passages[order[i, 0]].id
    assert [c["passage_id"] for c in r["hard_negative_ctxs"]] == [passages[j].id for j in order[i, 2:5]]
  assert len(DprJsonSource(out)) == 12  # the training config reads it unchanged
  # questions from a text file; bad flag combinations are one-line errors
  (tmp_path / "q.txt").write_text("\n".join(questions[:3]) + "\n")
  proc = subprocess.run(
      [sys.executable, "-m", "bpr_jax.mine_negatives", f"--teacher={teacher_dir}", f"--questions={tmp_path / 'q.txt'}",
       f"--passages={paths['passages']}", f"--output={tmp_path / 'q.json'}", "--top_k=5", "--num_hard_negatives=2"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  mined = json.loads((tmp_path / "q.json").read_text())
  assert [r["positive_ctxs"][0]["passage_id"] for r in mined] == [passages[order[i, 0]].id for i in range(3)]
  proc = subprocess.run(
      [sys.executable, "-m", "bpr_jax.mine_negatives", f"--teacher={teacher_dir}", f"--questions={tmp_path / 'q.txt'}",
       f"--output={tmp_path / 'bad.json'}"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --questions needs a corpus")


def test_mine_with_saved_teacher_embeddings_matches_and_checks_they_belong(tiny_teacher, tmp_path):
  from bpr_jax import encode, mine_negatives, provenance
  paths, teacher_dir = tiny_teacher
  passages, _ = _tiny_beir(paths, tmp_path / "beir")
  codes = tmp_path / "codes"
  encode.encode_corpus(exported_model.load_exported(teacher_dir), str(tmp_path / "beir" / "corpus.jsonl"), codes,
                       model_path=teacher_dir, batch_size=16, save_float=True, progress=False)
  kw = dict(beir_dir=str(tmp_path / "beir"), top_k=6, num_hard_negatives=3, similarity="cos")
  fresh, _ = mine_negatives.mine_teacher(str(teacher_dir), **kw)
  saved, _ = mine_negatives.mine_teacher(str(teacher_dir), teacher_embeddings=str(codes), **kw)
  assert [r["positive_ctxs"][0]["passage_id"] for r in saved] == [r["positive_ctxs"][0]["passage_id"] for r in fresh]
  other = _export_teacher(paths["vocab_dir"], tmp_path / "other", seed=3)
  with pytest.raises(provenance.ProvenanceError, match="do not belong together"):
    mine_negatives.mine_teacher(str(other), teacher_embeddings=str(codes), **kw)
  with pytest.raises(ValueError, match="top_k"):
    mine_negatives.mine_teacher(str(teacher_dir), **{**kw, "top_k": 3})
