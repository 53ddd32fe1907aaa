import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import default_boxes, postprocess
from tests import numpy_reference as ref

SMALL_SPEC = default_boxes.DefaultBoxSpec(
    image_size=64,
    feature_map_sizes=(4, 2, 1),
    min_sizes=(12.0, 24.0, 40.0),
    max_sizes=(24.0, 40.0, 60.0),
    aspect_ratios=((2.0,), (2.0, 3.0), (2.0,)),
    steps=(16.0, 32.0, 64.0),
)


def assert_same_detections(got, want, image):
    n = len(want)
    assert int(got.num_detections[image]) == n
    assert np.asarray(got.valid[image, :n]).all() and not np.asarray(got.valid[image, n:]).any()
    np.testing.assert_allclose(got.scores[image, :n], [r[0] for r in want], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got.classes[image, :n], [r[1] for r in want])
    want_boxes = np.clip([r[2] for r in want], 0, 1).reshape(-1, 4)
    np.testing.assert_allclose(got.boxes_xyxy[image, :n], want_boxes, atol=1e-5)
    assert not np.asarray(got.scores[image, n:]).any()
    assert not np.asarray(got.classes[image, n:]).any()


@pytest.mark.parametrize("nms_method", ["loop", "fixed_point"])
@pytest.mark.parametrize(
    ("score_threshold", "top_k", "max_detections"),
    [(0.01, 20, 30), (0.3, 5, 100), (0.01, 100, 7)],
)
def test_detect_equals_loop_reference(score_threshold, top_k, max_detections, nms_method):
    rng = np.random.default_rng(0)
    defaults = default_boxes.generate(SMALL_SPEC)
    num_boxes = len(defaults)
    loc = rng.normal(0, 1.0, (3, num_boxes, 4)).astype(np.float32)
    conf = rng.normal(0, 2.0, (3, num_boxes, 4)).astype(np.float32)
    conf[2, :, 0] += 8  # an image where background dominates: few detections
    got = postprocess.detect(
        loc,
        conf,
        defaults,
        score_threshold,
        0.45,
        top_k_per_class=top_k,
        max_detections=max_detections,
        nms_method=nms_method,
    )
    assert got.boxes_xyxy.shape == (3, max_detections, 4)
    assert got.scores.shape == got.classes.shape == got.valid.shape == (3, max_detections)
    want = ref.detect(loc, conf, defaults, score_threshold, 0.45, top_k, max_detections)
    for image in range(3):
        assert_same_detections(got, want[image], image)


def test_detect_equals_loop_reference_ssd300_dense():
    rng = np.random.default_rng(1)
    defaults = default_boxes.generate(default_boxes.preset("ssd300"))
    loc = rng.normal(0, 0.5, (1, 8732, 4)).astype(np.float32)
    conf = rng.normal(0, 1.0, (1, 8732, 21)).astype(np.float32)
    got = postprocess.detect(loc, conf, defaults)
    want = ref.detect(loc, conf, defaults, 0.01, 0.45, 200, 200)
    assert len(want[0]) == 200  # dense: the overall cap binds
    assert_same_detections(got, want[0], 0)


def _kept_by_reference(boxes, candidate, iou_threshold):
    order = [i for i in range(len(boxes)) if candidate[i]]
    kept = ref.nms([boxes[i] for i in order], None, iou_threshold)
    mask = np.zeros(len(boxes), bool)
    mask[[order[k] for k in kept]] = True
    return mask


@pytest.mark.parametrize("method", ["loop", "fixed_point", "auto"])
def test_greedy_nms_methods_equal_reference(method):
    rng = np.random.default_rng(3)
    for trial in range(20):
        # clusters of jittered boxes, so suppression chains form
        centres = rng.uniform(0.2, 0.8, (4, 2))[rng.integers(0, 4, 60)]
        centres += rng.normal(0, 0.03, centres.shape)
        sizes = rng.uniform(0.1, 0.3, (60, 2))
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1).astype(np.float32)
        candidate = rng.uniform(size=60) < 0.8
        threshold = [0.3, 0.45, 0.7][trial % 3]
        got = postprocess.greedy_nms(boxes, candidate, threshold, method)
        want = _kept_by_reference(boxes, candidate, threshold)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")


@pytest.mark.parametrize("method", ["loop", "fixed_point"])
def test_greedy_nms_worst_case_chain(method):
    # Box i overlaps only its neighbours (IoU 0.6), so whether box i is kept depends
    # on every earlier box: greedy keeps 0, 2, 4, ...; the fixed-point method needs
    # N passes here, its worst case.
    n = 50
    left = np.arange(n, dtype=np.float32) * 0.25
    boxes = np.stack([left, np.zeros(n), left + 1.0, np.ones(n)], 1) / (n * 0.25 + 1)
    got = postprocess.greedy_nms(boxes.astype(np.float32), np.ones(n, bool), 0.5, method)
    np.testing.assert_array_equal(got, np.arange(n) % 2 == 0)


