"""SSDlite320 on MobileNetV3-Large against torchvision's own
``ssdlite320_mobilenet_v3_large`` and ``mobilenet_v3_large`` (Python 3.11 suite:
torchvision 0.28 beside the CPU torch, with NMS in plain torch:
tests/torchvision_stand_ins.py), through our importers: the network's raw
outputs, the detections with the settings that travel with the import, the
default boxes, the parameter count, and the ImageNet trunk as ``init.backbone``.

Named difference: torchvision's box decoding caps the predicted log-scale
offsets at log(1000 / 16) (a guard against overflow); ours does not. Random
weights never reach it here (offsets below 1)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx, traverse_util

from ssd_jax import build, default_boxes, losses, matching
from ssd_jax.checkpoint import variables
from ssd_jax.importers import backbone, detectors
from ssd_jax.importers.common import ConversionError
from ssd_jax.inference import load_detector
from ssd_jax.models import SSD
from ssd_jax.models.mobilenet_v3 import MobileNetV3Large
from tests.torch_helpers import (
    assert_gradients_match,
    in_float64,
    randomize_batch_norm,
    state_dict,
)
from tests.torchvision_stand_ins import torchvision

ImageList = torchvision.models.detection.image_list.ImageList


@pytest.fixture(scope="module")
def models():
    """torchvision's COCO SSDlite (91 logits, reduced tail as for its release)
    with random weights, and ours from it through the importer."""
    torch.manual_seed(0)
    theirs = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=91
    )
    randomize_batch_norm(theirs, lambda x: theirs.head(list(theirs.backbone(x).values())))
    converted, info = detectors.import_detector("torchvision_ssdlite", state_dict(theirs))
    config = detectors.detector_config(info)
    ours = build.model(config.model, len(config.data.class_names), 0)
    detectors.assign_weights(ours, converted)
    ours.eval()
    return ours, theirs, config


def test_the_network_gives_torchvisions_raw_outputs(models):
    """Same weights, same images, both networks in float64: loc and conf logits
    agree to the one float32 rounding of our outputs (2^-24 of a value; the
    bound is 1e-7 of the outputs' scale). In float32 the two convolution
    libraries' sum orders differ by ~1e-5 of the scale after 60 BatchNorm
    layers, as wide as a small real error."""
    ours, theirs, _ = models
    images = np.random.default_rng(0).normal(size=(2, 320, 320, 3))
    with jax.enable_x64(True):
        ours64 = in_float64(ours)
        ours64.eval()
        loc, conf = ours64(jnp.asarray(images))  # float32 outputs of a float64 network
        loc, conf = np.asarray(loc), np.asarray(conf)
    theirs64 = copy.deepcopy(theirs).double()
    with torch.no_grad():
        features = theirs64.backbone(torch.from_numpy(images.transpose(0, 3, 1, 2)))
        expected = theirs64.head(list(features.values()))
    for got, want in ((loc, expected["bbox_regression"]), (conf, expected["cls_logits"])):
        want = want.numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-7 * np.abs(want).max())


def test_the_import_carries_torchvisions_settings(models):
    _, theirs, config = models
    assert config.model.backbone == "mobilenet_v3_large_reduced_tail"
    assert config.model.architecture == config.model.default_boxes == "ssdlite320"
    detection = config.detection
    assert detection.score_threshold == theirs.score_thresh
    assert detection.nms_iou_threshold == theirs.nms_thresh
    assert detection.top_k_per_class == theirs.topk_candidates
    assert detection.max_detections == theirs.detections_per_img
    assert detection.clip_before_nms
    # (x / 255 - image_mean) / image_std, in 0-255 terms
    mean = [255 * m for m in theirs.transform.image_mean]
    std = [255 * s for s in theirs.transform.image_std]
    assert list(config.data.mean) == mean and list(config.data.std) == std
    assert config.data.class_names[:3] == ("person", "bicycle", "car")
    assert len(config.data.class_names) == 90 and config.data.class_names[11] == "unused_12"


def test_a_converted_checkpoint_finds_torchvisions_detections(models, tmp_path):
    """torchvision's full inference (normalization, network, decoding, clipping,
    per-class top 300 over score 0.001, NMS at 0.55, best 300) against
    ``convert`` -> ``load_detector`` on the same uint8 images at the model's
    320x320 size (torchvision's resize is then the identity).

    Scores agree to float32 rounding (1e-5), boxes to 1e-3 px. Random weights give
    ~27,000 candidates with close scores; rounding can only swap neighbours whose
    scores differ by less than 1e-5, so the comparison runs down to the first gap
    of 1e-4 after the 100th detection."""
    _, theirs, _ = models
    path = tmp_path / "ssdlite.pth"
    torch.save(theirs.state_dict(), path)
    detectors.convert_detector("torchvision_ssdlite", str(path), str(tmp_path / "run"))
    detector = load_detector(str(tmp_path / "run"))
    images = np.random.default_rng(1).integers(0, 256, (2, 320, 320, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = theirs([torch.from_numpy(i.transpose(2, 0, 1)).float() / 255 for i in images])
    found = detector.detect_resized(images)
    for b, want in enumerate(expected):
        scores = want["scores"].numpy()
        assert int(found.num_detections[b]) == len(scores) == 300
        gaps = np.flatnonzero(scores[100:-1] - scores[101:] > 1e-4)
        n = 101 + gaps[0]
        np.testing.assert_allclose(np.asarray(found.scores[b, :n]), scores[:n], atol=1e-5)
        np.testing.assert_array_equal(np.asarray(found.classes[b, :n]), want["labels"][:n])
        np.testing.assert_allclose(np.asarray(found.boxes_xyxy[b, :n]) * 320,
                                   want["boxes"][:n].numpy(), atol=1e-3)  # fmt: skip


def test_the_default_boxes_and_parameter_count_are_torchvisions(models):
    ours, theirs, _ = models
    feature_maps = [torch.zeros(1, 1, s, s) for s in (20, 10, 5, 3, 2, 1)]
    with torch.no_grad():
        (boxes,) = theirs.anchor_generator(ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)]),
                                           feature_maps)  # fmt: skip
    cxcywh = default_boxes.generate(default_boxes.preset("ssdlite320"))
    xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
    np.testing.assert_allclose(xyxy * 320, boxes.numpy(), atol=1e-4)  # pixels, float32
    params = sum(x.size for x in traverse_util.flatten_dict(
        nnx.to_pure_dict(nnx.state(ours, nnx.Param))).values())  # fmt: skip
    assert params == sum(p.numel() for p in theirs.parameters()) == 3_440_060


def test_imagenet_mobilenet_v3_large_feeds_the_full_tail_trunk(tmp_path):
    """torchvision's ImageNet classifier (random weights) -> the backbone
    converter -> ``init.backbone`` of ``mobilenet_v3_large``: the two maps SSDlite
    reads (the C4 block's expansion, the last conv) are torchvision's."""
    torch.manual_seed(1)
    theirs = randomize_batch_norm(torchvision.models.mobilenet_v3_large(weights=None))
    converted, info = backbone.trunk_weights(state_dict(theirs))
    assert info["backbone"] == "mobilenet_v3_large" and info["source"].endswith("v3_large")
    path = tmp_path / "mobilenet.npz"
    np.savez(path, **converted, **backbone.record_arrays(info))
    images = np.random.default_rng(2).normal(size=(1, 320, 320, 3))
    with jax.enable_x64(True):  # both in float64: see the raw-output test
        model = SSD("ssdlite320", 3, backbone=info["backbone"], dtype=jnp.float64,
                    param_dtype=jnp.float64, rngs=nnx.Rngs(0))  # fmt: skip
        variables.load_backbone(model, str(path))
        model.eval()
        c4, ours_last = (np.asarray(x) for x in model.trunk(jnp.asarray(images)))
    assert isinstance(model.trunk, MobileNetV3Large)
    theirs = theirs.double()
    tapped = {}
    expansion = theirs.features[MobileNetV3Large.C4 + 1].block[0]
    expansion.register_forward_hook(lambda module, args, out: tapped.setdefault("c4", out))
    with torch.no_grad():
        last = theirs.features(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    for got, want in ((c4, tapped["c4"]), (ours_last, last)):
        want = want.numpy().transpose(0, 2, 3, 1)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-9 * np.abs(want).max())


def training_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two noise images (uint8 320x320) and their objects (normalized xyxy,
    labels 1..90), from a fifth to the whole image. No object fits inside its
    best default boxes (their IoUs would tie and rounding pick the match), and
    no default box has an IoU within 1e-3 of the 0.5 threshold."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 320, 320, 3), dtype=np.uint8)
    boxes = np.array([[[0.11, 0.12, 0.33, 0.31], [0.3, 0.2, 0.7, 0.6], [0.02, 0.03, 0.97, 0.95]],
                      [[0.5, 0.5, 0.67, 0.69], [0.05, 0.4, 0.35, 0.9], [0.2, 0.1, 0.9, 0.75]]])  # fmt: skip
    labels = np.array([[1, 18, 3], [44, 1, 90]])
    return images, boxes, labels


def test_one_training_step_gives_torchvisions_loss_and_gradients(models):
    """torchvision's training forward (its SSDMatcher, box coder weights (10, 10,
    5, 5), smooth L1, hard negatives 3:1, both sums over the batch's positives)
    against our train step's loss, from the same weights and batch, both
    networks in float64 and BatchNorm on batch statistics. Our loss is computed
    in float32 by design, so loss and gradients agree to float32 rounding: the
    loss to 1e-6 of itself; each gradient to 1e-4 of its largest entry, as in
    tests/test_reference_training.py (the float32 logit gradients, ~1e-7 each,
    pass BatchNorm backward passes whose batch statistics cancel: the 1x1 map's
    have two samples; measured 1.5e-5)."""
    ours, theirs, config = models
    images, boxes, labels = training_batch()

    theirs64 = copy.deepcopy(theirs).double().train()
    inputs = [torch.from_numpy(i.transpose(2, 0, 1)).double() / 255 for i in images]
    targets = [{"boxes": torch.from_numpy(b * 320), "labels": torch.from_numpy(k)}
               for b, k in zip(boxes, labels, strict=True)]  # fmt: skip
    parts = theirs64(inputs, targets)
    loss = parts["bbox_regression"] + parts["classification"]
    loss.backward()
    their_grads = {k: p.grad.numpy() for k, p in theirs64.named_parameters()}
    their_grads |= {k: v for k, v in state_dict(theirs).items() if "running" in k}
    their_grads, _ = detectors.import_detector("torchvision_ssdlite", their_grads)

    settings = build.step_settings(config)
    with jax.enable_x64(True):
        model = in_float64(ours)
        model.train()

        def loss_fn(model):
            loc, conf = model(settings.network_input(jnp.asarray(images)).astype(jnp.float64))
            target_labels, deltas = matching.match_batch(
                jnp.asarray(boxes, jnp.float32), jnp.asarray(labels), jnp.ones(labels.shape, bool),
                jnp.asarray(settings.default_boxes_cxcywh, jnp.float32),
            )  # fmt: skip
            return losses.multibox_loss(loc, conf, target_labels, deltas)[0]

        our_loss, grads = nnx.value_and_grad(loss_fn)(model)
        grads = traverse_util.flatten_dict(nnx.to_pure_dict(grads))
    np.testing.assert_allclose(float(our_loss), loss.item(), rtol=1e-6)
    assert_gradients_match(grads, their_grads, len(list(theirs.parameters())))


def test_a_file_given_to_the_wrong_importer_names_the_right_one(models):
    _, theirs, _ = models
    with pytest.raises(ConversionError, match="use --from torchvision_ssdlite"):
        detectors.import_detector("torchvision", state_dict(theirs))
    classifier = state_dict(torchvision.models.mobilenet_v3_large(weights=None))
    with pytest.raises(ConversionError, match="convert it with convert_torch_backbone.py"):
        detectors.import_detector("torchvision_ssdlite", classifier)
