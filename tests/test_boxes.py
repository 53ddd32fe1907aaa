import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import boxes
from tests import numpy_reference as ref


def random_boxes_xyxy(rng, n):
    top_left = rng.uniform(0, 0.8, (n, 2))
    size = rng.uniform(0.01, 0.5, (n, 2))
    return np.concatenate([top_left, top_left + size], axis=1).astype(np.float32)


def test_conversions_hand_computed():
    xyxy = jnp.array([[0.1, 0.2, 0.5, 0.8]])
    np.testing.assert_allclose(boxes.xyxy_to_cxcywh(xyxy), [[0.3, 0.5, 0.4, 0.6]], atol=1e-7)
    np.testing.assert_allclose(boxes.cxcywh_to_xyxy([[0.3, 0.5, 0.4, 0.6]]), xyxy, atol=1e-7)


def test_conversions_round_trip_with_leading_dims():
    rng = np.random.default_rng(0)
    xyxy = random_boxes_xyxy(rng, 24).reshape(2, 3, 4, 4)
    back = boxes.cxcywh_to_xyxy(boxes.xyxy_to_cxcywh(xyxy))
    assert back.shape == (2, 3, 4, 4) and back.dtype == jnp.float32
    np.testing.assert_allclose(back, xyxy, atol=1e-6)


def test_area_of_inverted_box_is_zero():
    np.testing.assert_allclose(
        boxes.area_xyxy([[0.0, 0.0, 0.5, 0.25], [0.5, 0.5, 0.4, 0.9]]), [0.125, 0.0]
    )


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75), 1 / 7),  # 0.0625 / 0.4375
        ((0, 0, 0.5, 0.5), (0, 0, 0.5, 0.25), 0.5),
        ((0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), 0.0),  # touching edges
        ((0.1, 0.1, 0.3, 0.3), (0.1, 0.1, 0.3, 0.3), 1.0),
        ((0.2, 0.2, 0.2, 0.2), (0.2, 0.2, 0.2, 0.2), 0.0),  # empty union: 0, not NaN
    ],
)
def test_iou_hand_computed(a, b, expected):
    np.testing.assert_allclose(boxes.pairwise_iou_xyxy([a], [b]), [[expected]], atol=1e-6)


def test_iou_matches_loop_reference():
    rng = np.random.default_rng(1)
    a, b = random_boxes_xyxy(rng, 17), random_boxes_xyxy(rng, 23)
    expected = [[ref.iou(x, y) for y in b] for x in a]
    result = boxes.pairwise_iou_xyxy(a, b)
    assert result.shape == (17, 23)
    np.testing.assert_allclose(result, expected, atol=1e-6)
