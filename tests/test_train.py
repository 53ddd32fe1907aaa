import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import psutil
import pytest

from ssd_jax import checkpoint, optim, train
from ssd_jax.config_schema import load_config_file, validate
from ssd_jax.data.synthetic import SHAPE_NAMES, SyntheticShapes, write_coco, write_voc
from ssd_jax.metrics_writer import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
    return load_config_file(os.path.join(ROOT, "configs", f"{name}.py"))


@pytest.mark.parametrize(
    "name",
    [
        "ssd300_voc",
        "ssd512_voc",
        "ssd300_coco",
        "ssd512_coco",
        "custom_voc_style",
        "shapes",
        "tiny",
    ],
)
def test_configs_load_with_the_paper_defaults(name):
    config = load_config(name)
    assert config.optimizer.momentum == 0.9
    # the paper's loss (hard negatives 3:1, alpha 1, positives from IoU 0.5) and
    # inference (score > 0.01, NMS at IoU 0.45, top 200 per class and per image)
    assert (config.loss.neg_pos_ratio, config.loss.alpha) == (3.0, 1.0)
    assert config.loss.match_iou_threshold == 0.5
    detection = config.detection
    assert (detection.score_threshold, detection.nms_iou_threshold) == (0.01, 0.45)
    assert detection.top_k_per_class == detection.max_detections == 200
    # the README's failure handling: at most 100 unreadable images; a diverging run
    # stops, or rolls back at most 3 times, halving the learning rate each time
    assert config.data.max_unreadable_images == 100 and config.on_nonfinite == "stop"
    assert (config.rollback.max_times, config.rollback.learning_rate_factor) == (3, 0.5)
    if name.startswith("ssd"):
        assert config.optimizer.name == "sgd"
        assert config.batch_size == 32 and config.optimizer.learning_rate == 1e-3
        assert config.optimizer.weight_decay == 5e-4 and config.optimizer.warmup_steps == 500
        # the paper's: decay on conv kernels, step decay, the full augmentation
        assert config.optimizer.weight_decay_on == "kernels"
        assert config.optimizer.schedule == "step"
        assert config.data.photometric and config.data.zoom_out
        coco = "coco" in name
        assert config.num_steps == (400_000 if coco else 120_000)
        assert tuple(config.optimizer.milestones) == (
            (280_000, 360_000) if coco else (80_000, 100_000)
        )
        assert config.model.architecture == name[:6]


CONFIG_NAMES = sorted(
    name.removesuffix(".py")
    for name in os.listdir(os.path.join(ROOT, "configs"))
    if name.endswith(".py") and name != "__init__.py"
)


def test_every_config_file_passes_validation():
    assert {"ssdlite320_coco", "ssdlite320_voc", "tiny"} <= set(CONFIG_NAMES)
    for name in CONFIG_NAMES:
        validate(load_config(name))


def test_the_ssdlite_configs_follow_their_recipes():
    """ssdlite320_coco: torchvision's reference (references/detection/README.md:
    660 epochs of 8 x 24 images, lr 0.15, cosine, weight decay 4e-5 on every
    parameter, the "ssdlite" augmentation; the model's post-processing and 0.5 / 0.5
    normalization); ssdlite320_voc: lufficc/SSD's MobileNetV3 SSD320 VOC solver."""
    coco = load_config("ssdlite320_coco")
    assert (coco.model.backbone, coco.model.architecture) == (
        "mobilenet_v3_large_reduced_tail", "ssdlite320")  # fmt: skip
    assert coco.init.backbone == "" and coco.eval_metric == "coco"
    assert tuple(coco.data.mean) == tuple(coco.data.std) == (127.5, 127.5, 127.5)
    assert not coco.data.photometric and not coco.data.zoom_out and coco.data.augment
    assert coco.batch_size == coco.optimizer.base_batch_size == 192
    assert coco.optimizer.learning_rate == 0.15 and coco.optimizer.schedule == "cosine"
    assert coco.num_steps == 660 * 610 and coco.optimizer.warmup_steps == 609
    assert (coco.optimizer.weight_decay, coco.optimizer.weight_decay_on) == (4e-5, "all")
    assert (coco.optimizer.name, coco.optimizer.momentum) == ("sgd", 0.9)
    detection = coco.detection
    assert (detection.score_threshold, detection.nms_iou_threshold) == (0.001, 0.55)
    assert detection.top_k_per_class == detection.max_detections == 300
    assert detection.clip_before_nms
    voc = load_config("ssdlite320_voc")
    assert (voc.model.backbone, voc.model.architecture) == ("mobilenet_v3_large", "ssdlite320")
    assert voc.data.photometric and voc.data.zoom_out and voc.eval_metric == "voc"
    assert (voc.batch_size, voc.optimizer.learning_rate, voc.num_steps) == (32, 1e-3, 120_000)
    assert tuple(voc.optimizer.milestones) == (80_000, 100_000)
    assert voc.optimizer.schedule == "step" and voc.optimizer.weight_decay_on == "all"
    assert voc.optimizer.weight_decay == 5e-4