def test_unknown_nms_method_is_an_error():
    with pytest.raises(ValueError, match="fixed_point"):
        postprocess.greedy_nms(np.zeros((2, 4), np.float32), np.ones(2, bool), 0.5, "fast")


def test_nms_threshold_is_exclusive_and_boxes_are_clipped():
    # zero offsets decode to the default boxes themselves
    boxes = np.array(
        [[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.25], [0, 0, 0.5, 0.375], [0.5, 0.5, 1.25, 1.0]], np.float32
    )
    defaults = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    # class 1 scores ordered box 0 > 2 > 1 > 3; IoU(0,1) = 0.5 exactly, IoU(0,2) = 0.75
    logits = np.log(np.array([[0.1, 0.9], [0.3, 0.7], [0.2, 0.8], [0.4, 0.6]], np.float32))
    got = postprocess.detect(
        np.zeros((1, 4, 4)), logits[None], defaults, 0.01, 0.5, top_k_per_class=4, max_detections=5
    )
    np.testing.assert_allclose(got.scores[0], [0.9, 0.7, 0.6, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(got.classes[0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(got.num_detections, [3])
    np.testing.assert_allclose(got.boxes_xyxy[0, :3], [boxes[0], boxes[1], [0.5, 0.5, 1.0, 1.0]])


def test_score_threshold_and_top_k_per_class():
    defaults = np.array(
        [[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]], np.float32
    )
    probs = np.array([[0.5, 0.5, 0.0], [0.21, 0.29, 0.5], [0.6, 0.29, 0.11]], np.float32)
    logits = np.log(np.maximum(probs, 1e-9))[None]
    got = postprocess.detect(
        np.zeros((1, 3, 4)), logits, defaults, 0.3, 0.45, top_k_per_class=3, max_detections=4
    )
    # > 0.3 only: class 1 box 0 (0.5) and class 2 box 1 (0.5); the 0.29s are dropped
    np.testing.assert_allclose(got.scores[0], [0.5, 0.5, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(got.classes[0], [1, 2, 0, 0])
    # only the best candidate per class enters NMS
    got = postprocess.detect(
        np.zeros((1, 3, 4)), logits, defaults, 0.01, 0.45, top_k_per_class=1, max_detections=4
    )
    np.testing.assert_allclose(got.scores[0], [0.5, 0.5, 0, 0], atol=1e-6)


def test_outputs_are_float32_for_bfloat16_network_outputs():
    defaults = default_boxes.generate(SMALL_SPEC)
    rng = np.random.default_rng(2)
    loc = jnp.asarray(rng.normal(size=(2, len(defaults), 4)), jnp.bfloat16)
    conf = jnp.asarray(rng.normal(size=(2, len(defaults), 3)), jnp.bfloat16)
    got = postprocess.detect(loc, conf, defaults, top_k_per_class=10, max_detections=10)
    assert got.boxes_xyxy.dtype == got.scores.dtype == jnp.float32
    assert got.classes.dtype == jnp.int32 and got.num_detections.shape == (2,)
    assert float(got.boxes_xyxy.min()) >= 0 and float(got.boxes_xyxy.max()) <= 1


@pytest.mark.parametrize(("clip_before_nms", "kept"), [(False, 2), (True, 1)])
def test_clipping_before_nms_makes_boxes_past_the_border_suppress_each_other(clip_before_nms, kept):
    """Decoded boxes (-0.6, 0, 0.4, 0.4) and (0, 0, 0.4, 0.4) of one class: IoU
    0.16 / 0.4 = 0.4 as decoded (both kept at 0.45), 1 once clipped to the image
    (torchvision: the second is suppressed)."""
    boxes_cxcywh = jnp.array([[-0.1, 0.2, 1.0, 0.4], [0.2, 0.2, 0.4, 0.4]])
    loc = jnp.zeros((1, 2, 4))  # zero offsets decode to the default boxes
    conf = jnp.array([[[0.0, 5.0], [0.0, 4.0]]])
    found = postprocess.detect(loc, conf, boxes_cxcywh, nms_iou_threshold=0.45,
                               clip_before_nms=clip_before_nms)  # fmt: skip
    assert int(found.num_detections[0]) == kept
    np.testing.assert_allclose(np.asarray(found.boxes_xyxy[0, 0]), [0.0, 0.0, 0.4, 0.4], atol=1e-6)
