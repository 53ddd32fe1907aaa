"""scoring.batch_records: one evaluation batch -> per-image records, by hand."""

import numpy as np

from ssd_jax.evaluation import scoring
from ssd_jax.postprocess import Detections


def test_batch_records_drop_padding_rows_and_treat_crowds_as_difficult():
    # 3 images, 2 ground-truth slots, 2 detection slots; image 1 is padding
    boxes = np.array([[[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.9, 0.8]],
                      [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]],
                      [[0.3, 0.3, 0.4, 0.6], [0.5, 0.5, 0.7, 0.7]]], np.float32)  # fmt: skip
    ground_truth = {
        "boxes": boxes,
        "labels": np.array([[1, 2], [3, 0], [2, 1]]),
        "mask": np.array([[True, True], [True, False], [True, False]]),
        "difficult": np.array([[False, True], [False, False], [False, False]]),
        "is_crowd": np.array([[True, False], [False, False], [False, True]]),
        "height": np.array([100, 1, 50]),
        "width": np.array([200, 1, 60]),
        "image_id": np.array([7, 0, 9]),
        "is_padding": np.array([False, True, False]),
    }
    found = Detections(
        boxes_xyxy=np.arange(24, dtype=np.float32).reshape(3, 2, 4) / 24,
        scores=np.array([[0.9, 0.0], [0.8, 0.7], [0.6, 0.5]], np.float32),
        classes=np.array([[2, 0], [1, 1], [1, 2]], np.int32),
        valid=np.array([[True, False], [True, True], [True, True]]),
        num_detections=np.array([1, 2, 2], np.int32),
    )
    gts, dets = scoring.batch_records(ground_truth, found)

    assert [g.image_id for g in gts] == [7, 9] and [g.size for g in gts] == [(100, 200), (50, 60)]
    np.testing.assert_array_equal(gts[0].boxes, boxes[0])
    np.testing.assert_array_equal(gts[0].labels, [1, 2])
    np.testing.assert_array_equal(gts[0].difficult, [True, True])  # crowd, difficult
    np.testing.assert_array_equal(gts[1].boxes, boxes[2][:1])  # masked slot dropped
    np.testing.assert_array_equal(gts[1].difficult, [False])  # its crowd flag was masked
    np.testing.assert_array_equal(dets[0].scores, found.scores[0][:1])  # invalid slot dropped
    np.testing.assert_array_equal(dets[0].labels, [2])
    np.testing.assert_array_equal(dets[0].boxes, found.boxes_xyxy[0][:1])
    np.testing.assert_array_equal(dets[1].scores, found.scores[2])
    np.testing.assert_array_equal(dets[1].labels, [1, 2])
