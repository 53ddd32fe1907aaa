import os
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
from flax import nnx, traverse_util

from ssd_jax import default_boxes, optim, parallel, train
from ssd_jax.configs import load_config_file
from ssd_jax.data.synthetic import SHAPE_NAMES, SyntheticShapes, write_coco, write_voc
from ssd_jax.metrics_writer import read_metrics
from ssd_jax.train_step import StepSettings, init_train_state, make_train_step

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
    if name.startswith("ssd"):
        assert config.optimizer.name == "sgd"
        assert config.batch_size == 32 and config.optimizer.learning_rate == 1e-3
        assert config.optimizer.weight_decay == 5e-4 and config.optimizer.warmup_steps == 500
        coco = "coco" in name
        assert config.num_steps == (400_000 if coco else 120_000)
        assert tuple(config.optimizer.milestones) == (
            (280_000, 360_000) if coco else (80_000, 100_000)
        )
        assert config.model.architecture == name[:6]


def test_unknown_config_key_fails(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ssd_jax.train", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
         "--config.optimizer.learning_rte=0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and "learning_rte" in result.stderr


def test_schedule_warmup_and_steps():
    schedule = optim.step_schedule(0.1, warmup_steps=4, milestones=(10, 20), gamma=0.1)
    values = [float(schedule(jnp.asarray(s))) for s in (0, 1, 3, 9, 10, 19, 20, 100)]
    np.testing.assert_allclose(values, [0.025, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def tiny_batch(batch_size, seed=0):
    source = SyntheticShapes(
        batch_size, num_classes=3, image_size=(300, 300), max_objects=3, seed=seed
    )
    from ssd_jax.data.pipeline import pad_objects

    examples = [source[i] for i in range(batch_size)]
    padded = [pad_objects(e["boxes"], e["labels"], 4) for e in examples]
    return {
        "image": np.stack([e["image"] for e in examples]),
        "boxes": np.stack([p["boxes"] for p in padded]),
        "labels": np.stack([p["labels"] for p in padded]),
        "mask": np.stack([p["mask"] for p in padded]),
    }


def test_sharded_train_step_equals_single_device_step_and_compiles_once():
    """The jitted step over 8 devices (batch sharded, state replicated) gives the
    same loss, updated parameters and BN statistics as on one device; and with
    static shapes everywhere and output shardings equal to the input ones, the
    training loop's step (fed its own donated output) never recompiles. (Sharded
    gradients without BN are compared tightly in test_parallel.py.)"""
    model = train.SSD("ssd300", 3, width=1 / 16, batch_norm=True, rngs=nnx.Rngs(0))
    schedule = optim.step_schedule(1e-3, 2, (2,), 0.1)
    optimizer = optim.make_optimizer("sgd", schedule)
    graphdef, state = init_train_state(model, optimizer)
    priors = default_boxes.generate(default_boxes.preset("ssd300"))
    step_fn = make_train_step(graphdef, optimizer, schedule, StepSettings(priors))
    batch = tiny_batch(8)
    device = jax.devices()[0]
    one_state, one_metrics = jax.jit(step_fn)(
        jax.device_put(state, device), jax.device_put(batch, device)
    )
    mesh = parallel.make_data_mesh()
    step = jax.jit(step_fn, donate_argnums=0)
    all_state, all_metrics = step(
        jax.device_put(state, parallel.replicated(mesh)), parallel.shard_batch(batch, mesh)
    )
    np.testing.assert_allclose(all_metrics["loss"], one_metrics["loss"], rtol=1e-5)
    for part in ("params", "batch_stats"):
        for one, full in zip(jax.tree.leaves(one_state[part]), jax.tree.leaves(all_state[part])):
            np.testing.assert_allclose(full, one, rtol=1e-5, atol=1e-5)
    assert int(all_state["step"]) == 1

    state = all_state
    for seed in (1, 2):  # different images and object counts, same shapes
        state, metrics = step(state, parallel.shard_batch(tiny_batch(8, seed=seed), mesh))
    assert np.isfinite(float(metrics["loss"])) and int(state["step"]) == 3
    assert step._cache_size() == 1


def params_of(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state["params"]))]


def test_resumed_run_reaches_the_same_parameters_and_writes_outputs(tmp_path):
    config = load_config("tiny")
    workdir = str(tmp_path / "run")
    final = params_of(train.train_and_evaluate(config, workdir))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]
    assert any("eval/loss" in r and 0 <= r["eval/map"] <= 1 for r in records)
    assert os.path.getsize(os.path.join(workdir, "learning_curve.png")) > 1000
    assert os.listdir(os.path.join(workdir, "tensorboard"))

    # "kill" the run between the checkpoints at 3 and 6, then rerun the same command
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    resumed = params_of(train.train_and_evaluate(config, workdir))
    for a, b in zip(final, resumed):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)

    # fine-tuning to another class count: trunk restored, confidence heads fresh
    fine_tune = load_config("tiny")
    fine_tune.data.class_names = SHAPE_NAMES[:2]
    fine_tune.init.checkpoint = os.path.join(workdir, "checkpoints")
    fine_tune.num_steps = 0
    state = train.train_and_evaluate(fine_tune, str(tmp_path / "fine_tune"))
    trained = train.train_and_evaluate(config, workdir)  # already done: returns the restored state
    conv = lambda s: np.asarray(s["params"]["vgg"]["conv1_1"]["conv"]["kernel"][...])  # noqa: E731
    np.testing.assert_array_equal(conv(state), conv(trained))
    assert (
        state["params"]["conf_heads"][0]["kernel"][...].shape[-1] == 4 * 3
    )  # 2 classes + background


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    config = load_config("tiny")
    config.optimizer.milestones = (4,)
    config.optimizer.gamma = 1e12  # the learning rate explodes after step 4
    with pytest.raises(
        train.NonFiniteLossError, match=r"at step \d+ .*last good checkpoint: step 3"
    ):
        train.train_and_evaluate(config, str(tmp_path))


