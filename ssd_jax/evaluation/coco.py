"""COCO detection metric: the 12 standard AP/AR numbers, scored by faster-coco-eval
(the pycocotools algorithm in C++, several times faster) or by pycocotools.

Detections and ground truth arrive as the per-image records of
:mod:`ssd_jax.evaluation.voc` (normalized xyxy boxes, labels 1..C) and are
converted to the COCO formats: pixel ``[x, y, width, height]`` boxes, the
original image ids and the original category ids (``category_ids[label - 1]``).
When the ground truth comes from a COCO annotation file, pass that file's
dataset so that areas (segment areas, which decide small/medium/large) and
crowd regions are the official ones; otherwise :func:`ground_truth_dataset`
builds one with box areas.
"""

import contextlib
import copy
import io
import json
from collections.abc import Sequence

import numpy as np

from ssd_jax.evaluation.voc import ImageDetections, ImageGroundTruth

STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip
BACKENDS = ("faster_coco_eval", "pycocotools")


def _pixel_xywh(boxes_xyxy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, 4) normalized xyxy -> (N, 4) float64 pixel xywh."""
    height, width = size
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4) * [width, height, width, height]
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def ground_truth_dataset(
    ground_truth: Sequence[ImageGroundTruth],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    class_names: Sequence[str],
) -> dict:
    """A COCO-format ground-truth dataset (``images``, ``annotations``,
    ``categories``) from per-image records; every record needs ``size``.
    ``difficult`` objects become crowd regions (``iscrowd=1``): as in the VOC
    metric, a detection on them counts neither way. Areas are box areas."""
    images, annotations = [], []
    for gt, image_id in zip(ground_truth, image_ids, strict=True):
        if gt.size is None:
            raise ValueError(f"image {image_id}: the COCO metric needs the image size")
        height, width = gt.size
        images.append({"id": int(image_id), "height": int(height), "width": int(width)})
        for box, label, crowd in zip(
            _pixel_xywh(gt.boxes, gt.size), gt.labels, gt.difficult, strict=True
        ):
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": int(image_id),
                "category_id": int(category_ids[int(label) - 1]),
                "bbox": [float(v) for v in box],
                "area": float(box[2] * box[3]),
                "iscrowd": int(crowd),
            })  # fmt: skip
    categories = [
        {"id": int(cid), "name": name} for cid, name in zip(category_ids, class_names, strict=True)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def results_from_detections(
    detections: Sequence[ImageDetections],
    image_ids: Sequence[int],
    sizes: Sequence[tuple[int, int]],
    category_ids: Sequence[int],
) -> list[dict]:
    """Detections in the COCO results format: one ``{"image_id", "category_id",
    "bbox": [x, y, w, h] (pixels), "score"}`` per detection."""
    results = []
    for det, image_id, size in zip(detections, image_ids, sizes, strict=True):
        boxes = _pixel_xywh(det.boxes, size)
        for box, score, label in zip(boxes, det.scores, det.labels, strict=True):
            results.append({
                "image_id": int(image_id),
                "category_id": int(category_ids[int(label) - 1]),
                "bbox": [round(float(v), 3) for v in box],
                "score": float(score),
            })  # fmt: skip
    return results


def _coco_api(backend: str):
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise ValueError(f"unknown COCO backend {backend!r}: one of {BACKENDS}")


def bbox_stats(
    ground_truth: dict,
    results: list[dict],
    backend: str = "faster_coco_eval",
) -> dict[str, float]:
    """The 12 COCO bbox stats (``STAT_NAMES``) and per-category AP
    (``"ap/<category name>"``, IoU 0.5:0.95, all areas; NaN without ground truth)
    of ``results`` against the COCO-format ``ground_truth`` dataset.

    Only the images of ``ground_truth["images"]`` are scored. With no detection
    at all every stat is 0 (COCO's loaders reject an empty result list).
    """
    coco_cls, eval_cls = _coco_api(backend)
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    if not results:
        stats = dict.fromkeys(STAT_NAMES, 0.0)
        return stats | {f"ap/{name}": 0.0 for name in names.values()}
    with contextlib.redirect_stdout(io.StringIO()):  # both libraries print progress
        gt = coco_cls()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(results))
        evaluator = eval_cls(gt, dt, iouType="bbox")
        evaluator.params.imgIds = sorted(image["id"] for image in ground_truth["images"])
        evaluator.params.catIds = sorted(names)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats, strict=False)}
    # precision: (IoU thresholds, recall points, categories, area ranges, max dets)
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        stats[f"ap/{names[category_id]}"] = float(values.mean()) if values.size else float("nan")
    return stats


def load_dataset(
    annotation_file: str, image_ids: Sequence[int], category_ids: Sequence[int]
) -> dict:
    """A COCO annotation file's dataset restricted to ``image_ids`` (the images
    evaluated) and ``category_ids`` (the model's categories)."""
    with open(annotation_file) as f:
        dataset = json.load(f)
    images, categories = {int(i) for i in image_ids}, {int(c) for c in category_ids}
    dataset["images"] = [im for im in dataset["images"] if im["id"] in images]
    dataset["categories"] = [c for c in dataset["categories"] if c["id"] in categories]
    dataset["annotations"] = [
        a
        for a in dataset["annotations"]
        if a["image_id"] in images and a["category_id"] in categories
    ]
    return dataset
