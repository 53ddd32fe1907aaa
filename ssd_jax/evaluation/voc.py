"""PASCAL VOC detection metric: per-class average precision and mAP, as the
official devkit computes it.

Per class: detections of that class from all images, by descending score (ties
in input order), are matched greedily to the ground truth of the same class in
the same image; a detection is a true positive when its best IoU is >= 0.5 with
a ground truth not matched before; a duplicate is a false positive; a match to
a *difficult* object counts neither way. Recall is divided by the number of
non-difficult ground-truth objects. AP is the VOC2007 11-point interpolated
precision (``use_07_metric=True``) or the VOC2010+ area under the interpolated
precision-recall curve.

IoU uses the devkit's pixel convention (a box spans x_max - x_min + 1 pixels)
when image sizes are given, and plain normalized coordinates otherwise.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class ImageGroundTruth(NamedTuple):
    """Ground truth of one image: ``boxes`` (N, 4) normalized xyxy, ``labels`` (N,)
    in 1..C, ``difficult`` (N,) bool (VOC difficult or COCO crowd: detections on
    them count neither way); ``size`` (height, width) in pixels or None;
    ``image_id`` the dataset's id of the image (needed by the COCO metric)."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    size: tuple[int, int] | None = None
    image_id: int | None = None


class ImageDetections(NamedTuple):
    """Detections of one image: ``boxes`` (K, 4) normalized xyxy, ``scores`` (K,),
    ``labels`` (K,) in 1..C."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


class VocResult(NamedTuple):
    """``ap`` (C,) per class (NaN for a class without non-difficult ground truth),
    ``map`` the mean over classes with ground truth, ``num_positives`` (C,)."""

    ap: np.ndarray
    map: float
    num_positives: np.ndarray


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP of a precision-recall curve (arrays in detection order)."""
    if use_07_metric:
        ap = 0.0
        for threshold in np.arange(11) * 0.1:  # the devkit's 0:0.1:1, float for float
            above = precision[recall >= threshold]
            ap += (above.max() if above.size else 0.0) / 11
        return float(ap)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    changes = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[changes + 1] - recall[changes]) * precision[changes + 1]))


def _pixel_iou(box: np.ndarray, boxes: np.ndarray, plus_one: float) -> np.ndarray:
    """IoU of one (4,) box with (N, 4) boxes; ``plus_one`` = 1 for devkit pixels."""
    width = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + plus_one
    height = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + plus_one
    intersection = np.maximum(width, 0) * np.maximum(height, 0)
    area = (box[2] - box[0] + plus_one) * (box[3] - box[1] + plus_one)
    areas = (boxes[:, 2] - boxes[:, 0] + plus_one) * (boxes[:, 3] - boxes[:, 1] + plus_one)
    return intersection / (area + areas - intersection)


def evaluate(
    ground_truth: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> VocResult:
    """VOC AP per class and mAP of ``detections`` against ``ground_truth`` (one
    entry per image, same order)."""
    if len(ground_truth) != len(detections):
        raise ValueError(
            f"{len(ground_truth)} ground-truth images but {len(detections)} detections"
        )
    # Pixel coordinates (devkit 1-based inclusive boxes) when sizes are known.
    scaled_gt, scaled_det, plus_one = [], [], 0.0
    if all(gt.size is not None for gt in ground_truth) and ground_truth:
        plus_one = 1.0
        for gt, det in zip(ground_truth, detections, strict=True):
            height, width = gt.size
            scale = np.array([width, height, width, height], np.float64)
            scaled_gt.append(np.asarray(gt.boxes, np.float64).reshape(-1, 4) * scale)
            scaled_det.append(np.asarray(det.boxes, np.float64).reshape(-1, 4) * scale)
    else:
        scaled_gt = [np.asarray(gt.boxes, np.float64).reshape(-1, 4) for gt in ground_truth]
        scaled_det = [np.asarray(det.boxes, np.float64).reshape(-1, 4) for det in detections]

    ap = np.full(num_classes, np.nan)
    num_positives = np.zeros(num_classes, np.int64)
    for label in range(1, num_classes + 1):
        gt_of_image, difficult_of_image = [], []
        for gt, boxes in zip(ground_truth, scaled_gt, strict=True):
            of_class = np.asarray(gt.labels) == label
            gt_of_image.append(boxes[of_class])
            difficult_of_image.append(np.asarray(gt.difficult, bool)[of_class])
        npos = int(sum((~d).sum() for d in difficult_of_image))
        num_positives[label - 1] = npos

        image_index, det_boxes, scores = [], [], []
        for index, (det, boxes) in enumerate(zip(detections, scaled_det, strict=True)):
            of_class = np.asarray(det.labels) == label
            image_index.append(np.full(of_class.sum(), index))
            det_boxes.append(boxes[of_class])
            scores.append(np.asarray(det.scores, np.float64)[of_class])
        image_index = np.concatenate(image_index).astype(int)
        det_boxes, scores = np.concatenate(det_boxes), np.concatenate(scores)
        order = np.argsort(-scores, kind="stable")

        matched = [np.zeros(len(g), bool) for g in gt_of_image]
        true_positive = np.zeros(len(order))
        false_positive = np.zeros(len(order))
        for rank, d in enumerate(order):
            image = image_index[d]
            candidates = gt_of_image[image]
            if len(candidates) == 0:
                false_positive[rank] = 1
                continue
            overlaps = _pixel_iou(det_boxes[d], candidates, plus_one)
            best = int(np.argmax(overlaps))
            if overlaps[best] < iou_threshold:
                false_positive[rank] = 1
            elif difficult_of_image[image][best]:
                continue  # neither counts
            elif not matched[image][best]:
                matched[image][best] = True
                true_positive[rank] = 1
            else:
                false_positive[rank] = 1
        if npos == 0:
            continue
        tp, fp = np.cumsum(true_positive), np.cumsum(false_positive)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[label - 1] = average_precision(recall, precision, use_07_metric)
    valid = ~np.isnan(ap)
    return VocResult(ap, float(ap[valid].mean()) if valid.any() else float("nan"), num_positives)
