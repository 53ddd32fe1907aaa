r"""Metric speed: the VOC metric on real detections, the COCO metric on a
COCO-sized synthetic set.

    python -m benchmarks.metrics \
        [--voc_dump ../shared/data/voc07_test_ssd300/detections.npz] [--coco_images 5000]

1. VOC07 11-point mAP of a trained SSD300's detections on the 4952 VOC2007 test
   images (the shared dump beside the repository, ``../shared``; about 15k
   objects); skipped with a note when the dump is not there.
2. COCO AP of ``coco_images`` synthetic images (80 classes, 7 objects and 100
   detections per image, like SSD on val2017) with faster-coco-eval and pycocotools.
"""

import os
import time

import numpy as np
from absl import app, flags

from benchmarks.common import define_output_flag, write_report
from ssd_jax.evaluation import scoring, voc

FLAGS = flags.FLAGS
# The shared VOC2007-test detections, beside the repository (its folder's README).
VOC_DUMP = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "..", "shared", "data", "voc07_test_ssd300", "detections.npz",
)  # fmt: skip


def load_voc07_dump(path: str) -> tuple[list[voc.ImageGroundTruth], list[voc.ImageDetections]]:
    """The shared VOC2007-test dump (its README): per-image ground truth and
    detections, cxcywh normalized boxes and 0-based labels -> records (xyxy, 1..20)."""
    data = np.load(path)

    def split(values, counts):
        return np.split(values, np.cumsum(counts)[:-1])

    def xyxy(cxcywh):
        centre, size = cxcywh[:, :2].astype(np.float64), cxcywh[:, 2:].astype(np.float64)
        return np.concatenate([centre - size / 2, centre + size / 2], 1)

    gt_boxes = split(xyxy(data["gt_boxes_cxcywh"]), data["gt_count"])
    gt_labels = split(data["gt_labels"] + 1, data["gt_count"])
    det_boxes = split(xyxy(data["det_boxes_cxcywh"]), data["det_count"])
    det_scores = split(data["det_scores"], data["det_count"])
    det_labels = split(data["det_labels"] + 1, data["det_count"])
    gts = [
        voc.ImageGroundTruth(b, l, np.zeros(len(l), bool))
        for b, l in zip(gt_boxes, gt_labels, strict=True)
    ]
    dets = [voc.ImageDetections(*d) for d in zip(det_boxes, det_scores, det_labels, strict=True)]
    return gts, dets


def coco_sized_set(num_images: int, seed: int = 0):
    """Synthetic records: 7 objects per image over 80 classes; 100 detections per
    image (jittered copies of the objects with high scores, the rest random)."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for index in range(num_images):
        xy = rng.uniform(0, 0.8, (7, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0.02, 0.2, (7, 2))], 1)
        labels = rng.integers(1, 81, 7)
        gts.append(voc.ImageGroundTruth(boxes, labels, np.zeros(7, bool), (480, 640), index + 1))
        noise_xy = rng.uniform(0, 0.9, (93, 2))
        det_boxes = np.concatenate([boxes + rng.normal(0, 0.01, (7, 4)),
                                    np.concatenate([noise_xy, noise_xy + 0.1], 1)])  # fmt: skip
        scores = np.concatenate([rng.uniform(0.5, 1, 7), rng.uniform(0, 0.5, 93)])
        det_labels = np.concatenate([labels, rng.integers(1, 81, 93)])
        dets.append(voc.ImageDetections(det_boxes, scores, det_labels))
    return gts, dets


def time_voc(path: str) -> dict:
    gts, dets = load_voc07_dump(path)
    start = time.perf_counter()
    result = voc.mean_average_precision(gts, dets, num_classes=20)
    seconds = time.perf_counter() - start
    print(f"VOC07 11-point, {len(gts)} images: {seconds:.2f} s (mAP {result.map:.4f})")
    return {"metric": "voc07", "images": len(gts), "objects": int(result.num_positives.sum()),
            "detections": sum(len(d.scores) for d in dets), "seconds": seconds,
            "map": result.map}  # fmt: skip


def main(argv: list[str]) -> None:
    del argv
    rows = []
    if os.path.isfile(FLAGS.voc_dump):
        rows.append(time_voc(FLAGS.voc_dump))
    else:  # the dump lives outside the repository (shared/ beside it)
        print(f"VOC07 part skipped: no {FLAGS.voc_dump} (set --voc_dump)")
    gts, dets = coco_sized_set(FLAGS.coco_images)
    names = [f"class_{k}" for k in range(1, 81)]
    for backend in ("faster_coco_eval", "pycocotools"):
        start = time.perf_counter()
        stats = scoring.score(gts, dets, names, "coco", coco_backend=backend)
        seconds = time.perf_counter() - start
        rows.append({"metric": "coco", "backend": backend, "images": len(gts),
                     "seconds": seconds, "AP": stats["AP"]})  # fmt: skip
        print(f"COCO, {backend}, {len(gts)} images: {seconds:.2f} s (AP {stats['AP']:.4f})")
    write_report(FLAGS.output, "metrics", rows)


if __name__ == "__main__":
    flags.DEFINE_string("voc_dump", VOC_DUMP, "VOC07 test detections (README of its folder).")
    flags.DEFINE_integer("coco_images", 5000, "Images in the synthetic COCO-sized set.")
    define_output_flag("metrics")
    app.run(main)