def test_the_resnet_configs_follow_nvidias_recipe():
    """ssd300_resnet50_coco: NVIDIA's SSD300 v1.1 README (65 epochs of 8 x 32
    images, 459 iterations each; lr 2.6e-3 per 32 images; x0.1 at epochs 43 and
    54; warmup 300; weight decay 5e-4 but not on BatchNorm or biases; no zoom
    out; per-image loss normalization; score > 0.05, 200 per class and image)."""
    coco = load_config("ssd300_resnet50_coco")
    assert (coco.model.backbone, coco.model.architecture) == ("resnet50", "ssd300")
    assert coco.model.default_boxes == "ssd300_nvidia" and coco.eval_metric == "coco"
    assert coco.batch_size == 256 and coco.optimizer.base_batch_size == 32
    assert coco.optimizer.learning_rate == 2.6e-3 and coco.optimizer.warmup_steps == 300
    assert coco.num_steps == 65 * 459
    assert tuple(coco.optimizer.milestones) == (43 * 459, 54 * 459)
    assert (coco.optimizer.weight_decay, coco.optimizer.weight_decay_on) == (5e-4, "kernels")
    assert coco.data.photometric and not coco.data.zoom_out
    assert coco.loss.normalization == "image"
    assert (coco.detection.score_threshold, coco.detection.nms_iou_threshold) == (0.05, 0.45)
    assert coco.detection.top_k_per_class == coco.detection.max_detections == 200
    voc = load_config("ssd300_resnet50_voc")
    assert voc.model.backbone == "resnet50" and voc.model.default_boxes == ""
    assert voc.loss.normalization == "image" and voc.eval_metric == "voc"
    assert (voc.batch_size, voc.optimizer.learning_rate, voc.num_steps) == (32, 1e-3, 120_000)


def test_unknown_config_key_fails(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ssd_jax.train", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
         "--config.optimizer.learning_rte=0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: a --config.* override names a key the configuration does not have: "
        "'learning_rte' (did you mean 'learning_rate'?)"
    )
    result = subprocess.run(
        [sys.executable, "-m", "ssd_jax.train", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
         "--config.optimizer.learning_rte=0.1", "--verbosity=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("AttributeError: ")
    assert "learning_rte" in result.stderr.strip().splitlines()[-1]


def test_schedule_warmup_and_steps():
    schedule = optim.step_schedule(0.1, warmup_steps=4, milestones=(10, 20), gamma=0.1)
    values = [float(schedule(jnp.asarray(s))) for s in (0, 1, 3, 9, 10, 19, 20, 100)]
    np.testing.assert_allclose(values, [0.025, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def params_of(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state["params"]))]


def test_resumed_run_reaches_the_same_parameters_and_writes_outputs(tmp_path, capsys):
    config = load_config("tiny")
    workdir = str(tmp_path / "run")
    final = params_of(train.train_and_evaluate(config, workdir))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]
    assert any("eval/loss" in r and 0 <= r["eval/map"] <= 1 for r in records)
    assert os.path.getsize(os.path.join(workdir, "learning_curve.png")) > 1000
    assert os.listdir(os.path.join(workdir, "tensorboard"))

    # "kill" the run between the checkpoints at 3 and 6, then rerun it, on two
    # Grain worker processes this time (the iterator state is saved in-process)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    config.data.num_workers = 2
    resumed = params_of(train.train_and_evaluate(config, workdir))
    config.data.num_workers = 0
    for a, b in zip(final, resumed):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))  # each step once
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "eval/loss" in r] == [6]

    # fine-tuning to another class count: trunk restored, confidence heads fresh
    fine_tune = load_config("tiny")
    fine_tune.data.class_names = SHAPE_NAMES[:2]
    fine_tune.init.checkpoint = workdir  # a run directory, as --checkpoint takes it
    run = train.setup(fine_tune, str(tmp_path / "fine_tune"))  # the state before step 1
    run.close()
    said = capsys.readouterr().out  # which variables stay fresh, in one line
    assert "variables are missing or have another shape there and keep their initial" in said
    assert "params/conf_heads/0/kernel" in said
    state = run.state
    trained = train.train_and_evaluate(config, workdir)  # already done: returns the restored state
    assert "is at step 6 of 6: nothing to train" in capsys.readouterr().out
    conv = lambda s: np.asarray(s["params"]["vgg"]["conv1_1"]["conv"]["kernel"][...])  # noqa: E731
    np.testing.assert_array_equal(conv(state), conv(trained))
    assert (
        state["params"]["conf_heads"][0]["kernel"][...].shape[-1] == 4 * 3
    )  # 2 classes + background


