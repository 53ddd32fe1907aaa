"""SSD300 on ResNet against NVIDIA's SSD300 v1.1 (DeepLearningExamples), rebuilt
in PyTorch from its published definition (tests/nvidia_reference.py; Python 3.11
suite: torchvision's ResNets beside the CPU torch), through our ``nvidia_ssd``
importer: raw outputs, default boxes, parameter count, detections with the
settings that travel with the import, one training step's loss and gradients,
and torchvision's ImageNet ResNet as ``init.backbone``.

Named difference: NVIDIA's matching takes a default box as positive above IoU
0.5, ours from 0.5; the test data keeps every IoU away from 0.5."""

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
from ssd_jax.models.resnet import ResNet
from tests import nvidia_reference as nvidia
from tests.torch_helpers import (
    assert_gradients_match,
    in_float64,
    randomize_batch_norm,
    state_dict,
)
from tests.torchvision_stand_ins import torchvision

ORDER = nvidia.ours_from_theirs_order().numpy()  # our box order in NVIDIA's
# Both networks in float32: after ResNet-50's 70 convolutions the two libraries'
# sum orders leave probabilities 2e-5 apart (measured 1.8e-5)
SCORE_ATOL = 5e-5


def imported(theirs: nvidia.SSD300):
    """Our SSD (float32, eval mode) and its configuration from NVIDIA's state dict."""
    weights = {
        k: v.numpy() for k, v in theirs.nvidia_state_dict().items() if "num_batches" not in k
    }
    converted, info = detectors.import_detector("nvidia_ssd", weights)
    config = detectors.detector_config(info)
    ours = build.model(config.model, len(config.data.class_names), 0)
    detectors.assign_weights(ours, converted)
    ours.eval()
    return ours, config


def reference(depth: str) -> nvidia.SSD300:
    """NVIDIA's COCO model (81 logits) with random weights and fitted BatchNorm;
    the confidence heads scaled to logits of standard deviation 1 on noise
    images, spread enough for detections over NVIDIA's 0.05 yet without
    saturated (tied) probabilities."""
    torch.manual_seed(0)
    theirs = nvidia.SSD300(depth)
    noise = nvidia.network_input(np.random.default_rng(9).integers(0, 256, (4, 300, 300, 3)))
    randomize_batch_norm(theirs, lambda _: theirs(noise.float()))
    with torch.no_grad():
        _, conf = theirs(noise.float())
        for head in theirs.conf:
            head.weight.mul_(1 / conf.std())
            head.bias.mul_(1 / conf.std())
    return theirs


@pytest.fixture(scope="module")
def models():
    theirs = reference("resnet50")
    return (*imported(theirs), theirs)


def raw_outputs_agree(ours: SSD, theirs: nvidia.SSD300) -> None:
    images = np.random.default_rng(0).normal(size=(2, 300, 300, 3))
    with jax.enable_x64(True):
        ours64 = in_float64(ours)
        ours64.eval()
        loc, conf = (np.asarray(x) for x in ours64(jnp.asarray(images)))
    with torch.no_grad():
        want_loc, want_conf = copy.deepcopy(theirs).double()(
            torch.from_numpy(images.transpose(0, 3, 1, 2))
        )
    for got, want in ((loc, want_loc), (conf, want_conf)):
        want = want.numpy().transpose(0, 2, 1)[:, ORDER]  # (N, A, values), our order
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-7 * np.abs(want).max())


def test_the_network_gives_nvidias_raw_outputs(models):
    """Same weights, same images, both networks in float64: loc and conf agree
    to the one float32 rounding of our outputs (1e-7 of their scale; see
    tests/test_ssdlite.py)."""
    ours, _, theirs = models
    raw_outputs_agree(ours, theirs)


def test_resnet18_basic_blocks_and_narrow_extras_import_too():
    theirs = reference("resnet18")
    ours, config = imported(theirs)
    assert config.model.backbone == "resnet18"
    raw_outputs_agree(ours, theirs)


def test_the_import_carries_nvidias_settings(models):
    _, config, _ = models
    assert config.model.backbone == "resnet50"
    assert (config.model.architecture, config.model.default_boxes) == ("ssd300", "ssd300_nvidia")
    assert config.data.class_names[:3] == ("person", "bicycle", "car")
    assert len(config.data.class_names) == 80 and config.data.class_names[-1] == "toothbrush"
    assert config.loss.normalization == "image"
    detection = config.detection
    assert (detection.score_threshold, detection.nms_iou_threshold) == (0.05, 0.45)
    assert (detection.top_k_per_class, detection.max_detections) == (200, 200)
    assert not detection.clip_before_nms
    np.testing.assert_allclose(config.data.mean, [255 * m for m in (0.485, 0.456, 0.406)])
    np.testing.assert_allclose(config.data.std, [255 * s for s in (0.229, 0.224, 0.225)])


