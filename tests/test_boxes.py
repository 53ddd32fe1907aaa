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


def test_host_iou_keeps_numpy_float64_and_the_devkit_pixel_convention():
    """The one IoU for NumPy callers (augmentation, the VOC metric, the examples):
    float64 kept, and with plus_one=1 the VOC devkit's pixels, where a box spans
    x_max - x_min + 1 pixels: (0, 0, 9, 9) and (5, 5, 14, 14) are 10x10 boxes
    sharing 5x5 pixels, 25 / (100 + 100 - 25)."""
    a = np.array([[0.0, 0.0, 9.0, 9.0]])
    b = np.array([[5.0, 5.0, 14.0, 14.0], [10.0, 0.0, 19.0, 9.0], [0.0, 0.0, 9.0, 9.0]])
    pixels = boxes.iou_xyxy(a, b, plus_one=1, xp=np)
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.float64
    np.testing.assert_array_equal(pixels, [25 / 175, 0.0, 1.0])  # (10, .) only touches
    continuous = boxes.iou_xyxy(a, b, xp=np)  # 4x4 shared of 9x9 boxes
    np.testing.assert_allclose(continuous, [16 / (81 + 81 - 16), 0.0, 1.0], rtol=1e-15)
    rng = np.random.default_rng(2)
    x, y = (random_boxes_xyxy(rng, n).astype(np.float64) for n in (5, 7))
    np.testing.assert_allclose(boxes.iou_xyxy(x[:, None], y[None], xp=np),
                               [[ref.iou(p, q) for q in y] for p in x], rtol=1e-12)  # fmt: skip
