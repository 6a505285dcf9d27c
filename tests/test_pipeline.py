"""Input pipeline: deterministic in the seed, host shards partition the global batch, resumable."""
import numpy as np
import pytest

from bpr_jax.data import pipeline
from bpr_jax.data.dpr import DprJsonSource
from bpr_jax.data.tiny import make_tiny_dataset
from bpr_jax.tokenization import Tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  paths = make_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_train=64, num_dev=16, num_passages=80)
  return DprJsonSource(paths["train"]), Tokenizer.from_dir(paths["vocab_dir"])


def _batches(source, tokenizer, *, seed=0, process_index=0, process_count=1, n=2):
  cfg = pipeline.PipelineConfig(global_batch_size=16, question_max_length=12, passage_max_length=24,
                                num_hard_negatives=n, seed=seed)
  return pipeline.TrainBatches(source, tokenizer, cfg, process_index=process_index, process_count=process_count)


def test_same_seed_same_batches_other_seed_other_order(tiny):
  a, b, c = _batches(*tiny), _batches(*tiny), _batches(*tiny, seed=1)
  for step in (0, 3, 7):
    for key, value in a.batch(step).items():
      np.testing.assert_array_equal(value, b.batch(step)[key])
  assert not np.array_equal(a.global_indices(0), c.global_indices(0))


def test_epochs_cover_the_data_once_and_reshuffle(tiny):
  batches = _batches(*tiny)
  assert batches.steps_per_epoch == 4
  epoch0 = np.concatenate([batches.global_indices(s) for s in range(4)])
  epoch1 = np.concatenate([batches.global_indices(s) for s in range(4, 8)])
  assert sorted(epoch0) == list(range(64)) == sorted(epoch1)
  assert not np.array_equal(epoch0, epoch1)


def test_process_shards_partition_the_global_batch(tiny):
  whole = _batches(*tiny)
  parts = [_batches(*tiny, process_index=i, process_count=4) for i in range(4)]
  for step in (0, 5):
    np.testing.assert_array_equal(np.concatenate([p.local_indices(step) for p in parts]), whole.global_indices(step))
    full = whole.batch(step)
    for key in full:
      np.testing.assert_array_equal(np.concatenate([p.batch(step)[key] for p in parts]), full[key])


def test_shapes_and_hard_negatives(tiny):
  batch = _batches(*tiny, n=2).batch(0)
  assert batch["q_input_ids"].shape == (16, 12)
  assert batch["pos_input_ids"].shape == (16, 24)
  assert batch["neg_input_ids"].shape == (32, 24)
  assert all(v.dtype == np.int32 for v in batch.values())
  source, _ = tiny
  examples, positives, negatives = _batches(*tiny, n=2).examples(0)
  for i, example in enumerate(examples):
    assert positives[i] == example.positives[0]
    assert set(negatives[2 * i:2 * i + 2]) <= set(example.hard_negatives)


def test_resume_from_any_step_with_prefetch(tiny):
  batches = _batches(*tiny)
  direct = [batches.batch(s) for s in range(5, 9)]
  resumed = list(batches.iterate(5, 9, prefetch=2))
  assert [s for s, _ in resumed] == [5, 6, 7, 8]
  for want, (_, got) in zip(direct, resumed):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_errors_in_the_reader_thread_reach_the_consumer():
  def broken():
    yield 1
    raise RuntimeError("bad record")
  it = pipeline.prefetch_iterator(broken())
  assert next(it) == 1
  with pytest.raises(RuntimeError, match="bad record"):
    next(it)


def test_too_small_dataset_is_a_clear_error(tiny):
  source, tokenizer = tiny
  cfg = pipeline.PipelineConfig(global_batch_size=128, question_max_length=8, passage_max_length=8)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.TrainBatches(source, tokenizer, cfg)


def _reference(batches, step):
  """What the pipeline made before token tables: tokenise the step's examples at max length."""
  cfg = batches.config
  examples, positives, negatives = batches.examples(step)
  out = pipeline._prefixed("q", batches.tokenizer.questions([e.question for e in examples], cfg.question_max_length))
  out.update(pipeline._prefixed("pos", pipeline.tokenize_passages(batches.tokenizer, positives, cfg.passage_max_length)))
  out.update(pipeline._prefixed("neg", pipeline.tokenize_passages(batches.tokenizer, negatives, cfg.passage_max_length)))
  return out


def _bucketed(source, tokenizer, multiple, *, process_index=0, process_count=1, tokens=None, cache_dir=""):
  cfg = pipeline.PipelineConfig(global_batch_size=16, question_max_length=40, passage_max_length=64,
                                num_hard_negatives=2, seed=3, pad_multiple=multiple, token_cache_dir=cache_dir)
  return pipeline.TrainBatches(source, tokenizer, cfg, process_index=process_index,
                               process_count=process_count, tokens=tokens)