def test_the_default_boxes_and_parameter_count_are_nvidias(models):
    ours, _, theirs = models
    want = nvidia.default_boxes_xywh().numpy()[ORDER]
    got = default_boxes.generate(default_boxes.preset("ssd300_nvidia"))
    np.testing.assert_allclose(got, want, atol=1e-7)  # float32 of the same values
    params = sum(x.size for x in traverse_util.flatten_dict(
        nnx.to_pure_dict(nnx.state(ours, nnx.Param))).values())  # fmt: skip
    assert params == sum(p.numel() for p in theirs.parameters())


def test_a_converted_checkpoint_finds_nvidias_detections(models, tmp_path):
    """NVIDIA's inference (ImageNet normalization, network, decoding, per class
    the 200 best over 0.05, NMS at 0.45, best 200 overall) against ``convert`` ->
    ``load_detector`` on the same uint8 300x300 images, from a torch.hub-style
    checkpoint (``{"model": state_dict}`` with DataParallel's ``module.``
    prefixes). Each of NVIDIA's detections is one of ours: same class, score to
    :data:`SCORE_ATOL`, box to 1e-4 of the image (ours are clipped to it;
    NVIDIA's are not), save the last places, which scores within rounding of the
    200th may take either way. (Order among scores within rounding is not
    compared.)"""
    _, _, theirs = models
    path = tmp_path / "nvidia_ssdpyt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in theirs.nvidia_state_dict().items()}}, path)
    detectors.convert_detector("nvidia_ssd", str(path), str(tmp_path / "run"))
    detector = load_detector(str(tmp_path / "run"))
    images = np.random.default_rng(1).integers(0, 256, (2, 300, 300, 3), dtype=np.uint8)
    inputs = nvidia.network_input(images).float()
    with torch.no_grad():
        loc, conf = theirs(inputs)
    found = detector.detect_resized(images)
    dboxes = nvidia.default_boxes_xywh().float()
    for b in range(len(images)):
        boxes, labels, scores = (x.numpy() for x in nvidia.decode(loc[b], conf[b], dboxes))
        assert len(scores) == int(found.num_detections[b]) == 200
        # the last places may go either way between scores within rounding
        clear = scores > scores[-1] + 2 * SCORE_ATOL
        assert clear.sum() > 150
        ours = [np.asarray(x[b]) for x in (found.boxes_xyxy, found.classes, found.scores)]
        unmatched = np.ones(200, bool)
        for box, label, score in zip(np.clip(boxes[clear], 0, 1), labels[clear], scores[clear]):
            same = (unmatched & (ours[1] == label) & (np.abs(ours[2] - score) <= SCORE_ATOL)
                    & (np.abs(ours[0] - box).max(axis=1) <= 1e-4))  # fmt: skip
            assert same.any(), (box, label, score)
            unmatched[np.flatnonzero(same)[0]] = False


def training_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two noise images (uint8 300x300) and their objects (normalized xyxy,
    labels 1..80), one image with a single object: NVIDIA's per-image
    normalization weighs it as much as the other."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 300, 300, 3), dtype=np.uint8)
    boxes = np.array([[[0.11, 0.12, 0.33, 0.31], [0.3, 0.2, 0.7, 0.6], [0.02, 0.03, 0.97, 0.95]],
                      [[0.5, 0.5, 0.67, 0.69], [0, 0, 0, 0], [0, 0, 0, 0]]])  # fmt: skip
    labels = np.array([[1, 18, 3], [44, 0, 0]])
    return images, boxes, labels


