"""Preemption: SIGTERM turned into a stop step that every process of a run agrees on.

The train loop asks `should_stop(step, sync)` after each step; it never waits on the host or
runs a collective per step (see `Preemption`).
"""
from __future__ import annotations

import signal

import jax
from absl import logging

from bpr_jax import parallel


class Preemption:
  """SIGTERM (preemption) as a stop decision that all processes take at the same step.

  No collective runs per step. With several processes and JAX's preemption service (on by
  default in `jax.distributed.initialize`), the service catches SIGTERM on any process and
  agrees on one step; `multihost_utils.reached_preemption_sync_point(step)` is a local call
  that turns true at that step on every process. Otherwise a Python SIGTERM handler sets a
  local flag: one process reads it every step; several combine their flags
  (`parallel.any_process`) only at `sync` steps (log and checkpoint steps, the same on all).
  """

  def __init__(self, start_step: int):
    self.requested = False
    self._previous = None
    self._installed = False
    self._service = False
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        multihost_utils.reached_preemption_sync_point(start_step)
        self._service = True
      except RuntimeError:  # jax.distributed without the preemption service
        self._service = False

  def __enter__(self):
    if self._service:  # the service's own SIGTERM handler must stay in place
      logging.info("preemption: JAX preemption service (sync point checked every step)")
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and exiting")
    self.requested = True

  def should_stop(self, step: int, sync: bool) -> bool:
    """Whether to checkpoint and stop after `step` (every process gets the same answer)."""
    if self._service:
      from jax.experimental import multihost_utils
      stop = multihost_utils.reached_preemption_sync_point(step)
      if stop:
        logging.warning("preemption notice: all processes stop at step %d", step)
      return stop
    if jax.process_count() == 1:
      return self.requested
    return sync and parallel.any_process(self.requested)

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
    return False