@pytest.mark.parametrize("multiple", [0, 8])
def test_batches_are_the_tokenizer_output_cut_to_the_bucket(tiny, multiple):
  batches = _bucketed(*tiny, multiple)
  for step in (0, 5):
    got, want = batches.batch(step), _reference(batches, step)
    assert set(got) == set(want)
    for prefix in ("q", "pos", "neg"):
      length = got[f"{prefix}_input_ids"].shape[1]
      full = want[f"{prefix}_attention_mask"]
      longest = full.sum(axis=1).max() if prefix == "q" else max(
          want["pos_attention_mask"].sum(axis=1).max(), want["neg_attention_mask"].sum(axis=1).max())
      if multiple:
        assert length % multiple == 0 or length == full.shape[1]
        assert longest <= length < longest + multiple
      else:
        assert length == full.shape[1]
      assert full[:, length:].sum() == 0  # only padding is cut
      for field in pipeline.FIELDS:
        key = f"{prefix}_{field}"
        assert got[key].dtype == np.int32
        np.testing.assert_array_equal(got[key], want[key][:, :length])


def test_bucketed_process_shards_pad_to_the_same_length(tiny):
  whole = _bucketed(*tiny, 8)
  parts = [_bucketed(*tiny, 8, process_index=i, process_count=4, tokens=whole.tokens) for i in range(4)]
  for step in (0, 6):
    full = whole.batch(step)
    for key in full:
      np.testing.assert_array_equal(np.concatenate([p.batch(step)[key] for p in parts]), full[key])


def test_token_cache_on_disk_is_reused_and_keyed(tiny, tmp_path):
  source, tokenizer = tiny
  built = _bucketed(source, tokenizer, 8, cache_dir=str(tmp_path)).tokens
  names = sorted(p.name for p in tmp_path.iterdir())
  assert len(names) == 2 and not any(n.startswith(".") for n in names)  # questions + passages, no temp left
  loaded = _bucketed(source, tokenizer, 8, cache_dir=str(tmp_path)).tokens
  assert sorted(p.name for p in tmp_path.iterdir()) == names
  assert isinstance(loaded.passages.ids, np.memmap)
  rows = np.arange(len(loaded.passages))
  for field, value in built.passages.rows(rows, 64).items():
    np.testing.assert_array_equal(loaded.passages.rows(rows, 64)[field], value)
  cfg = pipeline.PipelineConfig(global_batch_size=16, question_max_length=40, passage_max_length=48,
                                token_cache_dir=str(tmp_path))
  pipeline.TrainBatches(source, tokenizer, cfg)  # other passage length: one more table, same questions
  assert len(list(tmp_path.iterdir())) == 3


def test_eval_batches_match_the_tokenizer(tiny):
  source, tokenizer = tiny
  got = list(pipeline.eval_batches(source, tokenizer, batch_size=16, question_max_length=40,
                                   passage_max_length=64, max_examples=40, pad_multiple=8))
  assert len(got) == 2
  fixed = list(pipeline.eval_batches(source, tokenizer, batch_size=16, question_max_length=40,
                                     passage_max_length=64, max_examples=40, pad_multiple=0))
  halves = [list(pipeline.eval_batches(source, tokenizer, batch_size=16, question_max_length=40,
                                       passage_max_length=64, max_examples=40, pad_multiple=8,
                                       process_index=i, process_count=2)) for i in range(2)]
  for b, (batch, full) in enumerate(zip(got, fixed)):
    examples = [source[i] for i in range(16 * b, 16 * b + 16)]
    want = pipeline._prefixed("q", tokenizer.questions([e.question for e in examples], 40))
    assert full["q_input_ids"].shape == (16, 40)
    for key, value in batch.items():
      length = value.shape[1] if value.ndim == 2 else None
      if key in want:
        np.testing.assert_array_equal(value, want[key][:, :length])
      if length is not None:
        np.testing.assert_array_equal(value, full[key][:, :length])
        assert full[key][:, length:].sum() == 0 or key.endswith("input_ids")
      np.testing.assert_array_equal(np.concatenate([h[b][key] for h in halves]), value)


def test_bucket_length_and_shape_count():
  from bpr_jax.data.token_cache import bucket_length, num_buckets
  assert [bucket_length(n, 32, 256) for n in (1, 12, 32, 33, 250, 256)] == [32, 32, 32, 64, 256, 256]
  assert bucket_length(100, 32, 128) == 128 and bucket_length(7, 0, 128) == 128
  assert bucket_length(20, 32, 24) == 24
  assert num_buckets(32, 256) == 8 and num_buckets(32, 128) == 4 and num_buckets(0, 256) == 1
