"""From evaluation batches and detections to metrics: per-image records and the
VOC or COCO summary that training and ``python -m ssd_jax.evaluate`` report."""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ssd_jax.evaluation import coco, voc
from ssd_jax.postprocess import Detections


def batch_records(
    ground_truth: dict[str, np.ndarray], found: Detections
) -> tuple[list[voc.ImageGroundTruth], list[voc.ImageDetections]]:
    """Per-image records of one evaluation batch, padding examples dropped.

    Args:
      ground_truth: host arrays of a ``pipeline.eval_dataset`` batch: ``boxes``
        (B, M, 4) normalized xyxy, ``labels``, ``mask``, ``difficult``,
        ``is_crowd`` (B, M), ``height``, ``width``, ``image_id``, ``is_padding`` (B,).
      found: the batch's detections (host arrays, ``postprocess.Detections``).
    """
    gts, dets = [], []
    for i in np.nonzero(~np.asarray(ground_truth["is_padding"]))[0]:
        mask, keep = ground_truth["mask"][i], found.valid[i]
        gts.append(
            voc.ImageGroundTruth(
                ground_truth["boxes"][i][mask],
                ground_truth["labels"][i][mask],
                (ground_truth["difficult"][i] | ground_truth["is_crowd"][i])[mask],
                size=(int(ground_truth["height"][i]), int(ground_truth["width"][i])),
                image_id=int(ground_truth["image_id"][i]),
            )
        )
        dets.append(
            voc.ImageDetections(
                found.boxes_xyxy[i][keep], found.scores[i][keep], found.classes[i][keep]
            )
        )
    return gts, dets


def _voc(ground_truth, detections, class_names, category_ids, annotation_file, backend):
    result = voc.mean_average_precision(
        ground_truth, detections, len(class_names), use_07_metric=True
    )
    per_class = {f"ap/{n}": float(a) for n, a in zip(class_names, result.ap, strict=True)}
    return {"map": result.map, "map_area": result.map_area, **per_class}


def _coco(ground_truth, detections, class_names, category_ids, annotation_file, backend):
    category_ids = category_ids or range(1, len(class_names) + 1)
    image_ids = [k if gt.image_id is None else gt.image_id for k, gt in enumerate(ground_truth)]
    if annotation_file:
        dataset = coco.load_dataset(annotation_file, image_ids, category_ids)
    else:
        dataset = coco.ground_truth_dataset(ground_truth, image_ids, category_ids, class_names)
    results = coco.results_from_detections(
        detections, image_ids, [gt.size for gt in ground_truth], category_ids
    )
    return coco.bbox_stats(dataset, results, backend)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A detection metric: what it reports, its headline (printed name and result
    key) and ``score(ground_truth, detections, class_names, category_ids,
    annotation_file, backend) -> dict``."""

    what: str
    headline: tuple[str, str]
    score: Callable[..., dict[str, float]]


# The metrics ``eval_metric`` and ``evaluate --metric`` can name; validation, flag
# choices and messages come from this table.
METRICS: dict[str, Metric] = {
    "voc": Metric("VOC07 11-point mAP (map), all-point mAP (map_area), AP per class",
                  ("mAP", "map"), _voc),
    "coco": Metric("COCO's 12 numbers (AP at IoU 0.5:0.95, AP50, ...), AP per class",
                   ("AP", "AP"), _coco),
}  # fmt: skip


def score(
    ground_truth: Sequence[voc.ImageGroundTruth],
    detections: Sequence[voc.ImageDetections],
    class_names: Sequence[str],
    metric: str = "voc",
    category_ids: Sequence[int] | None = None,
    coco_annotation_file: str | None = None,
    coco_backend: str = "faster_coco_eval",
) -> dict[str, float]:
    """The summary of one metric (a key of :data:`METRICS`) over all images.

    ``"voc"``: ``map`` (VOC2007 11-point), ``map_area`` (VOC2010+ all-point) and
    ``ap/<class>`` (11-point). ``"coco"``: the 12 numbers of
    :data:`coco.STAT_NAMES` and ``ap/<class>`` (IoU 0.5:0.95); ground truth from
    ``coco_annotation_file`` when given (official areas and crowd regions), else
    from the records (image ids default to positions). ``category_ids[k - 1]``
    is label k's dataset category id (default k).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: one of {', '.join(METRICS)}")
    return METRICS[metric].score(ground_truth, detections, class_names, category_ids,
                                 coco_annotation_file, coco_backend)  # fmt: skip


def headline(result: dict[str, float], metric: str | None = None) -> tuple[str, float]:
    """The one number to print, ``(name, value)``: VOC ``mAP`` or COCO ``AP``
    (``metric`` None: the metric whose headline key ``result`` holds)."""
    if metric is None:
        metric = next(name for name, m in METRICS.items() if m.headline[1] in result)
    name, key = METRICS[metric].headline
    return name, result[key]
