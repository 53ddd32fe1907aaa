"""The best and the worst images of an evaluation pass, for people to look at:
``evaluate`` writes them as ``<output stem>_examples.jpg`` and training shows
them in TensorBoard at each evaluation."""

from collections.abc import Sequence

import cv2
import numpy as np

from ssd_jax.boxes import iou_xyxy
from ssd_jax.evaluation import voc
from ssd_jax.visualize import draw_normalized_boxes, image_grid


def image_errors(
    gt: voc.ImageGroundTruth,
    det: voc.ImageDetections,
    score_threshold: float,
    match_iou_threshold: float = 0.5,
) -> tuple[int, int]:
    """``(missed, false)`` of one image at ``score_threshold``: objects (not
    difficult) that no detection of their class found at IoU >= 0.5, and
    detections that found none. Detections are matched best score first, each
    object once (VOC's rule); one on a difficult object counts neither way."""
    shown = np.nonzero(np.asarray(det.scores) >= score_threshold)[0]
    shown = shown[np.argsort(-np.asarray(det.scores)[shown], kind="stable")]
    boxes = np.asarray(gt.boxes, np.float64).reshape(-1, 4)
    labels, difficult = np.asarray(gt.labels), np.asarray(gt.difficult, bool)
    found = np.zeros(len(labels), bool)
    false = 0
    for k in shown:
        box = np.asarray(det.boxes, np.float64)[k]
        ious = iou_xyxy(box[None], boxes, xp=np)  # NumPy: a handful per image
        ious = np.where(labels == det.labels[k], ious, -1.0)
        best = int(np.argmax(ious)) if len(ious) else -1
        if best < 0 or ious[best] < match_iou_threshold:
            false += 1
        elif not difficult[best]:
            false += int(found[best])  # a second detection of a found object
            found[best] = True
    return int((~found & ~difficult).sum()), false


class Examples:
    """Keeps, over the images of a pass, the ``count`` with the fewest errors
    (ties: the most objects first) and the ``count`` with the most, as model
    input images with their ground truth and detections."""

    def __init__(self, count: int = 4, score_threshold: float = 0.5):
        self.count, self.score_threshold = count, score_threshold
        self.kept: list[tuple[tuple[int, int, int], np.ndarray, object, object]] = []
        self.seen = 0

    def add(
        self,
        images: np.ndarray,
        gts: Sequence[voc.ImageGroundTruth],
        dets: Sequence[voc.ImageDetections],
    ) -> None:
        """``images``: uint8 (N, S, S, 3), the model inputs of the records."""
        for image, gt, det in zip(images, gts, dets, strict=True):
            missed, false = image_errors(gt, det, self.score_threshold)
            objects = int((~np.asarray(gt.difficult, bool)).sum())
            key = (missed + false, -objects, self.seen)  # seen: the earlier image first
            self.kept.append((key, np.array(image), gt, det))
            self.seen += 1
        self.kept.sort(key=lambda item: item[0])
        if len(self.kept) > 2 * self.count:
            self.kept = self.kept[: self.count] + self.kept[-self.count :]

    def best_and_worst(self) -> list[tuple[str, np.ndarray, object, object]]:
        """``(caption, image, gt, det)``: the best first, then the worst, worst last."""
        best, worst = self.kept[: self.count], self.kept[self.count :]  # sorted, pruned
        rows = []
        for kind, items in (("best", best), ("worst", worst)):
            for _, image, gt, det in items:
                missed, false = image_errors(gt, det, self.score_threshold)
                objects = int((~np.asarray(gt.difficult, bool)).sum())
                caption = f"{kind}: found {objects - missed} of {objects}, {false} false"
                rows.append((caption, image, gt, det))
        return rows

    def figure(self, class_names: Sequence[str], columns: int = 2) -> np.ndarray:
        """RGB uint8 grid: per image, ground truth (left) and the detections at the
        score threshold (right) under a caption; the best images, then the worst."""
        panels = [
            _panel(caption, image, gt, det, class_names, self.score_threshold)
            for caption, image, gt, det in self.best_and_worst()
        ]
        return image_grid(panels, columns=min(columns, len(panels)), gap=8)


def _panel(caption, image, gt, det, class_names, score_threshold) -> np.ndarray:
    names = ["background", *class_names]
    truth = draw_normalized_boxes(image, gt.boxes, gt.labels, [names[k] for k in gt.labels])
    shown = np.asarray(det.scores) >= score_threshold
    order = np.argsort(-np.asarray(det.scores)[shown], kind="stable")
    boxes, labels = np.asarray(det.boxes)[shown][order], np.asarray(det.labels)[shown][order]
    scores = np.asarray(det.scores)[shown][order]
    found = draw_normalized_boxes(
        image, boxes, labels, [f"{names[k]} {s:.2f}" for k, s in zip(labels, scores, strict=True)]
    )
    pair = np.concatenate([truth, np.full((image.shape[0], 4, 3), 255, np.uint8), found], 1)
    strip = np.full((22, pair.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, f"{caption}  (left: ground truth, right: score >= {score_threshold})",
                (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    return np.concatenate([strip, pair], 0)
