"""COCO metric: formats by hand, a hand-computed AP, both backends agree."""

import json

import numpy as np
import pytest

from ssd_jax.data.sources import CocoSource
from ssd_jax.data.synthetic import SyntheticShapes, write_coco
from ssd_jax.evaluation import coco, scoring, voc


def test_results_and_ground_truth_use_pixel_xywh_and_original_ids():
    gt = [voc.ImageGroundTruth(
        np.array([[0.1, 0.2, 0.5, 1.0]]), np.array([2]), np.array([True]), size=(50, 200)
    )]  # fmt: skip
    det = [voc.ImageDetections(np.array([[0.0, 0.5, 0.25, 0.9]]), np.array([0.7]), np.array([1]))]
    dataset = coco.ground_truth_dataset(gt, [42], [17, 90], ["cat", "dog"])
    assert dataset["images"] == [{"id": 42, "height": 50, "width": 200}]
    (annotation,) = dataset["annotations"]
    assert annotation["category_id"] == 90 and annotation["iscrowd"] == 1
    np.testing.assert_allclose(annotation["bbox"], [20, 10, 80, 40])
    assert annotation["area"] == pytest.approx(3200)
    assert dataset["categories"] == [{"id": 17, "name": "cat"}, {"id": 90, "name": "dog"}]
    (result,) = coco.results_from_detections(det, [42], [(50, 200)], [17, 90])
    assert result["image_id"] == 42 and result["category_id"] == 17
    np.testing.assert_allclose(result["bbox"], [0, 25, 50, 20])
    assert result["score"] == pytest.approx(0.7)


@pytest.mark.parametrize("backend", coco.BACKENDS)
def test_hand_computed_average_precision(backend):
    """One object, one detection with IoU 0.64: a true positive at the IoU
    thresholds 0.50, 0.55 and 0.60 of the ten, so AP = 3/10, AP50 = 1, AP75 = 0."""
    gt = [voc.ImageGroundTruth(np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([1]), np.array([False]),
                               size=(400, 400))]  # fmt: skip
    det = [voc.ImageDetections(np.array([[0.0, 0.0, 0.32, 0.5]]), np.array([0.9]), np.array([1]))]
    stats = scoring.score(gt, det, ["thing"], "coco", coco_backend=backend)
    assert stats["AP"] == pytest.approx(0.3)
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(0.0)
    assert stats["ap/thing"] == pytest.approx(0.3)
    assert stats["AP_small"] == -1 and stats["AP_large"] == pytest.approx(
        0.3
    )  # a 200x200 px object
    assert stats["AR100"] == pytest.approx(0.3)
    assert set(coco.STAT_NAMES) <= set(stats)


def test_no_detections_scores_zero():
    gt = [voc.ImageGroundTruth(np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([1]), np.array([False]),
                               size=(10, 10), image_id=3)]  # fmt: skip
    det = [voc.ImageDetections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))]
    stats = scoring.score(gt, det, ["a"], "coco")
    assert stats["AP"] == 0 and stats["ap/a"] == 0


def random_records(rng, num_images, num_classes):
    """Ground truth with crowd regions, and detections: jittered copies, duplicates
    and random false positives with random scores."""
    gts, dets = [], []
    for index in range(num_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 0.7, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0.02, 0.3, (n, 2))], 1)
        labels = rng.integers(1, num_classes + 1, n)
        size = (int(rng.integers(100, 700)), int(rng.integers(100, 700)))
        gts.append(voc.ImageGroundTruth(boxes, labels, rng.uniform(size=n) < 0.1, size, index * 7))
        copies = np.repeat(np.arange(n), rng.integers(0, 3, n))
        jitter = rng.normal(0, 0.01, (len(copies), 4))
        false = rng.uniform(0, 0.5, (int(rng.integers(0, 4)), 2))
        det_boxes = np.concatenate(
            [boxes[copies] + jitter, np.concatenate([false, false + 0.2], 1)]
        )
        det_labels = np.concatenate([labels[copies], rng.integers(1, num_classes + 1, len(false))])
        scores = np.concatenate([rng.uniform(0.3, 1, len(copies)), rng.uniform(0, 0.6, len(false))])
        dets.append(voc.ImageDetections(det_boxes, scores, det_labels))
    return gts, dets


