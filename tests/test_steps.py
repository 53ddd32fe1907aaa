"""The train step: sharded over devices against one device, and compiled once.
(The eval and detect steps are checked against the code they replaced in
tests/test_checkpoint.py, on a checkpoint written before the rework.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssd_jax import default_boxes, optim, parallel
from ssd_jax.data.pipeline import pad_objects
from ssd_jax.data.synthetic import SyntheticShapes
from ssd_jax.models import SSD
from ssd_jax.steps import (
    StepSettings,
    init_train_state,
    make_detect_step,
    make_train_step,
    split_model,
)


def tiny_batch(batch_size, seed=0):
    source = SyntheticShapes(
        batch_size, num_classes=3, image_size=(300, 300), max_objects=3, seed=seed
    )
    examples = [source[i] for i in range(batch_size)]
    padded = [pad_objects(e["boxes"], e["labels"], 4) for e in examples]
    return {
        "image": np.stack([e["image"] for e in examples]),
        "boxes": np.stack([p["boxes"] for p in padded]),
        "labels": np.stack([p["labels"] for p in padded]),
        "mask": np.stack([p["mask"] for p in padded]),
    }


def flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


# Flax keeps BN running statistics in float32: storing float64 batch statistics
# into them warns under x64.
@pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")
def test_sharded_train_step_equals_single_device_step_and_compiles_once():
    """The step over 8 devices (batch sharded, state replicated) computes what it
    computes on one device: loss, BN statistics of the global batch and update.

    In float32 the two differ by reduction order alone, and a BN network amplifies
    that: updates differ by ~0.2 % overall and by more than their own size for a
    few weakly-driven variables, so no float32 tolerance separates rounding from a
    real bug. The network therefore runs in float64. What stays float32 is the loss
    (matching and multibox loss are float32 by design): its value may differ by a
    few ulps of float32 summation (rtol 1e-6, about 16 ulps), and the update
    through it by the same relative amount (measured 6e-8 relative to the update's
    norm; bound 1e-6). BN running statistics are computed in float64 but stored in
    float32 (Flax's choice), so they may round one ulp apart (rtol 1e-6). A sharding
    bug (per-device BN statistics, gradients not averaged over devices) changes
    these by percent, not by parts per million.

    With static shapes and output shardings equal to the input ones, the loop's
    step, fed its own donated output and new data each time, never recompiles."""
    with jax.enable_x64(True):
        model = SSD("ssd300", 3, width=1 / 32, batch_norm=True, dtype=jnp.float64,
                    param_dtype=jnp.float64, rngs=nnx.Rngs(0))  # fmt: skip
        schedule = optim.step_schedule(1e-3, 2, (2,), 0.1)
        optimizer = optim.make_optimizer("sgd", schedule)
        graphdef, variables = split_model(model)
        state = init_train_state(variables, optimizer)
        start = flat(state["params"])  # (the donating step below may reuse their buffers)
        boxes = default_boxes.generate(default_boxes.preset("ssd300"))
        train_step = make_train_step(graphdef, optimizer, schedule, StepSettings(boxes))
        step = jax.jit(train_step, donate_argnums=0)  # as the training loop has it
        batch = tiny_batch(8)
        device = jax.devices()[0]
        one_state, one_metrics = jax.jit(train_step)(
            jax.device_put(state, device), jax.device_put(batch, device)
        )
        mesh = parallel.make_data_mesh()
        all_state, all_metrics = step(
            jax.device_put(state, parallel.replicated(mesh)), parallel.shard_batch(batch, mesh)
        )
        assert len(mesh.devices.ravel()) == 8 and int(all_state["step"]) == 1
        np.testing.assert_allclose(all_metrics["loss"], one_metrics["loss"], rtol=1e-6)
        np.testing.assert_allclose(flat(all_state["batch_stats"]),
                                   flat(one_state["batch_stats"]), rtol=1e-6)  # fmt: skip
        one, sharded = flat(one_state["params"]), flat(all_state["params"])
        assert np.linalg.norm(sharded - one) <= 1e-6 * np.linalg.norm(one - start)

        for seed in (1, 2):  # different images and object counts, same shapes
            all_state, metrics = step(all_state, parallel.shard_batch(tiny_batch(8, seed), mesh))
    assert np.isfinite(float(metrics["loss"])) and int(all_state["step"]) == 3
    assert step._cache_size() == 1


def test_bfloat16_train_step_and_detector_follow_float32():
    """bfloat16 compute (float32 parameters, matching, loss and post-processing)
    gives the float32 step's loss, gradient direction and detection scores to
    bfloat16 precision. bfloat16 keeps 8 significant bits (relative rounding
    2^-9 ~ 0.2 %); over the ~20 layers whose outputs are rounded the errors add
    up to about 1 % at most (measured 0.1 %; bounds: 1 % on the loss and scores,
    gradients at least 0.99 aligned). A NaN (as XLA:CPU's fused max pool gave on jax 0.12, see
    ssd_jax/__init__.py), a cast to a wrong dtype or a layer left in float32
    shows up as a NaN or an exact float32 match, both caught here."""
    boxes = default_boxes.generate(default_boxes.preset("ssd300"))
    schedule = optim.step_schedule(1e-3, 2, (2,), 0.1)
    optimizer = optim.make_optimizer("sgd", schedule)
    batch = tiny_batch(2)
    results = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = SSD("ssd300", 3, width=1 / 16, dtype=dtype, rngs=nnx.Rngs(0))
        graphdef, variables = split_model(model)
        settings = StepSettings(boxes, compute_dtype=dtype)
        train_step = jax.jit(make_train_step(graphdef, optimizer, schedule, settings))
        state, metrics = train_step(init_train_state(variables, optimizer), batch)
        grads = flat(state["params"]) - flat(variables["params"])  # -lr * gradient
        detections = jax.jit(make_detect_step(graphdef, settings))(variables, batch["image"])
        results[dtype] = (float(metrics["loss"]), grads, np.asarray(detections.scores))
    (loss32, grads32, scores32), (loss16, grads16, scores16) = results.values()
    assert np.isfinite(loss16) and np.isfinite(grads16).all() and np.isfinite(scores16).all()
    assert loss16 != loss32 and abs(loss16 - loss32) < 0.01 * loss32
    cosine = grads16 @ grads32 / np.linalg.norm(grads16) / np.linalg.norm(grads32)
    assert cosine > 0.99
    np.testing.assert_allclose(scores16.max(axis=1), scores32.max(axis=1), rtol=0.01)