def test_sigterm_stops_training_and_its_grain_workers(tmp_path):
    # Found in use: a training run stopped with `kill` left its Grain worker
    # processes running. SIGTERM must unwind through train_and_evaluate's cleanup.
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
    assert process.returncode == 128 + signal.SIGTERM, output
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


@pytest.mark.parametrize(("name", "kind"), [("ssd300_voc", "voc"), ("ssd512_coco", "coco")])
def test_dataset_configs_start_training_on_local_folders(tmp_path, name, kind):
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
    config.model.width = 1 / 16
    config.batch_size, config.num_steps, config.data.num_workers = 8, 1, 0
    config.log_every = config.checkpoint_every = config.eval_every = 1
    config.eval_batches = 1
    train.train_and_evaluate(config, str(tmp_path / "run"))
    records = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert np.isfinite(records[0]["train/loss"]) and "eval/loss" in records[-1]


def test_backbone_weights_load_into_the_trunk(tmp_path):
    donor = train.SSD("ssd300", 3, width=1 / 16, rngs=nnx.Rngs(1))
    weights = {
        f"vgg/{name}": np.asarray(value)
        for name, value in traverse_util.flatten_dict(
            nnx.to_pure_dict(nnx.state(donor.vgg)), sep="/"
        ).items()
    }
    np.savez(tmp_path / "vgg.npz", **weights)
    model = train.SSD("ssd300", 3, width=1 / 16, rngs=nnx.Rngs(0))
    head_before = np.asarray(model.conf_heads[0].kernel[...]).copy()
    train.load_backbone(model, str(tmp_path / "vgg.npz"))
    np.testing.assert_array_equal(
        model.vgg.conv5_3.conv.kernel[...], donor.vgg.conv5_3.conv.kernel[...]
    )
    np.testing.assert_array_equal(
        model.vgg.conv4_3_norm.scale[...], donor.vgg.conv4_3_norm.scale[...]
    )
    np.testing.assert_array_equal(model.conf_heads[0].kernel[...], head_before)  # heads untouched
    np.savez(tmp_path / "bad.npz", **{"vgg/conv1_1/conv/kernel": np.zeros((3, 3, 3, 1))})
    with pytest.raises(ValueError, match="has shape"):
        train.load_backbone(model, str(tmp_path / "bad.npz"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """configs/tiny.py trained for 3 steps: a workdir with checkpoints."""
    config = load_config("tiny")
    config.num_steps = 3
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train.train_and_evaluate(config, str(workdir))
    return workdir


def test_evaluate_command_scores_a_checkpoint(tmp_path, trained_run):
    output = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "-m", "ssd_jax.evaluate", "--checkpoint", str(trained_run / "checkpoints"),
         "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    scores = json.loads(output.read_text())
    assert set(scores) == {"map", "map_area", "ap/circle", "ap/square", "ap/triangle"}
    assert 0 <= scores["map"] <= 1 and "triangle" in result.stdout
    # the same checkpoint with the COCO metric (ground truth built from the records)
    result = subprocess.run(
        [sys.executable, "-m", "ssd_jax.evaluate", "--checkpoint", str(trained_run / "checkpoints"),
         "--output", str(output), "--metric", "coco"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(output.read_text())
    assert {"AP", "AP50", "AR100", "ap/circle"} <= set(scores) and "AP_small" in result.stdout


def test_predict_command_draws_detections_and_skips_bad_files(tmp_path, trained_run):
    import json

    import cv2

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
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "ssd_jax.predict", "--checkpoint", str(trained_run / "checkpoints"),
         "--input", str(images), "--output", str(out), "--score_threshold", "0.0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stdout and "broken.jpg" in result.stdout
    report = json.loads((out / "detections.json").read_text())
    assert report["skipped"] == [str(images / "broken.jpg"), str(images / "broken.mp4")]
    frames = [key for key in report["detections"] if "clip.avi#" in key]
    assert frames == [f"{images / 'clip.avi'}#{k}" for k in range(11)]
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 11
    ok, first = capture.read()
    assert ok and first.shape == (90, 140, 3)
    detections = report["detections"][str(images / "shapes.png")]
    assert len(detections) > 0  # threshold 0: the untrained model still ranks boxes
    for d in detections:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 140 and 0 <= y0 <= y1 <= 90  # original pixels
        assert d["class"] in SHAPE_NAMES[:3] and 0 <= d["score"] <= 1
    drawn = cv2.imread(str(out / "shapes.jpg"))
    assert drawn.shape == (90, 140, 3)


def test_detector_batches_equal_single_images(trained_run):
    from ssd_jax.predict import Detector, draw_detections

    detector = Detector(str(trained_run / "checkpoints"), batch_size=2)
    images = [
        SyntheticShapes(3, num_classes=3, image_size=size, seed=8)[k]["image"]
        for k, size in enumerate([(90, 140), (300, 300), (64, 200)])
    ]
    batched = detector.detect_batch(images, score_threshold=0.0)  # batches of 2, last padded
    for image, found in zip(images, batched):
        single = detector(image, score_threshold=0.0)
        assert [d["class"] for d in single] == [d["class"] for d in found]
        np.testing.assert_allclose([d["box"] for d in single], [d["box"] for d in found], atol=0.15)
        assert all(d["class"] == SHAPE_NAMES[d["label"] - 1] for d in found)
    drawn = draw_detections(images[0], batched[0][:3])
    assert drawn.shape == images[0].shape and (drawn != images[0]).any()
    with pytest.raises(ValueError, match="image 0: expected uint8"):
        detector(images[0].astype(np.float32))


EXPORTED_RUNNER = """
import sys
import jax, numpy as np
with open(sys.argv[1], "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
found = exported.call(np.load(sys.argv[2]))
assert not [m for m in sys.modules if m.startswith(("ssd_jax", "flax"))]
np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in found.items()})
"""


def test_exported_detector_runs_without_the_model_code(tmp_path, trained_run):
    from ssd_jax import export
    from ssd_jax.predict import Detector

    exported, info = export.export_detector(str(trained_run / "checkpoints"))
    export.save(exported, info, str(tmp_path / "detector.jaxexport"))
    size = info["image_size"]
    images = np.stack(
        [SyntheticShapes(3, 3, image_size=(size, size), seed=9)[k]["image"] for k in range(3)]
    )
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run(
        [sys.executable, "-c", EXPORTED_RUNNER, "detector.jaxexport", "images.npy", "out.npz"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    found = np.load(tmp_path / "out.npz")
    detector = Detector(str(trained_run / "checkpoints"))
    expected = detector._detect(detector._state, images)
    assert int(found["num_detections"].sum()) > 0
    for name in ("boxes_xyxy", "scores", "classes", "valid", "num_detections"):
        np.testing.assert_allclose(found[name], np.asarray(getattr(expected, name)), atol=1e-5)
    reloaded, reloaded_info = export.load(str(tmp_path / "detector.jaxexport"))
    assert reloaded_info["class_names"] == list(SHAPE_NAMES[:3])
    assert reloaded.in_avals[0].dtype == np.uint8


def test_evaluate_config_takes_the_network_from_the_checkpoint():
    from ssd_jax.evaluate import with_checkpoint_model

    saved = load_config("shapes")  # as saved with a checkpoint
    saved.model.default_boxes = "ssd300_torchvision"
    saved.data.mean, saved.data.std = (123.0, 117.0, 104.0), (1.0, 1.0, 1.0)
    saved.detection.top_k_per_class = 400
    given = load_config("ssd300_voc")
    given.data.eval.voc_splits = ("/data/VOC2007:test",)
    merged = with_checkpoint_model(given, saved)
    assert merged.model.width == 0.125 and merged.model.default_boxes == "ssd300_torchvision"
    assert merged.data.class_names == SHAPE_NAMES[:4] and merged.data.std == (1.0, 1.0, 1.0)
    assert merged.detection.top_k_per_class == 400
    assert merged.data.eval.voc_splits == ("/data/VOC2007:test",)  # the data stays the given one
    assert given.model.width == 1.0  # the given config itself is untouched
