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

from ssd_jax.boxes import iou_xyxy


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
    """``ap`` (C,) per class (NaN for a class without non-difficult ground truth)
    with the interpolation asked for, ``map`` the mean over classes with ground
    truth, ``num_positives`` (C,); ``ap_area`` / ``map_area`` always the VOC2010+
    all-point values (same matching, so both come from one pass); ``curves``: per
    class, its precision-recall curve ``(recall, precision)`` in detection order
    (empty arrays for a class without ground truth)."""

    ap: np.ndarray
    map: float
    num_positives: np.ndarray
    ap_area: np.ndarray
    map_area: float
    curves: tuple = ()


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


def _greedy_matches(
    det_boxes: np.ndarray, images: np.ndarray, label: int, gt_boxes: np.ndarray,
    gt_labels: np.ndarray, gt_difficult: np.ndarray, plus_one: float, match_iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """True- and false-positive flags (D,) of one class's detections, best score
    first: (D, 4) boxes of ``images`` (D,), against ground truth padded to (I, M)."""
    # (D, M): each detection with the ground truth of its own image
    overlaps = iou_xyxy(det_boxes[:, None], gt_boxes[images], plus_one=plus_one, xp=np)
    overlaps = np.where(gt_labels[images] == label, overlaps, -np.inf)  # (D, M)
    best_gt = np.argmax(overlaps, axis=1) if len(images) else np.zeros(0, int)
    best_iou = overlaps[np.arange(len(images)), best_gt]
    best_difficult = gt_difficult[images, best_gt]

    matched = np.zeros(gt_labels.shape, bool)
    true_positive = np.zeros(len(images))
    false_positive = np.zeros(len(images))
    for rank, (image, best) in enumerate(zip(images.tolist(), best_gt.tolist(), strict=True)):
        if best_iou[rank] < match_iou_threshold:
            false_positive[rank] = 1
        elif best_difficult[rank]:
            continue  # neither counts
        elif not matched[image, best]:
            matched[image, best] = True
            true_positive[rank] = 1
        else:
            false_positive[rank] = 1
    return true_positive, false_positive


def mean_average_precision(
    ground_truth: Sequence[ImageGroundTruth],
    detections: Sequence[ImageDetections],
    num_classes: int,
    match_iou_threshold: float = 0.5,
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

    # Everything concatenated once; ground truth padded per image to (I, M) so
    # that each detection's best same-class object is one vectorized argmax.
    num_gt = np.array([len(np.asarray(gt.labels)) for gt in ground_truth], int)
    width = max(int(num_gt.max(initial=0)), 1)
    gt_boxes = np.zeros((len(ground_truth), width, 4))
    gt_labels = np.zeros((len(ground_truth), width), int)  # 0: no object
    gt_difficult = np.zeros((len(ground_truth), width), bool)
    for index, (gt, boxes) in enumerate(zip(ground_truth, scaled_gt, strict=True)):
        n = num_gt[index]
        gt_boxes[index, :n], gt_labels[index, :n] = boxes, np.asarray(gt.labels)
        gt_difficult[index, :n] = np.asarray(gt.difficult, bool)
    det_count = [len(np.asarray(det.scores)) for det in detections]
    det_image = np.repeat(np.arange(len(detections)), det_count)
    det_boxes = np.concatenate([*scaled_det, np.zeros((0, 4))])
    det_scores = np.concatenate([np.asarray(d.scores, np.float64) for d in detections] + [[]])
    det_labels = np.concatenate([np.asarray(d.labels, int) for d in detections] + [[]])
    det_labels = det_labels.astype(int)

    ap, ap_area = np.full(num_classes, np.nan), np.full(num_classes, np.nan)
    num_positives = np.zeros(num_classes, np.int64)
    curves = []
    for label in range(1, num_classes + 1):
        of_class = np.nonzero(det_labels == label)[0]
        order = of_class[np.argsort(-det_scores[of_class], kind="stable")]
        true_positive, false_positive = _greedy_matches(
            det_boxes[order], det_image[order], label, gt_boxes, gt_labels, gt_difficult,
            plus_one, match_iou_threshold,
        )  # fmt: skip
        npos = int(((gt_labels == label) & ~gt_difficult).sum())
        num_positives[label - 1] = npos
        if npos == 0:
            curves.append((np.zeros(0), np.zeros(0)))
            continue
        tp, fp = np.cumsum(true_positive), np.cumsum(false_positive)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        counted = (true_positive + false_positive) > 0  # not those on difficult objects
        curves.append((recall[counted], precision[counted]))
        ap[label - 1] = average_precision(recall, precision, use_07_metric)
        ap_area[label - 1] = average_precision(recall, precision, use_07_metric=False)
    valid = ~np.isnan(ap)
    means = [float(a[valid].mean()) if valid.any() else float("nan") for a in (ap, ap_area)]
    return VocResult(ap, means[0], num_positives, ap_area, means[1], tuple(curves))
