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
