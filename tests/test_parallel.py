import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssd_jax import default_boxes, parallel
from ssd_jax.losses import multibox_loss
from ssd_jax.matching import match_batch
from ssd_jax.models import ssd300


def make_batch(rng, batch_size, max_boxes=5, num_classes=3):
    top_left = rng.uniform(0, 0.6, (batch_size, max_boxes, 2))
    boxes = np.concatenate(
        [top_left, top_left + rng.uniform(0.05, 0.4, (batch_size, max_boxes, 2))], -1
    )
    return {
        "images": rng.normal(size=(batch_size, 300, 300, 3)).astype(np.float32),
        "boxes": boxes.astype(np.float32),
        "labels": rng.integers(1, num_classes + 1, (batch_size, max_boxes)).astype(np.int32),
        "mask": rng.uniform(size=(batch_size, max_boxes)) < 0.7,
    }


def test_data_mesh_uses_all_devices_with_auto_axis():
    mesh = parallel.make_data_mesh()
    assert jax.device_count() == 8  # conftest simulates 8 CPU devices
    assert mesh.shape == {"data": 8}
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)


def test_shard_batch_rejects_indivisible_batch():
    mesh = parallel.make_data_mesh()
    try:
        parallel.shard_batch({"images": np.zeros((6, 2))}, mesh)
    except ValueError as error:
        assert "batch size 6 is not divisible by the 8 devices" in str(error)
    else:
        raise AssertionError("no error for a batch of 6 over 8 devices")


def sharded_and_single_device(fn, state, batch):
    """``fn(state, batch)`` with everything on device 0, then with the batch split over
    the 8-device mesh and the state replicated."""
    device = jax.devices()[0]
    single = fn(jax.device_put(state, device), jax.device_put(batch, device))
    mesh = parallel.make_data_mesh()
    sharded_batch = parallel.shard_batch(batch, mesh)
    assert len(sharded_batch["images"].sharding.device_set) == 8
    sharded = fn(jax.device_put(state, parallel.replicated(mesh)), sharded_batch)
    return single, sharded


DEFAULTS = jnp.asarray(default_boxes.generate(default_boxes.preset("ssd300")))


def ssd_loss(model, batch):
    loc, conf = model(batch["images"])
    labels, deltas = match_batch(batch["boxes"], batch["labels"], batch["mask"], DEFAULTS)
    return multibox_loss(loc, conf, labels, deltas)[0]


def test_sharded_loss_and_gradients_equal_single_device():
    """Batch sharded over 8 devices, parameters replicated: the loss and gradients
    of normalize-free forward, matching and loss equal those on one device."""
    graphdef, state = nnx.split(ssd300(3, width=1 / 8, rngs=nnx.Rngs(0)))
    batch = make_batch(np.random.default_rng(0), 8)
    step = jax.jit(jax.value_and_grad(lambda s, b: ssd_loss(nnx.merge(graphdef, s), b)))
    (loss_one, grads_one), (loss_all, grads_all) = sharded_and_single_device(step, state, batch)
    np.testing.assert_allclose(loss_all, loss_one, rtol=1e-5)
    for one, full in zip(jax.tree.leaves(grads_one), jax.tree.leaves(grads_all)):
        np.testing.assert_allclose(full, one, rtol=1e-4, atol=1e-4 * np.abs(one).max())


# Flax keeps BN running statistics in float32: storing float64 batch statistics
# into them warns under x64.
@pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")
def test_sharded_batch_norm_uses_global_batch_statistics():
    """With BatchNorm in training mode the sharded step normalizes with, and
    updates the running averages from, the statistics of the whole batch.

    The network runs in float64: in float32, 19 BatchNorm layers turn reductions
    in another order into running averages a few 1e-4 apart (relative), as wide as
    some real differences. In float64 they agree to float64 rounding, then are
    stored in float32 (Flax's choice): one float32 ulp apart at most (rtol 1e-6).
    Per-device statistics would differ by percent. The loss (float32 by design:
    matching and multibox loss) agrees to a few ulps of float32 summation.
    (Gradients: tests/test_steps.py, also in float64.)"""
    with jax.enable_x64(True):
        model = ssd300(3, batch_norm=True, width=1 / 8, dtype=jnp.float64,
                       param_dtype=jnp.float64, rngs=nnx.Rngs(0))  # fmt: skip
        graphdef, state = nnx.split(model)
        batch = make_batch(np.random.default_rng(1), 8)

        @jax.jit
        def step(state, batch):
            model = nnx.merge(graphdef, state)
            return ssd_loss(model, batch), nnx.state(model, nnx.BatchStat)

        (loss_one, stats_one), (loss_all, stats_all) = sharded_and_single_device(step, state, batch)
        initial = jax.tree.leaves(nnx.state(state, nnx.BatchStat))
    np.testing.assert_allclose(loss_all, loss_one, rtol=1e-6)
    for before, one, full in zip(initial, jax.tree.leaves(stats_one), jax.tree.leaves(stats_all)):
        assert not np.allclose(one, before)  # the running averages moved
        np.testing.assert_allclose(full, one, rtol=1e-6, atol=1e-6 * np.abs(one).max())
