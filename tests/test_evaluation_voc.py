import os

import numpy as np
import pytest

from benchmarks.metrics import load_voc07_dump
from ssd_jax.evaluation import scoring, voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DUMP = os.path.join(ROOT, "..", "shared", "data", "voc07_test_ssd300", "detections.npz")


def slow_voc_ap(gt_images, det_images, num_classes, use_07, plus_one=0.0):
    """Independent loop implementation of the devkit's VOCevaldet."""

    def iou(a, b):
        iw = min(a[2], b[2]) - max(a[0], b[0]) + plus_one
        ih = min(a[3], b[3]) - max(a[1], b[1]) + plus_one
        if iw <= 0 or ih <= 0:
            return 0.0
        inter = iw * ih
        union = (
            (a[2] - a[0] + plus_one) * (a[3] - a[1] + plus_one)
            + (b[2] - b[0] + plus_one) * (b[3] - b[1] + plus_one)
            - inter
        )
        return inter / union

    aps = []
    for c in range(1, num_classes + 1):
        gts = {
            i: [(list(b), bool(d)) for b, l, d in zip(*g) if l == c]
            for i, g in enumerate(gt_images)
        }
        npos = sum(not d for objs in gts.values() for _, d in objs)
        dets = [
            (float(s), i, list(b))
            for i, (bs, ss, ls) in enumerate(det_images)
            for b, s, l in zip(bs, ss, ls)
            if l == c
        ]
        dets = sorted(dets, key=lambda x: -x[0])
        used = {i: [False] * len(objs) for i, objs in gts.items()}
        tp, fp = [], []
        for _, i, box in dets:
            best, best_j = -1.0, -1
            for j, (g, _) in enumerate(gts[i]):
                o = iou(box, g)
                if o > best:
                    best, best_j = o, j
            if best >= 0.5:
                if gts[i][best_j][1]:
                    continue
                if not used[i][best_j]:
                    used[i][best_j] = True
                    tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        if npos == 0:
            aps.append(float("nan"))
            continue
        ctp, cfp, rec, prec = 0, 0, [], []
        for t, f in zip(tp, fp):
            ctp, cfp = ctp + t, cfp + f
            rec.append(ctp / npos)
            prec.append(ctp / (ctp + cfp))
        if use_07:
            ap = (
                sum(
                    max([p for r, p in zip(rec, prec) if r >= t * 0.1], default=0.0)
                    for t in range(11)
                )
                / 11
            )
        else:  # area: at each recall step, the best precision at that recall or beyond
            ap, previous = 0.0, 0.0
            for k, r in enumerate(rec):
                if r > previous:
                    ap += (r - previous) * max(prec[k:])
                    previous = r
        aps.append(ap)
    return np.array(aps)


def test_hand_computed_cases():
    gt = [
        voc.ImageGroundTruth(
            np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]),
            np.array([1, 1]),
            np.array([False, False]),
        ),
        voc.ImageGroundTruth(np.array([[0, 0, 0.4, 0.4]]), np.array([1]), np.array([True])),
    ]
    det = [
        # correct (0.9), duplicate of the same object (0.8): FP, second object found (0.7)
        voc.ImageDetections(
            np.array([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]),
            np.array([0.9, 0.8, 0.7]),
            np.array([1, 1, 1]),
        ),
        # a hit on a difficult object: ignored, not a false positive
        voc.ImageDetections(np.array([[0, 0, 0.4, 0.4]]), np.array([0.95]), np.array([1])),
    ]
    # PR points: (0.5, 1), (0.5, 0.5), (1.0, 2/3): 11-point: 6 x 1 + 5 x 2/3
    result = voc.mean_average_precision(gt, det, num_classes=1, use_07_metric=True)
    np.testing.assert_allclose(result.ap, [(6 + 5 * 2 / 3) / 11])
    assert result.num_positives.tolist() == [2]
    area = voc.mean_average_precision(gt, det, num_classes=1, use_07_metric=False)
    np.testing.assert_allclose(area.ap, [0.5 * 1 + 0.5 * 2 / 3])
    # the curve evaluate draws: those PR points, the difficult hit left out
    recall, precision = result.curves[0]
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])


def test_iou_threshold_is_inclusive_and_classes_separate():
    gt = [voc.ImageGroundTruth(np.array([[0, 0, 0.5, 0.5]]), np.array([2]), np.array([False]))]
    half = voc.ImageDetections(
        np.array([[0, 0, 0.5, 0.25]]), np.array([0.9]), np.array([2])
    )  # IoU 0.5
    assert voc.mean_average_precision(gt, [half], num_classes=2).ap[1] == pytest.approx(1.0)
    wrong_class = voc.ImageDetections(np.array([[0, 0, 0.5, 0.5]]), np.array([0.9]), np.array([1]))
    result = voc.mean_average_precision(gt, [wrong_class], num_classes=2)
    assert result.ap[1] == 0.0 and np.isnan(result.ap[0]) and result.map == 0.0


