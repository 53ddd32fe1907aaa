"""The command lines (python -m ssd_jax.<name>) as a user runs them, and the
architecture rules of the entry layer: commands never import each other or the
trainer, modules and functions stay short."""

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import pytest

from ssd_jax.data.synthetic import SHAPE_NAMES, SyntheticShapes

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "checkpoint_v0.1"
COMMANDS = {  # module name -> file
    "ssd_jax.train": "ssd_jax/train.py",
    "ssd_jax.evaluate": "ssd_jax/evaluate.py",
    "ssd_jax.predict": "ssd_jax/predict.py",
    "ssd_jax.export": "ssd_jax/export.py",
    "ssd_jax.convert": "ssd_jax/convert.py",
    "ssd_jax.data.prepare": "ssd_jax/data/prepare.py",
    "convert_torch_backbone": "convert_torch_backbone.py",
}
# Argument-free builders of configurations: long lists of settings by nature.
LONG_FUNCTIONS_ALLOWED = {"base_config", "get_config"}


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names, anywhere in the file
    (``from a import b`` counts as both ``a`` and ``a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_command_imports_another_command_or_the_trainer():
    for name, path in COMMANDS.items():
        others = set(COMMANDS) - {name}
        assert not imported_modules(ROOT / path) & others, name
    for path in (ROOT / "ssd_jax").rglob("*.py"):  # nor does any library module
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module not in COMMANDS:
            assert not imported_modules(path) & set(COMMANDS), module


def test_modules_and_functions_stay_short():
    for path in sorted((ROOT / "ssd_jax").rglob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= 400, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name not in LONG_FUNCTIONS_ALLOWED:
                assert node.end_lineno - node.lineno < 80, f"{path}: {node.name}"


def run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("wrong", ["path", "step"])
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_a_wrong_checkpoint_path_is_one_line_and_creates_nothing(tmp_path, command, wrong):
    """Not even the folder of --output (evaluate and export make it before their work)."""
    mistyped = tmp_path / "runs" / "shapse"
    extra = ["--input", os.path.join(ROOT, "docs", "quickstart_examples.jpg")]
    extra = extra if command == "predict" else []
    if wrong == "path":
        given = ["--checkpoint", str(mistyped)]
        message = (f"error: {mistyped} does not exist: give a run's --workdir, its checkpoints/ "
                   "folder or the --output folder of python -m ssd_jax.convert")  # fmt: skip
    else:
        given = ["--checkpoint", str(FIXTURE), "--step", "3"]
        message = f"error: {FIXTURE / 'checkpoints'} has no step 3; it has steps [150]"
    result = run("-m", f"ssd_jax.{command}", *given, *extra,
                 "--output", str(tmp_path / "out" / "result"))  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("export", ["--batch_size", "0"], "--batch_size 0: give 1 or more, or leave it out (any)"),
        ("export", ["--format", "onnx", "--batch_size", "2", "--platforms", "cuda"],
         "--batch_size and --platforms: only for --format jax, not for --format onnx "
         "(ONNX model for onnxruntime, any batch size)"),
        ("export", ["--platforms", "cpu,cpu"],
         "--platforms cpu,cpu: give one or more of cpu,cuda,rocm,tpu, each once"),
        ("export", ["--output", "{tmp}"], "--output {tmp} is a folder: give a file name"),
        ("evaluate", ["--output", "{tmp}/file/eval.json"],
         "cannot create the folder of --output {tmp}/file/eval.json"),
        ("evaluate", ["--config", "configs/nope.py"], "--config configs/nope.py: no such file"),
        ("evaluate", ["--config=configs/nope.py", "--config.eval_batches=1"],
         "--config configs/nope.py: no such file"),
        ("evaluate", ["--config", "configs/tiny.py", "--config.detection.score_treshold=0.3"],
         "a --config.* override names a key the configuration does not have: 'score_treshold' "
         "(did you mean 'score_threshold'?)"),
        ("predict", ["--input", "{tmp}/empty", "--output", "{tmp}/out"], "{tmp}/empty holds no image or video"),
        ("predict", ["--input", "{tmp}/nope.png", "--output", "{tmp}/out"], "--input {tmp}/nope.png does not exist"),
        ("predict", ["--input", "{tmp}/file", "--output", "{tmp}/out"], "--input {tmp}/file is not an image or video"),
        ("predict", ["--input", "{tmp}/file", "--score_threshold", "50", "--output", "{tmp}/out"],
         "--score_threshold 50.0: a probability, in [0, 1]"),
    ],
)  # fmt: skip
def test_bad_outputs_and_flags_are_one_line_before_any_work(tmp_path, command, args, message):
    """Before the checkpoint is read, so that no work (an evaluation) is lost; predict's
    input is checked before the model loads (its output folder would be made then)."""
    (tmp_path / "file").write_text("")
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    result = run("-m", f"ssd_jax.{command}", "--checkpoint", str(FIXTURE), *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert (
        result.stderr.strip().splitlines()[-1].startswith(f"error: {message.format(tmp=tmp_path)}")
    )
    assert sorted(os.listdir(tmp_path)) == ["empty", "file"]  # nothing made


def test_every_command_shows_an_example_and_its_checkpoint_flags_in_help():
    for command in ("train", "evaluate", "predict", "export", "convert", "data.prepare"):
        result = run("-m", f"ssd_jax.{command}", "--help")
        assert f"python -m ssd_jax.{command} " in result.stdout, command
        if command in ("evaluate", "predict", "export"):
            assert "--checkpoint:" in result.stdout and "--step:" in result.stdout, command


def test_evaluate_command_scores_a_checkpoint_without_orbax_warnings(tmp_path):
    output = tmp_path / "new" / "eval.json"  # its folder is made
    result = run("-m", "ssd_jax.evaluate", "--checkpoint", str(FIXTURE / "checkpoints"),
                 "--output", str(output), "--metric", "coco")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(output.read_text())
    assert {"AP", "AP50", "AR100", "loss", "ap/circle", "ap/triangle"} <= set(scores)
    assert scores["AP"] > 0.5  # a working detector (its exact figures: test_checkpoint.py)
    assert "triangle" in result.stdout and "AP_small" in result.stdout
    assert "WARNING" not in result.stderr, result.stderr
    png = tmp_path / "new" / "eval_pr.png"  # precision-recall curves beside the JSON
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "evaluate 16/16" in result.stderr  # the progress, as lines off a terminal


def with_a_damaged_newer_step(run):
    """A copy of the fixture whose newest step, 160, cannot be read (a state file cut
    short): a command given --step 150 must not touch it."""
    shutil.copytree(FIXTURE, run)
    shutil.copytree(run / "checkpoints" / "150", run / "checkpoints" / "160")
    files = [p for p in (run / "checkpoints" / "160" / "state").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 3])
    return run


