import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import box_coding, default_boxes, matching
from tests import numpy_reference as ref


def random_ground_truth(rng, max_boxes, num_valid):
    top_left = rng.uniform(0, 0.75, (max_boxes, 2))
    size = rng.uniform(0.03, 0.6, (max_boxes, 2))
    boxes = np.clip(np.concatenate([top_left, top_left + size], 1), 0, 1).astype(np.float32)
    labels = rng.integers(1, 21, max_boxes).astype(np.int32)
    mask = np.arange(max_boxes) < num_valid
    return boxes, labels, mask


@pytest.mark.parametrize("num_valid", [0, 1, 3, 8])
def test_match_equals_loop_reference(num_valid):
    rng = np.random.default_rng(num_valid)
    defaults = default_boxes.generate(default_boxes.preset("ssd300"))
    boxes, labels, mask = random_ground_truth(rng, 8, num_valid)
    got_labels, got_deltas = jax.jit(matching.match)(boxes, labels, mask, defaults)
    want_labels, want_deltas = ref.match(boxes, labels, mask, defaults)
    assert got_labels.shape == (8732,) and got_labels.dtype == jnp.int32
    assert got_deltas.shape == (8732, 4) and got_deltas.dtype == jnp.float32
    np.testing.assert_array_equal(got_labels, want_labels)
    np.testing.assert_allclose(got_deltas, want_deltas, atol=2e-4)
    assert (want_labels > 0).sum() >= num_valid


def test_match_batch_equals_per_image_match():
    rng = np.random.default_rng(7)
    defaults = default_boxes.generate(default_boxes.preset("ssd300"))
    images = [random_ground_truth(rng, 6, n) for n in (0, 2, 6)]
    boxes, labels, mask = (np.stack(parts) for parts in zip(*images))
    batch_labels, batch_deltas = matching.match_batch(boxes, labels, mask, defaults)
    assert batch_labels.shape == (3, 8732) and batch_deltas.shape == (3, 8732, 4)
    for i in range(3):
        single_labels, single_deltas = matching.match(boxes[i], labels[i], mask[i], defaults)
        np.testing.assert_array_equal(batch_labels[i], single_labels)
        np.testing.assert_allclose(batch_deltas[i], single_deltas, atol=1e-6)


def cxcywh(*xyxy_rows):
    rows = np.array(xyxy_rows, np.float32)
    return np.concatenate([(rows[:, :2] + rows[:, 2:]) / 2, rows[:, 2:] - rows[:, :2]], 1)


def test_iou_exactly_at_threshold_is_positive():
    gt = np.array([[0, 0, 0.5, 0.5]], np.float32)
    # IoU with gt: 1 (forced), exactly 0.5, 0.48, 0
    defaults = cxcywh((0, 0, 0.5, 0.5), (0, 0, 0.5, 0.25), (0, 0, 0.5, 0.24), (0.5, 0.5, 1, 1))
    labels, deltas = matching.match(gt, np.array([7]), np.array([True]), defaults)
    np.testing.assert_array_equal(labels, [7, 7, 0, 0])
    np.testing.assert_allclose(deltas[1], box_coding.encode(gt[0], defaults[1]), atol=1e-6)
    np.testing.assert_array_equal(deltas[2:], 0)


def test_tied_best_default_box_forces_the_first():
    gt = np.array([[0, 0, 0.25, 0.25]], np.float32)
    # both default boxes have IoU exactly 0.25 (< threshold): only the first is forced
    defaults = cxcywh((0, 0, 0.5, 0.5), (-0.25, -0.25, 0.25, 0.25))
    labels, _ = matching.match(gt, np.array([3]), np.array([True]), defaults)
    np.testing.assert_array_equal(labels, [3, 0])


def test_later_ground_truth_wins_a_shared_best_default_box():
    gt = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.45]], np.float32)
    defaults = cxcywh((0, 0, 0.5, 0.5), (0.6, 0.6, 1, 1))
    labels, deltas = matching.match(gt, np.array([1, 2]), np.array([True, True]), defaults)
    # default 0 overlaps gt 0 most (IoU 1 vs 0.9), but both force it and gt 1 is later
    np.testing.assert_array_equal(labels, [2, 0])
    np.testing.assert_allclose(deltas[0], box_coding.encode(gt[1], defaults[0]), atol=1e-6)


def test_low_iou_ground_truth_is_still_matched():
    gt = np.array([[0.0, 0.0, 0.05, 0.05]], np.float32)
    defaults = cxcywh((0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1))  # IoU 0.01 and 0
    labels, _ = matching.match(gt, np.array([4]), np.array([True]), defaults)
    np.testing.assert_array_equal(labels, [4, 0])


def test_padding_never_matches_and_empty_image_is_background():
    defaults = default_boxes.generate(default_boxes.preset("ssd300"))
    # padded rows hold real-looking boxes: the mask alone must exclude them
    boxes = np.array([[0.1, 0.1, 0.6, 0.6], [0.2, 0.2, 0.9, 0.8]], np.float32)
    labels, deltas = matching.match(boxes, np.array([1, 2]), np.array([False, False]), defaults)
    assert not np.asarray(labels).any() and not np.asarray(deltas).any()
    labels, _ = matching.match(boxes, np.array([1, 2]), np.array([True, False]), defaults)
    assert set(np.unique(labels)) == {0, 1}


def test_zero_area_ground_truth_is_ignored_and_targets_finite():
    defaults = default_boxes.generate(default_boxes.preset("ssd300"))
    boxes = np.array([[0.3, 0.3, 0.3, 0.7], [0.0, 0.0, 0.0, 0.0]], np.float32)
    labels, deltas = matching.match(boxes, np.array([1, 2]), np.array([True, True]), defaults)
    assert not np.asarray(labels).any()
    assert np.isfinite(np.asarray(deltas)).all()
