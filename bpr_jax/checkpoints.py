"""Orbax checkpoints of the train state plus the input pipeline's position.

Layout: WORKDIR/checkpoints/<step>/{state, data}. Orbax writes each step to a temporary
directory and renames it when complete, so a killed job never leaves a checkpoint that looks
finished; `max_to_keep` keeps the last K.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def available_steps(workdir: str) -> list[int]:
  """The finished checkpoint steps in WORKDIR/checkpoints (sorted), without creating anything.

  Orbax renames a step's temporary directory to the bare step number when it is complete,
  so only all-digit directory names count.
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def latest_step_on_disk(workdir: str) -> int | None:
  """Latest finished checkpoint step in WORKDIR/checkpoints (None: none), without creating anything."""
  steps = available_steps(workdir)
  return steps[-1] if steps else None


def resolve_step(workdir: str, step: int | None = None) -> int:
  """The checkpoint step to read from a training workdir: `step`, or the latest.

  Checks the workdir before orbax is asked: raises FileNotFoundError (one line) when `workdir`
  is missing, is not a training workdir (no config.json), holds no finished checkpoint, or has
  no checkpoint `step` (the message lists the steps there are).
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"training workdir not found: {workdir}")
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise FileNotFoundError(f"{workdir}: not a bpr-jax training workdir (no config.json)")
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  steps = available_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"no finished checkpoint in {directory} (the run has saved none yet)")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint step {step} in {directory}; steps there: "
                            f"{', '.join(map(str, steps))}")
  return step


def step_files(workdir: str, step: int) -> tuple[str, list[str]]:
  """(the step's directory, every file under it): what a checkpoint step is made of."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints", str(step))
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return directory, sorted(files)


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the last `keep`."""

  def __init__(self, workdir: str, *, keep: int = 3, save_every: int = 1000, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.save_every = save_every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.save_every > 0 and step % self.save_every == 0

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
    """Saves state and the pipeline position (a JSON dict) at `step`."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        force=force)

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
    """Restores `step` (default: latest) onto the shardings of `abstract_state`.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with `.sharding` set.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"])

  def restore_params(self, step: int | None, abstract_params: Any) -> Any:
    """Restores only the parameters (for export), without optimizer state."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item={"params": abstract_params},
            restore_args=jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, dtype=s.dtype),
                                      {"params": abstract_params}),
            partial_restore=True)))
    return restored["state"]["params"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def restore_encoders(workdir: str, step: int | None = None):
  """(question BertEncoder, passage BertEncoder, Tokenizer, settings) of a training workdir's
  checkpoint `step` (default: the latest), parameters only: what export needs, without the loop.

  A missing workdir or step is refused in one line (`resolve_step`) before anything is built.
  The settings are bpr.json's (`bpr_jax.export_format`), `nested_bits` from the run's
  config.loss.nested_bits ([] when the run did not train nested codes).
  """
  import ml_collections  # pylint: disable=import-outside-toplevel

  from bpr_jax import parallel  # pylint: disable=import-outside-toplevel
  from bpr_jax.losses import parse_nested_bits  # pylint: disable=import-outside-toplevel
  from bpr_jax.models.bert import BertConfig  # pylint: disable=import-outside-toplevel
  from bpr_jax.models.build import build_biencoder  # pylint: disable=import-outside-toplevel
  from bpr_jax.tokenization import Tokenizer  # pylint: disable=import-outside-toplevel
  step = resolve_step(workdir, step)
  config_path = os.path.join(workdir, "config.json")
  with open(config_path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  bert = BertConfig.from_json(os.path.join(workdir, "bert_config.json"))
  tokenizer = Tokenizer.from_dir(os.path.join(workdir, "tokenizer"))
  mesh = parallel.make_mesh()
  biencoder, abstract_params = build_biencoder(config, bert, load_weights=False, mesh=mesh, abstract=True)
  ckpt = Checkpointer(workdir, keep=10**6, save_every=0, async_save=False)
  try:
    params = ckpt.restore_params(step, abstract_params)
  finally:
    ckpt.close()
  params = jax.device_get(params)
  q_model = biencoder.question_module(params)
  p_model = biencoder.passage_module(params)
  settings = {"mode": config.mode, "pooling": config.model.pooling,
              "question_max_length": config.data.question_max_length,
              "passage_max_length": config.data.passage_max_length,
              "code_bits": q_model.output_dim, "hidden_size": bert.hidden_size,
              "shared_encoder": bool(config.model.shared_encoder),
              "nested_bits": list(parse_nested_bits(config.get("loss", {}).get("nested_bits", "")))}
  return q_model, p_model, tokenizer, settings