def test_one_training_step_gives_nvidias_loss_and_gradients(models):
    """NVIDIA's encoder and loss (per-image normalization) against our matching
    and loss with the imported ``loss.normalization``, from the same weights and
    batch, both networks in float64 with BatchNorm on batch statistics: the loss
    to 1e-6 of itself, each gradient to 1e-4 of its largest entry (our loss is
    float32 by design; see tests/test_ssdlite.py)."""
    ours, config, theirs = models
    images, boxes, labels = training_batch()
    mask = labels > 0
    settings = build.step_settings(config)
    inputs = np.asarray(settings.network_input(jnp.asarray(images)), np.float64)

    dboxes = nvidia.default_boxes_xywh()
    overlaps = nvidia.iou(torch.from_numpy(boxes[mask]), nvidia.xywh_to_ltrb(dboxes))
    assert not ((overlaps - 0.5).abs() < 1e-6).any()  # no IoU at the threshold
    targets = [nvidia.encode(torch.from_numpy(b[m]), torch.from_numpy(k[m]), dboxes)
               for b, k, m in zip(boxes, labels, mask)]  # fmt: skip
    gloc = torch.stack([t[0] for t in targets]).transpose(1, 2)
    glabel = torch.stack([t[1] for t in targets])
    theirs64 = copy.deepcopy(theirs).double().train()
    ploc, plabel = theirs64(torch.from_numpy(inputs.transpose(0, 3, 1, 2)))
    loss = nvidia.loss(ploc, plabel, gloc, glabel, dboxes)
    loss.backward()
    their_grads = {k.replace("trunk.", "feature_extractor.feature_extractor.", 1): p.grad.numpy()
                   for k, p in theirs64.named_parameters()}  # fmt: skip
    their_grads |= {k: v.numpy() for k, v in theirs.nvidia_state_dict().items() if "running" in k}
    their_grads, _ = detectors.import_detector("nvidia_ssd", their_grads)

    with jax.enable_x64(True):
        model = in_float64(ours)
        model.train()

        def loss_fn(model):
            loc, conf = model(jnp.asarray(inputs))
            target_labels, deltas = matching.match_batch(
                jnp.asarray(boxes, jnp.float32), jnp.asarray(labels), jnp.asarray(mask),
                jnp.asarray(settings.default_boxes_cxcywh, jnp.float32),
            )  # fmt: skip
            return losses.multibox_loss(loc, conf, target_labels, deltas,
                                        normalization=settings.loss_normalization)[0]  # fmt: skip

        our_loss, grads = nnx.value_and_grad(loss_fn)(model)
        grads = traverse_util.flatten_dict(nnx.to_pure_dict(grads))
    np.testing.assert_allclose(float(our_loss), loss.item(), rtol=1e-6)
    assert_gradients_match(grads, their_grads, len(list(theirs.parameters())))


def test_imagenet_resnet50_feeds_the_trunk(tmp_path):
    """torchvision's ImageNet ResNet-50 (random weights) -> the backbone converter
    -> ``init.backbone``: the 38x38 map is that of NVIDIA's cut of it."""
    torch.manual_seed(1)
    classifier = randomize_batch_norm(torchvision.models.resnet50(weights=None), size=300)
    converted, info = backbone.trunk_weights(state_dict(classifier))
    assert (info["backbone"], info["source"]) == ("resnet50", "torchvision resnet50")
    path = tmp_path / "resnet50.npz"
    np.savez(path, **converted, **backbone.record_arrays(info))
    images = np.random.default_rng(2).normal(size=(1, 300, 300, 3))
    with jax.enable_x64(True):
        model = SSD("ssd300", 3, backbone="resnet50", dtype=jnp.float64,
                    param_dtype=jnp.float64, rngs=nnx.Rngs(0))  # fmt: skip
        variables.load_backbone(model, str(path))
        model.eval()
        (got,) = (np.asarray(x) for x in model.trunk(jnp.asarray(images)))
    assert isinstance(model.trunk, ResNet)
    for wrong, message in (
        ({"backbone": "resnet18"}, r"holds resnet50 weights, the model is a resnet18: set "
                                   r"--config.model.backbone=resnet50"),
        ({"width": 0.5}, r"full-width weights, the model has width 0.5: set "
                         r"--config.model.width=1.0"),
    ):  # fmt: skip
        other = SSD("ssd300", 3, **({"backbone": "resnet50"} | wrong), rngs=nnx.Rngs(0))
        with pytest.raises(variables.CheckpointError, match=message):
            variables.load_backbone(other, str(path))
    trunk = nvidia.resnet_trunk(classifier.double())
    with torch.no_grad():
        want = trunk(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    assert got.shape == want.shape == (1, 38, 38, 1024)
    np.testing.assert_allclose(got, want, atol=1e-9 * np.abs(want).max())


def test_a_file_given_to_the_wrong_importer_names_the_right_one(models):
    _, _, theirs = models
    weights = {k: v.numpy() for k, v in theirs.nvidia_state_dict().items()}
    with pytest.raises(ConversionError, match="NVIDIA's SSD300 v1.1, not a torchvision detector: "
                                              "use --from nvidia_ssd"):  # fmt: skip
        detectors.import_detector("torchvision", weights)
    fewer = {k: v for k, v in weights.items() if ".feature_extractor.6.5." not in k}
    with pytest.raises(ConversionError, match=r"no torchvision ResNet has bottleneck blocks "
                                              r"\[3, 4, 5\] in stages 1-3"):  # fmt: skip
        detectors.import_detector("nvidia_ssd", fewer)
    with pytest.raises(ConversionError, match="a trained detector, not ImageNet weights: "
                                              "python -m ssd_jax.convert --from nvidia_ssd"):  # fmt: skip
        backbone.trunk_weights(weights)
    classifier = state_dict(torchvision.models.resnet18(weights=None))
    with pytest.raises(ConversionError, match="convert them with convert_torch_backbone.py"):
        detectors.import_detector("nvidia_ssd", classifier)