def test_pixel_convention_when_sizes_are_known():
    # 10x10-pixel image: boxes (0,0)-(4,4) and (0,0)-(4,9) in pixels: devkit IoU 25/50 = 0.5
    gt = [
        voc.ImageGroundTruth(
            np.array([[0, 0, 0.4, 0.9]]), np.array([1]), np.array([False]), size=(10, 10)
        )
    ]
    det = [voc.ImageDetections(np.array([[0, 0, 0.4, 0.4]]), np.array([0.9]), np.array([1]))]
    assert voc.mean_average_precision(gt, det, num_classes=1).ap[0] == pytest.approx(
        1.0
    )  # normalized IoU 0.16/0.36 < 0.5 without sizes
    gt_unsized = [gt[0]._replace(size=None)]
    assert voc.mean_average_precision(gt_unsized, det, num_classes=1).ap[0] == 0.0


def random_case(rng, num_images, num_classes):
    gts, dets = [], []
    for _ in range(num_images):
        n = rng.integers(0, 4)
        tl = rng.uniform(0, 0.6, (n, 2))
        boxes = np.concatenate([tl, tl + rng.uniform(0.1, 0.4, (n, 2))], 1)
        gts.append(
            voc.ImageGroundTruth(
                boxes, rng.integers(1, num_classes + 1, n), rng.uniform(size=n) < 0.2
            )
        )
        k = rng.integers(0, 6)
        jitter = boxes[rng.integers(0, max(n, 1), k)] if n else rng.uniform(0, 0.5, (k, 4))
        det_boxes = np.sort(
            (jitter + rng.normal(0, 0.05, (k, 4))).reshape(k, 2, 2), axis=1
        ).reshape(k, 4)
        dets.append(
            voc.ImageDetections(det_boxes, rng.uniform(size=k), rng.integers(1, num_classes + 1, k))
        )
    return gts, dets


@pytest.mark.parametrize("use_07", [True, False])
def test_random_cases_equal_the_loop_reference(use_07):
    gts, dets = random_case(np.random.default_rng(0), 60, 3)
    result = voc.mean_average_precision(gts, dets, num_classes=3, use_07_metric=use_07)
    expected = slow_voc_ap(
        [(g.boxes, g.labels, g.difficult) for g in gts],
        [(d.boxes, d.scores, d.labels) for d in dets],
        3,
        use_07,
    )
    np.testing.assert_allclose(result.ap, expected, atol=1e-12)


def test_real_ssd300_detections_on_voc2007_test():
    """pytorch_SSD's SSD300 (VOC07 trainval) on all 4952 VOC2007 test images, scored
    with the VOC07 11-point metric in normalized coordinates, every object a positive
    (the dump has no difficult flags): mAP 0.6144 (the reference reported an
    inflated 0.7572). The independent loop implementation gives the same per-class APs."""
    if not os.path.exists(DUMP):
        if os.environ.get("CI"):
            pytest.fail(f"shared evaluation data missing: {DUMP}")
        pytest.skip("shared evaluation data not present")
    gts, dets = load_voc07_dump(DUMP)
    result = voc.mean_average_precision(gts, dets, num_classes=20)
    assert result.num_positives.sum() == 14976
    expected = slow_voc_ap(
        [(g.boxes, g.labels, g.difficult) for g in gts],
        [(d.boxes, d.scores, d.labels) for d in dets],
        20,
        True,
    )
    np.testing.assert_allclose(result.ap, expected, atol=1e-12)
    print("VOC07 11-point mAP:", result.map)
    assert result.map == pytest.approx(0.6144, abs=5e-5)


def test_perfect_network_outputs_score_a_perfect_map():
    """Targets from matching, fed back as network outputs, must decode, survive NMS
    and match their own ground truth: the box conventions of matching, encoding,
    postprocessing and the evaluator agree end to end."""
    import jax
    import jax.numpy as jnp

    from ssd_jax import default_boxes, matching, postprocess
    from ssd_jax.data import pipeline
    from ssd_jax.data.synthetic import SyntheticShapes

    source = SyntheticShapes(16, num_classes=4, image_size=(120, 160), max_objects=3, seed=11)
    batch = next(
        pipeline.make_iterator(
            pipeline.eval_dataset(source, image_size=300, batch_size=16, max_boxes=8)
        )
    )
    boxes = jnp.asarray(default_boxes.generate(default_boxes.preset("ssd300")))
    labels, deltas = matching.match_batch(batch["boxes"], batch["labels"], batch["mask"], boxes)
    logits = 20.0 * jax.nn.one_hot(labels, 5)  # certain of the matched class (or background)
    found = jax.device_get(postprocess.detect(deltas, logits, boxes))
    gts, dets = scoring.batch_records(batch, found)
    assert len(gts) == 16 and gts[0].size == (120, 160)
    result = voc.mean_average_precision(gts, dets, num_classes=4)
    # every object found once, nothing else: AP 1 for each class (one object lost
    # would leave recall 1 unreached: AP <= 10/11 with 11-point interpolation)
    np.testing.assert_allclose(result.ap, 1.0, rtol=1e-12)