def test_faster_coco_eval_and_pycocotools_give_the_same_stats():
    gts, dets = random_records(np.random.default_rng(0), 60, 3)
    names = ["a", "b", "c"]
    fast = scoring.score(gts, dets, names, "coco", [5, 9, 11], coco_backend="faster_coco_eval")
    slow = scoring.score(gts, dets, names, "coco", [5, 9, 11], coco_backend="pycocotools")
    assert fast.keys() == slow.keys()
    # Equal up to float rounding (e.g. 1.0 vs 0.9999999999999998).
    np.testing.assert_allclose([fast[k] for k in fast], [slow[k] for k in fast], atol=1e-12)
    assert 0.2 < fast["AP"] < 0.9  # a non-trivial case: jitter makes high-IoU thresholds fail


def test_official_annotation_file_is_restricted_to_evaluated_images_and_classes(tmp_path):
    shapes = SyntheticShapes(6, num_classes=3, image_size=(80, 120), seed=4)
    write_coco(str(tmp_path / "ann.json"), str(tmp_path / "images"), shapes)
    source = CocoSource(str(tmp_path / "ann.json"), str(tmp_path / "images"), ["triangle"])
    examples = [source[i] for i in range(4)]  # evaluate 4 of the 6 images
    gts = [voc.ImageGroundTruth(e["boxes"], e["labels"], e["is_crowd"], (80, 120), int(e["image_id"]))
           for e in examples]  # fmt: skip
    dets = [voc.ImageDetections(e["boxes"], np.ones(len(e["labels"])), e["labels"])
            for e in examples]  # fmt: skip
    ann = str(tmp_path / "ann.json")
    dataset = coco.load_dataset(ann, [g.image_id for g in gts], source.category_ids)
    assert {im["id"] for im in dataset["images"]} == {g.image_id for g in gts}
    assert [c["name"] for c in dataset["categories"]] == ["triangle"]
    with open(ann) as f:
        everything = json.load(f)
    triangle_id = source.category_ids[0]
    expected = [a for a in everything["annotations"]
                if a["category_id"] == triangle_id and a["image_id"] in {g.image_id for g in gts}]  # fmt: skip
    assert dataset["annotations"] == expected
    stats = scoring.score(gts, dets, ["triangle"], "coco", source.category_ids, ann)
    if expected:  # perfect detections of the evaluated images
        assert stats["AP"] == pytest.approx(1.0)


def test_voc_summary_has_both_interpolations():
    """Two objects; detections ranked TP (0.9), FP (0.8), TP (0.7): precision 1 up
    to recall 1/2, then 2/3 at recall 1. VOC07 11-point: (6 * 1 + 5 * 2/3) / 11;
    all-point (area): 1/2 * 1 + 1/2 * 2/3."""
    gts = [voc.ImageGroundTruth(np.array([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]]),
                                np.array([1, 1]), np.array([False, False]))]  # fmt: skip
    dets = [voc.ImageDetections(np.array([[0.1, 0.1, 0.3, 0.3], [0.4, 0.0, 0.5, 0.1],
                                          [0.6, 0.6, 0.9, 0.9]]),
                                np.array([0.9, 0.8, 0.7]), np.array([1, 1, 1]))]  # fmt: skip
    result = scoring.score(gts, dets, ["a"], "voc")
    assert result["map"] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)
    assert result["map_area"] == pytest.approx(1 / 2 + 1 / 2 * 2 / 3, abs=1e-12)
    assert result["ap/a"] == result["map"]
    assert scoring.headline(result) == ("mAP", result["map"])
    with pytest.raises(ValueError, match="unknown metric"):
        scoring.score(gts, dets, ["a", "b"], "kitti")
