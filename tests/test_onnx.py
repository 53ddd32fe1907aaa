"""ONNX export (``python -m ssd_jax.export --format onnx``) under onnxruntime
against the JAX detector. Python 3.11's suite only: see tests/conftest.py."""

import os
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest

from ssd_jax import inference
from ssd_jax.data.augment import resize
from ssd_jax.data.synthetic import SyntheticShapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "data", "checkpoint_v0.1")


@pytest.mark.slow
def test_the_onnx_model_finds_what_the_jax_detector_finds_at_any_batch_size(tmp_path):
    """Same detections as the JAX detector: scores and boxes within 1e-4 (both are
    float32 computations of the same network in another order: measured 2e-6 and
    6e-7), same classes; compared detection by detection in each image, so that
    two near-equal scores coming out in the other order do not matter."""
    output = tmp_path / "detector.onnx"
    command = [sys.executable, "-m", "ssd_jax.export", "--checkpoint", FIXTURE,
               "--format", "onnx", "--output", str(output)]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "for onnxruntime" in result.stdout and "WARNING" not in result.stderr, result.stderr
    session = onnxruntime.InferenceSession(str(output))
    detector = inference.load_detector(FIXTURE)
    split = SyntheticShapes(16, 3, image_size=(160, 160), max_objects=2, seed=1, min_size=0.2)
    images = np.stack([resize(split[k]["image"], detector.image_size) for k in range(6)])
    for batch in (images[:1], images[1:]):  # the batch dimension is dynamic
        boxes, scores, classes, valid, counts = session.run(None, {"in_0": batch})
        expected = detector.detect_resized(batch)
        np.testing.assert_array_equal(counts, expected.num_detections)
        for i in range(len(batch)):
            ours = np.sort(scores[i][valid[i]])
            np.testing.assert_allclose(ours, np.sort(expected.scores[i][expected.valid[i]]),
                                       atol=1e-4)  # fmt: skip
            for box, score, label in zip(expected.boxes_xyxy[i], expected.scores[i],
                                         expected.classes[i], strict=True):  # fmt: skip
                if score > 0.02:  # away from the 0.01 threshold
                    same = (classes[i] == label) & (np.abs(scores[i] - score) <= 1e-4)
                    assert (np.abs(boxes[i][same] - box).max(axis=1) <= 1e-4).any()
    assert scores.shape == (5, 200) and (counts > 0).all()


@pytest.mark.slow
def test_an_imported_ssdlite_exports_to_onnx_with_the_same_detections(tmp_path):
    """torchvision's SSDlite (random weights) -> convert -> ONNX: onnxruntime
    finds the JAX detector's detections (depthwise convolutions, hard-swish, SE,
    clipping before NMS, 300 of 27,000 candidates, boxes made to cross the
    image's border so that clipping matters). Compared as above, for the
    detections ranked above the 250th (the last ranks are near ties)."""
    import torch

    from ssd_jax import exporters
    from ssd_jax.importers import detectors
    from tests.torch_helpers import randomize_batch_norm
    from tests.torchvision_stand_ins import torchvision

    torch.manual_seed(0)
    theirs = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=91
    )
    randomize_batch_norm(theirs, lambda x: theirs.head(list(theirs.backbone(x).values())))
    with torch.no_grad():  # boxes 2.7x their default boxes: many cross the border
        for head in theirs.head.regression_head.module_list:
            head[1].bias.view(-1, 4)[:, 2:] += 5
    torch.save(theirs.state_dict(), tmp_path / "ssdlite.pth")
    detectors.convert_detector("torchvision_ssdlite", str(tmp_path / "ssdlite.pth"),
                               str(tmp_path / "run"))  # fmt: skip
    detector = inference.load_detector(str(tmp_path / "run"))
    exporters.export(detector, "onnx", str(tmp_path / "ssdlite.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "ssdlite.onnx"))
    images = np.random.default_rng(4).integers(0, 256, (2, 320, 320, 3), dtype=np.uint8)
    boxes, scores, classes, _, counts = session.run(None, {"in_0": images})
    expected = detector.detect_resized(images)
    np.testing.assert_array_equal(counts, expected.num_detections)
    for i in range(len(images)):
        cut = expected.scores[i][250]
        for box, score, label in zip(expected.boxes_xyxy[i], expected.scores[i],
                                     expected.classes[i], strict=True):  # fmt: skip
            if score > cut + 1e-4:
                same = (classes[i] == label) & (np.abs(scores[i] - score) <= 1e-4)
                assert (np.abs(boxes[i][same] - box).max(axis=1) <= 1e-4).any()
