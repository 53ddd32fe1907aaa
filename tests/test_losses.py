import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import losses
from tests import numpy_reference as ref


def random_batch(rng, batch, num_boxes, num_classes, positive_fraction):
    loc = rng.normal(0, 1.5, (batch, num_boxes, 4)).astype(np.float32)
    conf = rng.normal(0, 2, (batch, num_boxes, num_classes + 1)).astype(np.float32)
    labels = rng.integers(1, num_classes + 1, (batch, num_boxes))
    labels = np.where(rng.uniform(size=(batch, num_boxes)) < positive_fraction, labels, 0)
    deltas = rng.normal(0, 1.5, (batch, num_boxes, 4)).astype(np.float32)
    return loc, conf, labels.astype(np.int32), deltas


@pytest.mark.parametrize(
    ("positive_fraction", "neg_pos_ratio", "alpha"),
    [(0.05, 3.0, 1.0), (0.4, 3.0, 0.5), (0.1, 2.5, 2.0)],  # 0.4: A - P caps the negatives
)
def test_loss_equals_loop_reference(positive_fraction, neg_pos_ratio, alpha):
    rng = np.random.default_rng(0)
    loc, conf, labels, deltas = random_batch(rng, 3, 120, 5, positive_fraction)
    labels[1] = 0  # one image without ground truth
    loss, aux = jax.jit(losses.multibox_loss, static_argnums=(4, 5))(
        loc, conf, labels, deltas, neg_pos_ratio, alpha
    )
    want_loss, want_loc, want_conf, want_pos = ref.multibox_loss(
        loc, conf, labels, deltas, neg_pos_ratio, alpha
    )
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(aux["loc"], want_loc, rtol=1e-5)
    np.testing.assert_allclose(aux["conf"], want_conf, rtol=1e-5)
    assert aux["num_pos"] == want_pos


def test_loss_hand_computed():
    # 4 boxes, 2 logits all 0 -> every cross-entropy is log 2; one positive, so
    # min(3 * 1, 4 - 1) = 3 negatives; smooth L1 of (0.5, 2, 0, 0) = 0.125 + 1.5.
    loc = jnp.zeros((1, 4, 4))
    conf = jnp.zeros((1, 4, 2))
    labels = jnp.array([[0, 1, 0, 0]])
    deltas = jnp.zeros((1, 4, 4)).at[0, 1].set(jnp.array([0.5, 2.0, 0.0, 0.0]))
    loss, aux = losses.multibox_loss(loc, conf, labels, deltas)
    np.testing.assert_allclose(aux["conf"], 4 * math.log(2), rtol=1e-6)
    np.testing.assert_allclose(aux["loc"], 1.625, rtol=1e-6)
    np.testing.assert_allclose(loss, 4 * math.log(2) + 1.625, rtol=1e-6)


def test_hard_negatives_are_the_highest_background_losses():
    background_loss = jnp.array([0.3, 5.0, 0.9, 2.0, 0.1, 4.0, 0.9, 7.0])
    positive = jnp.array([False, False, False, False, False, False, False, True])
    mask = losses.hard_negative_mask(background_loss, positive, 3.0)
    # the positive (7.0) is excluded; the three hardest negatives are 5.0, 4.0, 2.0
    np.testing.assert_array_equal(mask, [0, 1, 0, 1, 0, 1, 0, 0])
    # a tie at the cut goes to the lower index
    mask = losses.hard_negative_mask(background_loss, positive, 5.0)
    np.testing.assert_array_equal(mask, [0, 1, 1, 1, 0, 1, 1, 0])
    mask = losses.hard_negative_mask(background_loss, positive, 4.0)
    np.testing.assert_array_equal(mask, [0, 1, 1, 1, 0, 1, 0, 0])


def test_normalized_by_positives_of_the_whole_batch():
    rng = np.random.default_rng(3)
    loc, conf, labels, deltas = random_batch(rng, 2, 50, 3, 0.1)
    _, aux_batch = losses.multibox_loss(loc, conf, labels, deltas)
    parts = [
        losses.multibox_loss(loc[i : i + 1], conf[i : i + 1], labels[i : i + 1], deltas[i : i + 1])
        for i in range(2)
    ]
    total_loc = sum(aux["loc"] * aux["num_pos"] for _, aux in parts)
    np.testing.assert_allclose(aux_batch["loc"], total_loc / aux_batch["num_pos"], rtol=1e-5)


def test_per_image_normalization_hand_computed():
    """NVIDIA's: each image's sums over its own positives, then the mean over all
    images, an image without positives adding 0. Logits all 0 (every cross-entropy
    log 2), offsets 0 except each positive's first, 2 (smooth L1 1.5)."""
    loc = jnp.zeros((3, 8, 4))
    conf = jnp.zeros((3, 8, 2))
    labels = jnp.array([[1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [0] * 8])
    deltas = jnp.zeros((3, 8, 4)).at[..., 0].set(2.0 * (labels > 0))
    loss, aux = losses.multibox_loss(loc, conf, labels, deltas, normalization="image")
    # image 0: 1 positive + 3 negatives; image 1: 2 + min(6, 6); image 2: nothing
    conf_want = (4 * math.log(2) / 1 + 8 * math.log(2) / 2 + 0) / 3
    np.testing.assert_allclose(aux["conf"], conf_want, rtol=1e-6)
    np.testing.assert_allclose(aux["loc"], (1.5 / 1 + 3.0 / 2 + 0) / 3, rtol=1e-6)
    np.testing.assert_allclose(loss, conf_want + 1.0, rtol=1e-6)
    assert aux["num_pos"] == 3
    _, batch = losses.multibox_loss(loc, conf, labels, deltas)  # the paper's: over all 3
    np.testing.assert_allclose(batch["loc"], 4.5 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="one of"):
        losses.multibox_loss(loc, conf, labels, deltas, normalization="images")


def test_no_ground_truth_gives_zero_loss_and_finite_gradients():
    rng = np.random.default_rng(4)
    loc, conf, _, deltas = random_batch(rng, 2, 30, 4, 0.0)
    labels = np.zeros((2, 30), np.int32)
    grad_fn = jax.value_and_grad(lambda l, c: losses.multibox_loss(l, c, labels, deltas)[0], (0, 1))
    loss, (grad_loc, grad_conf) = grad_fn(loc, conf)
    assert loss == 0.0
    assert np.isfinite(grad_loc).all() and np.isfinite(grad_conf).all()
    assert not np.asarray(grad_loc).any() and not np.asarray(grad_conf).any()


def test_gradients_finite_and_bfloat16_inputs_computed_in_float32():
    rng = np.random.default_rng(5)
    loc, conf, labels, deltas = random_batch(rng, 2, 40, 3, 0.2)
    conf[0, 0] = [300.0, -300.0, 0.0, 0.0]  # saturated softmax
    loss32, _ = losses.multibox_loss(loc, conf, labels, deltas)
    loc16, conf16 = jnp.asarray(loc, jnp.bfloat16), jnp.asarray(conf, jnp.bfloat16)
    loss16, aux16 = losses.multibox_loss(loc16, conf16, labels, deltas)
    assert loss16.dtype == jnp.float32 and aux16["conf"].dtype == jnp.float32
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
    grads = jax.grad(lambda l, c: losses.multibox_loss(l, c, labels, deltas)[0], (0, 1))(loc, conf)
    assert all(np.isfinite(g).all() for g in grads)
    # gradients reach only positives and mined negatives
    touched = np.abs(np.asarray(grads[1])).sum(-1) > 0
    assert touched.sum() <= 4 * (labels > 0).sum()