@pytest.mark.slow
def test_sigterm_stops_training_after_a_saved_step_and_its_grain_workers(tmp_path):
    # Found in use: a training run stopped with `kill` left its Grain worker
    # processes running. SIGTERM (a scheduler's preemption notice) ends the step in
    # progress, saves it and unwinds through train_and_evaluate's cleanup.
    command = [sys.executable, "-m", "ssd_jax.train", "--config", "configs/tiny.py",
               "--config.data.num_workers=1", "--config.num_steps=100000",
               "--config.log_every=1", "--config.eval_every=0",
               "--config.checkpoint_every=100000", "--workdir", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        metrics = tmp_path / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.exists() and metrics.stat().st_size):  # training steps are running
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        children = psutil.Process(process.pid).children(recursive=True)
        assert children  # Grain's worker process (and multiprocessing helpers)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output
    stopped = re.search(r"stopped after step (\d+) on request \(SIGTERM\) with checkpoint step "
                        r"(\d+): rerun the same command to go on", output)  # fmt: skip
    assert stopped and stopped.group(1) == stopped.group(2), output
    step = int(stopped.group(1))
    assert checkpoint.finished_steps(str(tmp_path / "checkpoints")) == [step]
    assert [r["step"] for r in read_metrics(str(metrics))][-1] == step  # logged once
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


@pytest.mark.parametrize(("name", "kind"), [("ssd300_voc", "voc"), ("ssd300_coco", "coco")])
def test_dataset_configs_start_training_on_local_folders(tmp_path, capsys, name, kind):
    """Also with an image of the folder that cannot be decoded, at
    data.max_unreadable_images = 1: replaced in the batch, counted on the progress
    line and in the metrics, listed at the end, left out of the evaluation."""
    shapes = SyntheticShapes(8, num_classes=4, image_size=(120, 160), seed=3)
    config = load_config(name)
    for split in ("train", "eval"):
        data = config.data[split]
        if kind == "voc":
            write_voc(str(tmp_path / "voc"), {"trainval": shapes})
            data.voc_splits = (f"{tmp_path / 'voc'}:trainval",)
        else:
            write_coco(str(tmp_path / "coco.json"), str(tmp_path / "images"), shapes)
            data.annotation_file, data.image_dir = (
                str(tmp_path / "coco.json"),
                str(tmp_path / "images"),
            )
    if kind == "voc":
        config.data.class_names = SHAPE_NAMES[:4]
    bad = tmp_path / (
        "voc/JPEGImages/trainval_000002.jpg" if kind == "voc" else "images/000002.jpg"
    )
    bad.write_bytes(b"\xff\xd8 not a JPEG any more")
    config.data.max_unreadable_images = 1
    config.model.width = 1 / 16
    config.batch_size, config.num_steps, config.data.num_workers = 8, 1, 0
    config.log_every = config.checkpoint_every = config.eval_every = 1
    config.eval_batches = 1
    train.train_and_evaluate(config, str(tmp_path / "run"))
    records = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert np.isfinite(records[0]["train/loss"]) and "eval/loss" in records[-1]
    assert records[0]["train/unreadable_images"] == 1 == records[-1]["eval/unreadable_images"]
    out = capsys.readouterr().out
    assert re.search(r"^train 1/1 loss .* img/s, 1 unreadable images ETA", out, re.M), out
    assert re.search(r"^eval at step 1: .* \(1 unreadable images left out\)$", out, re.M), out
    assert (
        "skipped 1 unreadable training images (the next readable image took their place): "
        f"[{str(bad)!r}]"
    ) in out
