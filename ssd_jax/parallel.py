"""Data parallelism: a 1-D device mesh over which batches are sharded.

``jax.jit`` over this mesh replaces ``pmap``: arrays placed with
:func:`batch_sharding` are split along their leading (batch) axis, arrays placed
with :func:`replicated` (parameters, optimizer state) live whole on every device,
and XLA inserts the collectives (gradient all-reduce, global BatchNorm statistics).
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with one axis, ``"data"``, over ``devices`` (default: all devices).

    The axis type is ``Auto``: with ``Explicit`` axes (the ``jax.make_mesh`` default
    in newer JAX) sorts inside the step fail on sharded inputs.
    """
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),),
        (DATA_AXIS,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=devices,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading axis over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch, mesh: Mesh):
    """Places every array of the pytree ``batch`` split along its leading axis.

    The leading axis must be divisible by the number of devices in ``mesh``.
    """
    num_devices = mesh.devices.size
    for leaf in jax.tree.leaves(batch):
        if leaf.shape[0] % num_devices:
            raise ValueError(
                f"batch size {leaf.shape[0]} is not divisible by the {num_devices} devices "
                "of the data mesh"
            )
    return jax.device_put(batch, batch_sharding(mesh))


def global_batch(local_batch: dict, mesh: Mesh, keys: Sequence[str]) -> dict:
    """The ``keys`` of this process's NumPy batch as global arrays split over the
    ``data`` axis of ``mesh`` (each process contributes its own rows)."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[key]))
        for key in keys
    }
