"""The device steps: the sharded train step against one device, compilation, and
the eval step's one forward pass for both the loss and the detections."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssd_jax import build, checkpoint, default_boxes, losses, matching, optim, parallel, postprocess
from ssd_jax.data.augment import resize
from ssd_jax.data.pipeline import pad_objects
from ssd_jax.data.synthetic import SyntheticShapes
from ssd_jax.models import SSD
from ssd_jax.steps import (
    StepSettings,
    init_train_state,
    make_detect_step,
    make_eval_step,
    make_train_step,
    normalize_images,
    split_model,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "checkpoint_v0.1")


def tiny_batch(batch_size, seed=0, image_size=300, max_objects=3):
    source = SyntheticShapes(
        batch_size, num_classes=3, image_size=(image_size, image_size), max_objects=max_objects,
        seed=seed, min_size=0.2,
    )  # fmt: skip
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
def test_sharded_train_step_equals_single_device_step_in_float64():
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
    these by percent, not by parts per million."""
    with jax.enable_x64(True):
        model = SSD("ssd300", 3, width=1 / 16, batch_norm=True, dtype=jnp.float64,
                    param_dtype=jnp.float64, rngs=nnx.Rngs(0))  # fmt: skip
        schedule = optim.step_schedule(1e-3, 2, (2,), 0.1)
        optimizer = optim.make_optimizer("sgd", schedule)
        graphdef, variables = split_model(model)
        state = init_train_state(variables, optimizer)
        boxes = default_boxes.generate(default_boxes.preset("ssd300"))
        step = jax.jit(make_train_step(graphdef, optimizer, schedule, StepSettings(boxes)))
        batch = tiny_batch(8)
        device = jax.devices()[0]
        one_state, one_metrics = step(jax.device_put(state, device), jax.device_put(batch, device))
        mesh = parallel.make_data_mesh()
        all_state, all_metrics = step(
            jax.device_put(state, parallel.replicated(mesh)), parallel.shard_batch(batch, mesh)
        )
    assert len(mesh.devices.ravel()) == 8 and int(all_state["step"]) == 1
    np.testing.assert_allclose(all_metrics["loss"], one_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(flat(all_state["batch_stats"]), flat(one_state["batch_stats"]),
                               rtol=1e-6)  # fmt: skip
    start, one = flat(state["params"]), flat(one_state["params"])
    sharded = flat(all_state["params"])
    assert np.linalg.norm(sharded - one) <= 1e-6 * np.linalg.norm(one - start)


def test_train_step_compiles_once():
    """With static shapes and output shardings equal to the input ones, the loop's
    step (fed its own donated output, new data each time) never recompiles."""
    model = SSD("ssd300", 3, width=1 / 16, rngs=nnx.Rngs(0))
    schedule = optim.step_schedule(1e-3, 2, (2,), 0.1)
    optimizer = optim.make_optimizer("sgd", schedule)
    graphdef, variables = split_model(model)
    boxes = default_boxes.generate(default_boxes.preset("ssd300"))
    step = jax.jit(make_train_step(graphdef, optimizer, schedule, StepSettings(boxes)),
                   donate_argnums=0)  # fmt: skip
    mesh = parallel.make_data_mesh()
    state = jax.device_put(init_train_state(variables, optimizer), parallel.replicated(mesh))
    for seed in (0, 1, 2):  # different images and object counts, same shapes
        state, metrics = step(state, parallel.shard_batch(tiny_batch(8, seed=seed), mesh))
    assert np.isfinite(float(metrics["loss"])) and int(state["step"]) == 3
    assert step._cache_size() == 1


def test_eval_step_gives_the_loss_and_detections_of_one_inference_forward_pass():
    """On a trained checkpoint (BN running statistics that differ from any batch's):
    the eval step's loss and detections are those of the network in inference mode
    (computed here step by step), and its detections are the detect step's."""
    location = checkpoint.locate(FIXTURE)
    config = checkpoint.saved_config(checkpoint.read_meta(location))
    model = build.model(config.model, 3, seed=0)
    graphdef, variables = split_model(model)
    checkpoint.restore_variables(location, variables)
    settings = build.step_settings(config)
    examples = tiny_batch(4, seed=1, image_size=160, max_objects=2)
    batch = dict(examples, image=np.stack([resize(im, 300) for im in examples["image"]]))
    step_losses, found = jax.jit(make_eval_step(graphdef, settings))(variables, batch)
    detected = jax.jit(make_detect_step(graphdef, settings))(variables, batch["image"])

    model = nnx.merge(graphdef, variables["params"], variables["batch_stats"])
    model.eval()
    loc, conf = model(normalize_images(batch["image"], config.data.mean, config.data.std,
                                       jnp.float32))  # fmt: skip
    labels, deltas = matching.match_batch(batch["boxes"], batch["labels"], batch["mask"],
                                          settings.default_boxes_cxcywh)  # fmt: skip
    loss, _ = losses.multibox_loss(loc, conf, labels, deltas)
    expected = postprocess.detect(loc, conf, settings.default_boxes_cxcywh)
    # float32 results of the same operations in differently fused programs
    np.testing.assert_allclose(step_losses["loss"], loss, rtol=1e-5)
    assert 0.5 < float(loss) < 20  # a trained model on its training images
    for other in (expected, detected):
        top = np.asarray(found.scores[:, :5])  # confident, well-separated detections
        assert (top > 0.1).all()
        np.testing.assert_allclose(top, other.scores[:, :5], atol=1e-5)
        np.testing.assert_allclose(found.boxes_xyxy[:, :5], other.boxes_xyxy[:, :5], atol=1e-5)
        np.testing.assert_array_equal(found.classes[:, :5], other.classes[:, :5])
