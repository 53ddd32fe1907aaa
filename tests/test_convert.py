"""Imported weights reproduce the PyTorch networks they come from.

Each PyTorch architecture is rebuilt in plain torch (tests/torch_reference.py)
with random weights; its state dict goes through the converter, and the ssd_jax
model must give the same raw head outputs (max abs diff <= 1e-4, float32) and
the same detections on the same image. Narrow models (width 1/8) keep these fast;
the full-size path and each importer's command line are covered by the tests at
the end.
"""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch  # a test dependency (the dev extra): these tests fail, never skip, without it
from flax import nnx

from ssd_jax import checkpoint, default_boxes, postprocess
from ssd_jax.importers import backbone, common, detectors
from ssd_jax.inference import load_detector
from ssd_jax.models import SSD
from ssd_jax.steps import normalize_images
from tests import torch_reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 1 / 8


def numpy_state_dict(module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def random_image(size: int, seed: int = 0) -> np.ndarray:
    """uint8 (1, S, S, 3) RGB with structure (smooth blobs plus noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (1, 6, 6, 3))
    image = np.kron(coarse, np.ones((1, size // 6 + 1, size // 6 + 1, 1)))[:, :size, :size]
    return np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)


def ours_outputs(converted, info, image, width=WIDTH):
    model = SSD(
        info["architecture"], info["num_classes"],
        boxes_per_location=default_boxes.preset(info["default_boxes"]).boxes_per_location,
        batch_norm=info["batch_norm"], width=width, rngs=nnx.Rngs(0),
    )  # fmt: skip
    detectors.assign_weights(model, converted)
    model.eval()
    x = normalize_images(jnp.asarray(image), info["mean"], info["std"], jnp.float32)
    loc, conf = model(x)
    return np.asarray(loc), np.asarray(conf)


def torch_input(image: np.ndarray, style: str) -> "torch.Tensor":
    x = image.astype(np.float32)
    if style == "imagenet":  # pytorch_SSD: RGB / 255, ImageNet mean/std
        x = (x / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    elif style == "caffe_bgr":  # ssd.pytorch: BGR minus (104, 117, 123)
        x = x[..., ::-1] - np.array([104.0, 117.0, 123.0])
    elif style == "torchvision":  # (x / 255 - mean) / (1 / 255), RGB
        x = (x / 255 - np.array([0.48235, 0.45882, 0.40784])) / (1 / 255)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32))


def assert_same_network(torch_model, converted, info, image, style, background_last=False):
    torch_model.eval()
    with torch.no_grad():
        loc_ref, conf_ref = (t.numpy() for t in torch_model(torch_input(image, style)))
    if background_last:
        conf_ref = np.roll(conf_ref, 1, axis=-1)
    loc, conf = ours_outputs(converted, info, image)
    assert loc.shape == loc_ref.shape and conf.shape == conf_ref.shape
    assert np.abs(loc_ref).max() > 1e-2 and np.abs(conf_ref).std() > 1e-2  # not all zeros
    np.testing.assert_allclose(loc, loc_ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(conf, conf_ref, atol=1e-4, rtol=0)
    # The same detections (our post-processing on both outputs).
    boxes = jnp.asarray(default_boxes.generate(default_boxes.preset(info["default_boxes"])))
    ours = postprocess.detect(jnp.asarray(loc), jnp.asarray(conf), boxes)
    theirs = postprocess.detect(jnp.asarray(loc_ref), jnp.asarray(conf_ref), boxes)
    assert_same_detections(ours, theirs, atol=1e-5)


def assert_same_detections(ours, theirs, atol):
    """Same number, and each detection has a twin (class, box, score); the order of
    near-tied scores may differ."""
    n = int(theirs.num_detections[0])
    assert int(ours.num_detections[0]) == n > 0
    rows = [np.c_[d.classes[0, :n], d.boxes_xyxy[0, :n], d.scores[0, :n]] for d in (ours, theirs)]
    unmatched = list(range(n))
    for row in rows[0]:
        twins = [j for j in unmatched if np.abs(rows[1][j] - row).max() <= atol]
        assert twins, f"detection {row} has no twin"
        unmatched.remove(twins[0])


def randomized(model):
    ref.randomize_batch_norm(model)
    with torch.no_grad():  # larger heads than PyTorch's default init: outputs well above 1e-4
        for name, p in model.named_parameters():
            if "loc" in name or "conf" in name or "head" in name:
                p.mul_(4.0)
    return model


@pytest.mark.parametrize(
    ("architecture", "batch_norm"), [("ssd300", False), ("ssd300", True), ("ssd512", False)]
)
def test_pytorch_ssd_import_reproduces_the_network(architecture, batch_norm):
    torch.manual_seed(0)
    model = randomized(ref.PytorchSSD(architecture, 20, batch_norm=batch_norm, width=WIDTH))
    converted, info = detectors.import_detector("pytorch_ssd", numpy_state_dict(model))
    assert info["architecture"] == architecture and info["batch_norm"] == batch_norm
    assert info["default_boxes"] == f"{architecture}_pytorch_ssd" and info["num_classes"] == 20
    size = 300 if architecture == "ssd300" else 512
    assert_same_network(
        model, converted, info, random_image(size), "imagenet", background_last=True
    )


def test_ssd_pytorch_import_reproduces_the_network():
    torch.manual_seed(1)
    model = randomized(ref.SsdPytorchSSD(20, width=WIDTH))
    converted, info = detectors.import_detector("ssd.pytorch", numpy_state_dict(model))
    assert info["default_boxes"] == "ssd300_ssd_pytorch" and info["mean"] == (123.0, 117.0, 104.0)
    assert_same_network(model, converted, info, random_image(300, 1), "caffe_bgr")


def test_torchvision_import_reproduces_the_network():
    torch.manual_seed(2)
    model = randomized(ref.TorchvisionSSD300(91, width=WIDTH))
    converted, info = detectors.import_detector("torchvision", numpy_state_dict(model))
    assert info["num_classes"] == 90 and info["class_names"][0] == "person"
    assert info["class_names"][11] == "unused_12" and info["class_names"][89] == "toothbrush"
    assert_same_network(model, converted, info, random_image(300, 2), "torchvision")


def test_torchvision_default_boxes():
    """torchvision's DefaultBoxGenerator, re-derived: scales 0.07..1.05, s' = sqrt(s_k
    s_k+1), centres (i + 0.5) * step / 300, w and h clamped to 1."""
    scales = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    steps, sizes = [8, 16, 32, 64, 100, 300], [38, 19, 10, 5, 3, 1]
    expected = []
    for k, f in enumerate(sizes):
        wh = [(scales[k], scales[k]), (np.sqrt(scales[k] * scales[k + 1]),) * 2]
        for r in ratios[k]:
            wh += [(scales[k] * np.sqrt(r), scales[k] / np.sqrt(r)),
                   (scales[k] / np.sqrt(r), scales[k] * np.sqrt(r))]  # fmt: skip
        for i in range(f):
            for j in range(f):
                for w, h in wh:
                    cx, cy = (j + 0.5) * steps[k] / 300, (i + 0.5) * steps[k] / 300
                    expected.append((cx, cy, min(w, 1.0), min(h, 1.0)))
    ours = default_boxes.generate(default_boxes.preset("ssd300_torchvision"))
    np.testing.assert_allclose(ours, np.array(expected), atol=1e-6)


def test_fc_layers_are_subsampled_as_in_the_paper():
    rng = np.random.default_rng(0)
    fc6, fc7 = rng.normal(size=(4096, 25088)).astype(np.float32), rng.normal(size=(4096, 4096))
    b6, b7 = rng.normal(size=4096), rng.normal(size=4096)
    conv6, bias6, conv7, bias7 = backbone.reduce_fc(fc6, b6, fc7, b7)
    assert conv6.shape == (1024, 512, 3, 3) and conv7.shape == (1024, 1024, 1, 1)
    for o, c, i, j in [(0, 0, 0, 0), (5, 17, 1, 2), (1023, 511, 2, 2), (300, 3, 2, 0)]:
        # fc6 input index = c * 49 + row * 7 + col, rows/cols 0, 3, 6
        assert conv6[o, c, i, j] == fc6[4 * o, c * 49 + 3 * i * 7 + 3 * j]
    assert conv7[7, 9, 0, 0] == fc7[28, 36] and bias6[3] == b6[12] and bias7[5] == b7[20]
    with pytest.raises(common.ConversionError, match="not VGG16"):
        backbone.reduce_fc(fc6[:, :100], b6, fc7, b7)


def test_state_dicts_are_unwrapped_from_training_checkpoints_and_data_parallel(tmp_path):
    """The shapes people save: a bare state dict, {"state_dict": ...} or
    {"model": ...} (training checkpoints, with other entries beside), DataParallel's
    "module." prefixes, and the same weights as .safetensors and .npz."""
    weights = {"conv.weight": torch.arange(6.0).reshape(2, 3), "conv.bias": torch.ones(2),
               "bn.num_batches_tracked": torch.tensor(7)}  # fmt: skip
    parallel = {f"module.{k}": v for k, v in weights.items()}
    saved = {
        "bare.pth": weights,
        "wrapped.pth": {"state_dict": parallel, "epoch": 3, "optimizer": {"lr": 0.1}},
        "model.pth": {"model": weights, "iteration": 1000},
    }
    for name, payload in saved.items():
        torch.save(payload, tmp_path / name)
    from safetensors.torch import save_file

    save_file(parallel, str(tmp_path / "parallel.safetensors"))
    np.savez(tmp_path / "plain.npz", **{k: v.numpy() for k, v in weights.items()})
    for name in [*saved, "parallel.safetensors", "plain.npz"]:
        read = common.read_state_dict(str(tmp_path / name))
        assert sorted(read) == sorted(weights), name
        np.testing.assert_array_equal(read["conv.weight"], np.arange(6.0).reshape(2, 3))
        assert int(read["bn.num_batches_tracked"]) == 7


def test_unknown_files_and_missing_keys_fail_clearly(tmp_path):
    with pytest.raises(common.ConversionError, match="missing 'L2Norm.weight'"):
        detectors.import_detector("ssd.pytorch", {"vgg.0.weight": np.zeros((1, 3, 3, 3))} | {
            f"vgg.{k}.{p}": np.zeros((1, 1, 3, 3) if p == "weight" else (1,))
            for k in backbone.SSD_PYTORCH_VGG_CONVS for p in ("weight", "bias")
        })  # fmt: skip
    with pytest.raises(
        common.ConversionError,
        match="not an ImageNet VGG16, MobileNetV3-Large or ResNet state dict",
    ):
        backbone.vgg16_backbone({"foo.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="unknown source"):
        detectors.import_detector("caffe", {})
    with pytest.raises(common.MissingWeightsError, match="no weights file .*nothing.pth"):
        common.read_state_dict(str(tmp_path / "nothing.pth"))


# --- full size, through the command lines -----------------------------------------


def run(*args):
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def trunk_outputs(model, image, mean, std):
    """ssd_jax VGG trunk: (conv4_3 after L2Norm, conv7), NCHW NumPy."""
    x = normalize_images(jnp.asarray(image), mean, std, jnp.float32)
    model.eval()
    conv4_3, conv7 = model.vgg(x)
    return [np.asarray(t).transpose(0, 3, 1, 2) for t in (conv4_3, conv7)]


@pytest.mark.parametrize("batch_norm", [False, True])
def test_convert_torch_vgg_feeds_the_trunk(tmp_path, batch_norm):
    """torchvision vgg16(_bn) -> convert_torch_backbone.py -> init.backbone: conv4_3 equals
    torchvision's features, conv7 equals pool5 + the reduced fc6/fc7 as convolutions."""
    torch.manual_seed(3)
    vgg = ref.TorchvisionVGG16(batch_norm).eval()
    ref.randomize_batch_norm(vgg)
    if batch_norm:  # and via .safetensors, which needs no torch to read
        from safetensors.numpy import save_file

        save_file(numpy_state_dict(vgg), str(tmp_path / "vgg.safetensors"))
        source = tmp_path / "vgg.safetensors"
    else:
        torch.save(vgg.state_dict(), tmp_path / "vgg.pth")
        source = tmp_path / "vgg.pth"
    run(
        "convert_torch_backbone.py", "--input", str(source), "--output", str(tmp_path / "vgg16_ssd")
    )
    model = SSD("ssd300", 20, batch_norm=batch_norm, rngs=nnx.Rngs(0))
    checkpoint.load_backbone(model, str(tmp_path / "vgg16_ssd.npz"))
    mean, std = checkpoint.backbone_normalization(str(tmp_path / "vgg16_ssd.npz"))
    assert mean == pytest.approx((123.675, 116.28, 103.53))  # recorded ImageNet normalization
    image = random_image(300, 3)
    conv4_3, conv7 = trunk_outputs(model, image, mean, std)
    x = torch.from_numpy(((image / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])
                         .transpose(0, 3, 1, 2).astype(np.float32))  # fmt: skip
    features = vgg.features
    features[16].ceil_mode = True  # pool3, as SSD patches it
    last_conv = 33 if batch_norm else 23  # conv4_3's ReLU ends before pool4
    with torch.no_grad():
        c43 = features[:last_conv](x)
        np.testing.assert_allclose(conv4_3, (20 * torch.nn.functional.normalize(c43)).numpy(),
                                   atol=1e-4)  # fmt: skip
        c53 = features[last_conv:-1](c43)
        fc6 = vgg.classifier[0].weight.view(4096, 512, 7, 7)[::4, :, ::3, ::3]
        y = torch.nn.functional.max_pool2d(c53, 3, 1, 1)
        y = torch.relu(torch.nn.functional.conv2d(y, fc6, vgg.classifier[0].bias[::4],
                                                  padding=6, dilation=6))  # fmt: skip
        fc7 = vgg.classifier[3].weight[::4, ::4, None, None]
        y = torch.relu(torch.nn.functional.conv2d(y, fc7, vgg.classifier[3].bias[::4]))
    if batch_norm:  # conv6/conv7 have BN in ssd_jax's BN model: identity-initialized
        assert np.allclose(model.vgg.conv6.bn.scale[...], 1)
    else:
        np.testing.assert_allclose(conv7, y.numpy(), atol=1e-4)


def test_vgg16_reducedfc_is_caffe_style(tmp_path):
    torch.manual_seed(4)
    layers = torch.nn.ModuleList(ref.ssd_pytorch_vgg(1.0)).eval()
    weights = {k: v.numpy() for k, v in layers.state_dict().items()}
    converted, info = backbone.vgg16_backbone(weights)
    assert info["mean"] == (123.0, 117.0, 104.0) and info["std"] == (1.0, 1.0, 1.0)
    model = SSD("ssd300", 20, rngs=nnx.Rngs(0))
    np.savez(tmp_path / "reduced.npz", **converted, **backbone.record_arrays(info))
    checkpoint.load_backbone(model, str(tmp_path / "reduced.npz"))
    mean, std = checkpoint.backbone_normalization(str(tmp_path / "reduced.npz"))
    image = random_image(300, 4)
    _, conv7 = trunk_outputs(model, image, mean, std)
    with torch.no_grad():
        y = torch_input(image, "caffe_bgr")
        for layer in layers:
            y = layer(y)
    np.testing.assert_allclose(conv7, y.numpy(), atol=1e-4 * max(1.0, float(y.abs().max())))


def test_convert_command_writes_a_checkpoint_that_predict_uses(tmp_path):
    """Full-size torchvision ssd300_vgg16 (91 logits) -> python -m ssd_jax.convert ->
    Detector: the same detections as post-processing the torch outputs with
    torchvision's settings (400 candidates per class, boxes clipped before NMS)."""
    torch.manual_seed(5)
    model = randomized(ref.TorchvisionSSD300(91)).eval()
    torch.save(model.state_dict(), tmp_path / "ssd300_vgg16.pth")
    out = run("-m", "ssd_jax.convert", "--from", "torchvision",
              "--input", str(tmp_path / "ssd300_vgg16.pth"), "--output", str(tmp_path / "imported"))  # fmt: skip
    assert "90 classes" in out
    detector = load_detector(str(tmp_path / "imported"))
    assert detector.image_size == 300 and detector.class_names[0] == "person"
    image = random_image(300, 5)
    found = detector.detect_resized(image)
    with torch.no_grad():
        loc, conf = (t.numpy() for t in model(torch_input(image, "torchvision")))
    boxes = jnp.asarray(default_boxes.generate(default_boxes.preset("ssd300_torchvision")))
    expected = postprocess.detect(jnp.asarray(loc), jnp.asarray(conf), boxes, top_k_per_class=400,
                                  clip_before_nms=True)  # fmt: skip
    assert_same_detections(found, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("source", "make_model", "style", "boxes"),
    [
        ("pytorch_ssd", lambda: ref.PytorchSSD("ssd300", 20, batch_norm=True, width=WIDTH),
         "imagenet", "ssd300_pytorch_ssd"),
        ("ssd.pytorch", lambda: ref.SsdPytorchSSD(20, width=WIDTH), "caffe_bgr",
         "ssd300_ssd_pytorch"),
    ],
)  # fmt: skip
def test_convert_command_imports_pytorch_ssd_and_ssd_pytorch(
    tmp_path, source, make_model, style, boxes
):
    """A narrow pytorch_SSD SSD300-BN and ssd.pytorch SSD300, saved by torch.save
    as their training scripts do -> python -m ssd_jax.convert -> Detector: the same
    detections as post-processing the torch outputs (pytorch_SSD: background last)."""
    torch.manual_seed(6)
    model = randomized(make_model()).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    out = run("-m", "ssd_jax.convert", "--from", source,
              "--input", str(tmp_path / "weights.pth"), "--output", str(tmp_path / "imported"))  # fmt: skip
    assert "20 classes" in out
    detector = load_detector(str(tmp_path / "imported"))
    image = random_image(300, 6)
    with torch.no_grad():
        loc, conf = (t.numpy() for t in model(torch_input(image, style)))
    if source == "pytorch_ssd":
        conf = np.roll(conf, 1, axis=-1)
    boxes = jnp.asarray(default_boxes.generate(default_boxes.preset(boxes)))
    expected = postprocess.detect(jnp.asarray(loc), jnp.asarray(conf), boxes)
    assert_same_detections(detector.detect_resized(image), expected, atol=1e-4)
