"""Mesh, sharding rules and global-batch assembly.

One mesh axis, `data`, spans every device of every process. Batches are sharded along it;
parameters and optimizer state are either replicated (pure data parallelism, the default) or,
with `rule='fsdp'`, each large tensor is split along its largest dimension divisible by the
number of devices (ZeRO-3 style; XLA gathers them for the forward pass).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
PARAM_RULES = ("replicated", "fsdp")


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `data` over `devices` (default: all devices of all processes).

  Axis type Auto so that global-batch products such as q @ p.T are partitioned by XLA.
  """
  devices = list(jax.devices() if devices is None else devices)
  axis_type = getattr(jax.sharding, "AxisType", None)
  if axis_type is not None:
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(axis_type.Auto,), devices=devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over all devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def param_spec(shape: tuple[int, ...], num_devices: int, rule: str, min_size: int = 2**16) -> P:
  """PartitionSpec of one parameter under `rule`."""
  if rule not in PARAM_RULES:
    raise ValueError(f"param_sharding must be one of {PARAM_RULES}, got {rule!r}")
  if rule == "replicated" or num_devices == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  dims = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in dims:
    if shape[i] % num_devices == 0:
      spec = [None] * len(shape)
      spec[i] = DATA_AXIS
      return P(*spec)
  return P()


def param_shardings(tree: Any, mesh: Mesh, rule: str = "replicated") -> Any:
  """NamedShardings for a pytree of arrays or ShapeDtypeStructs."""
  n = mesh.devices.size
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), n, rule)), tree)


def host_to_global(tree: Any, shardings: Any) -> Any:
  """Places host numpy arrays (the same on every process) onto the mesh with `shardings`.

  Works on multi-host meshes: each process supplies only the slices its devices hold.
  """
  def put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree, shardings)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles per-process batches into global arrays sharded along `data`.

  Each process passes its own rows (global_batch / process_count of them, in process order);
  the result is the global batch, its leading dimension the concatenation over processes.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-host sharded) array as numpy on every process."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def any_process(flag: bool) -> bool:
  """True when `flag` is true on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))
  return bool(np.asarray(flags).any())
