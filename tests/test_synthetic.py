import numpy as np
import pytest

from ssd_jax.boxes import pairwise_iou_xyxy
from ssd_jax.data.synthetic import SHAPE_NAMES, SyntheticShapes


def test_deterministic_per_seed_and_index():
    a, b = SyntheticShapes(5, seed=7), SyntheticShapes(50, seed=7)
    for index in range(5):
        for field in ("image", "boxes", "labels"):
            np.testing.assert_array_equal(a[index][field], b[index][field])
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    assert not np.array_equal(a[0]["image"], SyntheticShapes(5, seed=8)[0]["image"])


def test_dataset_statistics_cover_the_hard_cases():
    source = SyntheticShapes(150, num_classes=8, image_size=(200, 200), seed=0)
    sides, labels, overlapping, at_border, empty = [], [], 0, 0, 0
    for index in range(len(source)):
        example = source[index]
        boxes = example["boxes"]
        empty += len(boxes) == 0
        sides += list(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
        labels += list(example["labels"])
        at_border += int(((boxes <= 0) | (boxes >= 199 / 200)).any())
        if len(boxes) > 1:
            iou = np.asarray(pairwise_iou_xyxy(boxes, boxes)) - np.eye(len(boxes))
            overlapping += int((iou > 0.05).any())
    assert min(sides) < 0.05 and max(sides) > 0.8  # 3% ... 90% of the image
    assert set(labels) == set(range(1, 9))
    assert overlapping > 20 and at_border > 20 and 0 < empty < 20


def test_boxes_use_inclusive_pixel_indices():
    # box corners are 0-based pixel indices / size: the last column is 63/64, never 1
    source = SyntheticShapes(40, num_classes=2, image_size=(64, 64), max_objects=1, seed=1)
    for index in range(40):
        example = source[index]
        if len(example["boxes"]) != 1:
            continue
        x0, y0, x1, y1 = np.round(example["boxes"][0] * 64).astype(int)
        assert 0 <= x0 < x1 <= 63 and 0 <= y0 < y1 <= 63


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes must be in 1..8"),
        ({"num_classes": 9}, "1..8"),
        ({"image_size": (8, 8)}, "16 px"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticShapes(3, **kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError):
        SyntheticShapes(3)[3]
    assert SyntheticShapes(3, num_classes=3).class_names == SHAPE_NAMES[:3]