def test_evaluate_command_takes_a_step_and_another_configuration(tmp_path):
    """--step and --config (with an override) reach the evaluation: the command's
    result is evaluate_checkpoint's on that configuration's eval split, which is
    not the checkpoint's own (the fixture scores mAP 0.83 there)."""
    from configs.tiny import get_config
    from ssd_jax.evaluator import evaluate_checkpoint

    output = tmp_path / "eval.json"
    run_dir = with_a_damaged_newer_step(tmp_path / "run")
    command = [sys.executable, "-m", "ssd_jax.evaluate", "--checkpoint", str(run_dir),
               "--step", "150", "--config", "configs/tiny.py",
               "--config.data.eval.num_images=8", "--output", str(output)]  # fmt: skip
    # the 8 CPU devices of this process: the same compiled program, the same numbers
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    config = get_config()
    config.data.eval.num_images = 8
    expected = evaluate_checkpoint(str(FIXTURE), 150, config).metrics
    assert json.loads(output.read_text()) == pytest.approx(expected, rel=1e-6)
    assert expected["map"] < 0.5 and f"wrote {output}" in result.stdout


def test_predict_command_draws_detections_and_skips_bad_files(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    example = SyntheticShapes(1, num_classes=3, image_size=(90, 140), seed=5)[0]
    cv2.imwrite(str(images / "shapes.png"), cv2.cvtColor(example["image"], cv2.COLOR_RGB2BGR))
    (images / "broken.jpg").write_bytes(b"not an image")
    (images / "broken.mp4").write_bytes(b"not a video")
    video = cv2.VideoWriter(str(images / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (140, 90))
    for k in range(11):  # one full batch of 8 and a padded one
        frame = SyntheticShapes(11, num_classes=3, image_size=(90, 140), seed=6)[k]["image"]
        video.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    video.release()
    empty = cv2.VideoWriter(
        str(images / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (140, 90)
    )
    empty.release()  # a video that opens but holds no frame
    out = tmp_path / "out"
    result = run("-m", "ssd_jax.predict", "--checkpoint", str(FIXTURE / "checkpoints" / "150"),
                 "--input", str(images), "--output", str(out), "--score_threshold", "0.0")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stdout and "broken.jpg" in result.stdout
    assert "WARNING" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()  # off a terminal: a line per file, numbered
    assert [line.split("]")[0] for line in lines if line.startswith("[")] == [
        f"[{k}/5" for k in range(1, 6)
    ]
    report = json.loads((out / "detections.json").read_text())
    assert report["skipped"] == [str(images / n) for n in ("broken.jpg", "broken.mp4", "empty.avi")]
    frames = [key for key in report["detections"] if "clip.avi#" in key]
    assert frames == [f"{images / 'clip.avi'}#{k}" for k in range(11)]
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 11
    ok, first = capture.read()
    assert ok and first.shape == (90, 140, 3)
    detections = report["detections"][str(images / "shapes.png")]
    assert len(detections) > 0  # threshold 0: every kept box
    for d in detections:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 140 and 0 <= y0 <= y1 <= 90  # original pixels
        assert d["class"] in SHAPE_NAMES[:3] and 0 <= d["score"] <= 1
    drawn = cv2.imread(str(out / "shapes.jpg"))
    assert drawn.shape == (90, 140, 3)

    nothing = run("-m", "ssd_jax.predict", "--checkpoint", str(FIXTURE), "--input",
                  str(images / "broken.jpg"), "--output", str(tmp_path / "none"))  # fmt: skip
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr
    assert nothing.stderr.strip().splitlines()[-1] == (
        "error: none of the 1 inputs could be read (see above)"
    )
    assert json.loads((tmp_path / "none" / "detections.json").read_text())["skipped"] == [
        str(images / "broken.jpg")
    ]


@pytest.mark.slow
def test_a_resnet_ssd_trains_evaluates_predicts_and_exports_from_the_command_line(tmp_path):
    """NVIDIA's SSD300 options as configuration keys (ResNet-18 at 1/16 width, its
    default boxes, per-image loss normalization) through every command."""
    run_dir = tmp_path / "run"
    result = run("-m", "ssd_jax.train", "--config", "configs/tiny.py", "--workdir", str(run_dir),
                 "--config.model.backbone=resnet18", "--config.model.batch_norm=True",
                 "--config.model.default_boxes=ssd300_nvidia",
                 "--config.loss.normalization=image", "--config.num_steps=2",
                 "--config.checkpoint_every=2", "--config.eval_every=2")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    meta = (run_dir / "checkpoints" / "2" / "meta" / "metadata").read_text()
    assert '"backbone": "resnet18"' in meta and '"normalization": "image"' in meta
    result = run("-m", "ssd_jax.evaluate", "--checkpoint", str(run_dir),
                 "--output", str(tmp_path / "eval.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"loss", "ap/circle"} <= set(json.loads((tmp_path / "eval.json").read_text()))
    image = SyntheticShapes(1, num_classes=3, image_size=(90, 140), seed=5)[0]["image"]
    cv2.imwrite(str(tmp_path / "shapes.png"), image[..., ::-1])
    result = run("-m", "ssd_jax.predict", "--checkpoint", str(run_dir), "--input",
                 str(tmp_path / "shapes.png"), "--output", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "detections.json").is_file()
    result = run("-m", "ssd_jax.export", "--checkpoint", str(run_dir),
                 "--output", str(tmp_path / "detector.jax"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "detector.jax").stat().st_size > 1000
