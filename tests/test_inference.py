"""Inference (ssd_jax.inference): the Detector on batches and single images, the
portable export, and that inference loads none of the trainer."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssd_jax import inference
from ssd_jax.data.augment import resize
from ssd_jax.data.synthetic import SHAPE_NAMES, SyntheticShapes
from ssd_jax.exporters import jax_export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "data", "checkpoint_v0.1")


@pytest.fixture(scope="module")
def detector():
    return inference.load_detector(FIXTURE, batch_size=2)


def test_importing_inference_loads_neither_the_trainer_nor_grain_nor_tensorboard():
    code = (
        "import sys, ssd_jax.inference; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grain', 'tensorboardX') "
        "or m in ('ssd_jax.train', 'ssd_jax.evaluator', 'ssd_jax.data.pipeline')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_detector_batches_equal_single_images(detector):
    assert detector.class_names == SHAPE_NAMES[:3] and detector.image_size == 300
    images = [
        SyntheticShapes(3, num_classes=3, image_size=size, seed=8)[k]["image"]
        for k, size in enumerate([(90, 140), (300, 300), (64, 200)])
    ]
    batched = detector.detect_batch(images, score_threshold=0.0)  # batches of 2, last padded
    for image, found in zip(images, batched):
        single = detector(image, score_threshold=0.0)
        # Another batch size is another compiled program: compare the best three,
        # whose scores are further apart than float32 noise (checked here).
        scores = [d["score"] for d in found[:4]]
        assert min(np.diff(scores[::-1])) > 3e-4, scores  # scores are rounded to 1e-4
        assert [d["class"] for d in single[:3]] == [d["class"] for d in found[:3]]
        np.testing.assert_allclose([d["box"] for d in single[:3]], [d["box"] for d in found[:3]],
                                   atol=0.1 + 1e-3)  # fmt: skip
        assert all(d["class"] == SHAPE_NAMES[d["label"] - 1] for d in found)
        height, width = image.shape[:2]
        for d in found:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height  # original pixels
    drawn = inference.draw_detections(images[0], batched[0][:3])
    assert drawn.shape == images[0].shape and (drawn != images[0]).any()
    with pytest.raises(ValueError, match="image 0: expected uint8"):
        detector(images[0].astype(np.float32))


def test_pixel_boxes_are_the_normalized_boxes_scaled_to_the_original_image(detector):
    """A non-square image: each detection's pixel box is its normalized box (from
    the 300x300 resized input) times (width, height), rounded to 0.1 pixel; an x/y
    swap or scaling by the wrong side would move boxes by tens of pixels here."""
    image = SyntheticShapes(1, num_classes=3, image_size=(120, 260), seed=9)[0]["image"]
    found = detector(image, score_threshold=0.05)
    resized = detector.detect_resized(resize(image, 300)[None])
    assert len(found) >= 3
    for d, box, score in zip(found, resized.boxes_xyxy[0], resized.scores[0], strict=False):
        np.testing.assert_allclose(
            d["box"], np.asarray(box) * [260, 120, 260, 120], atol=0.05 + 1e-3
        )
        assert abs(d["score"] - float(score)) <= 5e-5 + 1e-7


EXPORTED_RUNNER = """
import sys
import jax, numpy as np
with open(sys.argv[1], "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
found = exported.call(np.load(sys.argv[2]))
assert not [m for m in sys.modules if m.startswith(("ssd_jax", "flax"))]
np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in found.items()})
"""


def test_the_export_command_writes_a_detector_for_every_platform_that_runs_alone(
    tmp_path, detector
):
    """``python -m ssd_jax.export`` lowers for cpu, cuda, rocm and tpu; the artifact
    runs in a process that imports neither ssd_jax nor flax and finds what the
    Detector finds (on the GPU too: benchmarks/gpu_checks.py)."""
    from tests.test_commands import with_a_damaged_newer_step

    run = with_a_damaged_newer_step(tmp_path / "run")  # --step 150 picks the intact one
    command = [sys.executable, "-m", "ssd_jax.export", "--checkpoint", str(run), "--step", "150",
               "--output", str(tmp_path / "detector.jaxexport")]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "for cpu, cuda, rocm, tpu" in result.stdout
    info = json.loads((tmp_path / "detector.jaxexport.json").read_text())
    assert info["platforms"] == ["cpu", "cuda", "rocm", "tpu"]
    assert info["jax_version"] == jax.__version__ and info["image_size"] == 300
    split = SyntheticShapes(16, 3, image_size=(160, 160), max_objects=2, seed=1, min_size=0.2)
    images = np.stack([resize(split[k]["image"], info["image_size"]) for k in range(3)])
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run(
        [sys.executable, "-c", EXPORTED_RUNNER, "detector.jaxexport", "images.npy", "out.npz"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    found = np.load(tmp_path / "out.npz")
    expected = detector.detect_resized(images)
    # Another compiled program (weights folded in as constants): compare the
    # detections above 0.35, which the fixture's README shows are separated by far
    # more than float32 noise; below, near-ties may be ordered differently.
    confident = np.asarray(expected.scores) > 0.35
    assert confident.sum() >= 3 and (confident == (found["scores"] > 0.35)).all()
    for name in ("boxes_xyxy", "scores", "classes"):
        got, want = found[name][confident], np.asarray(getattr(expected, name))[confident]
        np.testing.assert_allclose(got, want, atol=1e-5)
    reloaded, reloaded_info = jax_export.load_export(str(tmp_path / "detector.jaxexport"))
    assert reloaded_info["class_names"] == list(SHAPE_NAMES[:3])
    assert reloaded.in_avals[0].dtype == np.uint8
    assert reloaded.platforms == ("cpu", "cuda", "rocm", "tpu")

    command[-1] = str(tmp_path / "gpu_only.jaxexport")
    wrong = subprocess.run([*command, "--platforms=gpu"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert wrong.returncode == 1 and wrong.stderr.strip().splitlines()[-1] == (
        "error: --platforms gpu: give one or more of cpu,cuda,rocm,tpu, each once (jax's "
        "names; 'gpu' is cuda or rocm)"
    )
    gpu_only, _ = jax_export.export_detector(detector, platforms=("cuda",))
    with pytest.raises(ValueError, match="cpu"):  # lowered for a GPU only: a CPU refuses it
        gpu_only.call(images)


def test_onnx_export_without_its_extra_is_one_line_naming_it(tmp_path):
    """As on Python 3.12+, where the onnx extra does not install (tests/test_onnx.py
    covers the export itself on 3.11)."""
    code = (
        "import sys, runpy; sys.modules['jax2onnx'] = None; "
        f"sys.argv = ['export', '--checkpoint', {FIXTURE!r}, '--format', 'onnx', "
        f"'--output', {str(tmp_path / 'detector.onnx')!r}]; "
        "runpy.run_module('ssd_jax.export', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
        "error: ONNX export needs jax2onnx: pip install -e '.[onnx]' (Python 3.11: jax2onnx "
        "does not support jax 0.11+ yet)"
    )
    assert os.listdir(tmp_path) == []
