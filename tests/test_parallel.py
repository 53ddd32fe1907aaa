import jax
import jax.numpy as jnp
import numpy as np
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


def test_sharded_loss_and_gradients_equal_single_device():
    """Batch sharded over 8 devices, parameters replicated: same loss and gradients
    (BatchNorm statistics over the global batch) as the whole batch on one device."""
    model = ssd300(3, batch_norm=True, width=1 / 8, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    defaults = jnp.asarray(default_boxes.generate(default_boxes.preset("ssd300")))
    batch = make_batch(np.random.default_rng(0), 8)

    def loss_fn(state, batch):
        loc, conf = nnx.merge(graphdef, state)(batch["images"])
        labels, deltas = match_batch(batch["boxes"], batch["labels"], batch["mask"], defaults)
        return multibox_loss(loc, conf, labels, deltas)[0]

    step = jax.jit(jax.value_and_grad(loss_fn))
    device = jax.devices()[0]
    loss_one, grads_one = step(jax.device_put(state, device), jax.device_put(batch, device))

    mesh = parallel.make_data_mesh()
    sharded_batch = parallel.shard_batch(batch, mesh)
    assert len(sharded_batch["images"].sharding.device_set) == 8
    loss_all, grads_all = step(jax.device_put(state, parallel.replicated(mesh)), sharded_batch)

    np.testing.assert_allclose(loss_all, loss_one, rtol=1e-5)
    for one, full in zip(jax.tree.leaves(grads_one), jax.tree.leaves(grads_all)):
        # conv biases ahead of BatchNorm have true gradient 0: only float noise there
        atol = max(1e-4 * np.abs(one).max(), 1e-7)
        np.testing.assert_allclose(full, one, rtol=1e-4, atol=atol)
