"""What goes wrong in long runs and user hands, and what happens then (the
README's "Failure modes"): each case reproduced and shown handled."""

import gc
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ssd_jax import checkpoint, config_schema, divergence, inference, train
from ssd_jax.data.example import DataError
from ssd_jax.log_window import LogWindow
from ssd_jax.metrics_writer import MetricsWriter, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "data", "checkpoint_v0.1")


def tiny_config():
    return config_schema.load_config_file(os.path.join(ROOT, "configs", "tiny.py"))


def test_config_values_that_cannot_work_are_all_named_before_anything_runs(tmp_path):
    config = tiny_config()
    config.log_every, config.checkpoint_every, config.num_steps = 0, -1, 0
    config.optimizer.name, config.detection.nms_iou_threshold = "adamw", 1.5
    with pytest.raises(config_schema.ConfigError) as error:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert str(error.value).splitlines() == [
        "the configuration cannot work:",
        "  num_steps = 0: must be at least 1",
        "  log_every = 0: must be at least 1",
        "  checkpoint_every = -1: must be at least 1",
        "  optimizer.name = 'adamw': must be 'sgd' or 'adam'",
        "  detection.nms_iou_threshold = 1.5: must be in (0, 1]",
    ]
    assert not (tmp_path / "run").exists()


# Every rule of config_schema.validate at its edge: (key, the last value that
# works, the first that does not, the line for that one).
CONFIG_EDGES = [
    ("num_steps", 1, 0, "at least 1"),
    ("batch_size", 1, 0, "at least 1"),
    ("log_every", 1, 0, "at least 1"),
    ("checkpoint_every", 1, 0, "at least 1"),
    ("eval_every", 0, -1, "0 (no evaluation) or more"),
    ("eval_batches", 0, -1, "0 (the whole split) or more"),
    ("keep_checkpoints", 1, 0, "at least 1"),
    ("eval_metric", "coco", "map", "one of voc, coco"),
    ("on_nonfinite", "rollback", "skip", "'stop' or 'rollback'"),
    ("rollback.max_times", 1, 0, "at least 1"),
    ("rollback.learning_rate_factor", 1.0, 0.0, "in (0, 1]"),
    (
        "model.backbone",
        "vgg16",
        "resnet51",
        "('vgg16', 'mobilenet_v3_large', 'mobilenet_v3_large_reduced_tail', 'resnet18', "
        "'resnet34', 'resnet50', 'resnet101', 'resnet152')",
    ),
    (
        "model.architecture",
        "ssd512",
        "ssd600",
        "('ssd300', 'ssd512', 'ssdlite320')",
    ),  # any backbone's
    ("model.default_boxes", "ssd512_pytorch_ssd", "ssd300_paper", None),
    ("model.dtype", "bfloat16", "float16", "'float32' or 'bfloat16'"),
    ("model.width", 1e-3, 0.0, "positive"),
    ("data.train.kind", "synthetic", "imagenet", "('voc', 'coco', 'yolo', 'tfds', 'synthetic')"),
    ("data.eval.kind", "synthetic", "imagenet", "('voc', 'coco', 'yolo', 'tfds', 'synthetic')"),
    ("data.max_boxes", 1, 0, "at least 1"),
    ("data.augment_on", "device", "gpu", "('auto', 'host', 'device')"),
    ("data.decode_max_side", 16, 15, "at least 16"),
    ("data.num_workers", 0, -1, "0 (in process) or more"),
    ("data.max_unreadable_images", 0, -1, "0 or more"),
    ("optimizer.name", "adam", "adamw", "'sgd' or 'adam'"),
    ("optimizer.learning_rate", 1e-9, 0.0, "positive"),
    ("optimizer.schedule", "cosine", "linear", "('step', 'cosine')"),
    ("optimizer.warmup_steps", 0, -1, "0 or more"),
    ("optimizer.gamma", 1e-9, 0.0, "positive"),
    ("optimizer.momentum", 0.0, 1.0, "in [0, 1)"),
    ("optimizer.weight_decay", 0.0, -1e-9, "0 or more"),
    ("optimizer.weight_decay_on", "all_but_norm", "biases", "('kernels', 'all', 'all_but_norm')"),
    ("optimizer.grad_clip_norm", 0.0, -1e-9, "0 (off) or more"),
    ("loss.match_iou_threshold", 1.0, 0.0, "in (0, 1]"),
    ("loss.neg_pos_ratio", 1e-9, 0.0, "positive"),
    ("loss.alpha", 0.0, -1e-9, "0 or more"),
    ("loss.normalization", "image", "images", "('batch', 'image')"),
    ("detection.score_threshold", 0.0, 1.0, "in [0, 1)"),
    ("detection.nms_iou_threshold", 1.0, 0.0, "in (0, 1]"),
    ("detection.top_k_per_class", 1, 0, "at least 1"),
    ("detection.max_detections", 1, 0, "at least 1"),
]
# the other end of the intervals: (key, the first value past it)
CONFIG_UPPER_EDGES = [
    ("rollback.learning_rate_factor", 1.0 + 1e-9, "in (0, 1]"),
    ("optimizer.momentum", -1e-9, "in [0, 1)"),
    ("loss.match_iou_threshold", 1.0 + 1e-9, "in (0, 1]"),
    ("detection.score_threshold", -1e-9, "in [0, 1)"),
    ("detection.nms_iou_threshold", 1.0 + 1e-9, "in (0, 1]"),
]


def test_every_config_rule_holds_at_its_edge():
    from ssd_jax.default_boxes import PRESETS

    def with_values(values):
        config = tiny_config()
        for key, value in values:
            *parents, name = key.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node[name] = value
        return config

    config_schema.validate(with_values([(key, good) for key, good, _, _ in CONFIG_EDGES]))
    presets = f"'' or one of {sorted(PRESETS)}"  # the architecture is wrong too
    for edges in ([(key, bad, what) for key, _, bad, what in CONFIG_EDGES], CONFIG_UPPER_EDGES):
        with pytest.raises(config_schema.ConfigError) as error:
            config_schema.validate(with_values([(key, bad) for key, bad, _ in edges]))
        assert str(error.value).splitlines() == ["the configuration cannot work:"] + [
            f"  {key} = {bad!r}: must be {what or presets}" for key, bad, what in edges
        ]


def test_default_boxes_of_another_layout_are_refused_naming_those_that_fit():
    config = tiny_config()
    config.model.backbone, config.model.default_boxes = "resnet50", "ssdlite320"
    with pytest.raises(config_schema.ConfigError) as error:
        config_schema.validate(config)
    assert str(error.value).splitlines()[1:] == [
        "  model.default_boxes = 'ssdlite320': must be '' or a preset of the ssd300 layout: "
        "ssd300, ssd300_nvidia, ssd300_pytorch_ssd, ssd300_ssd_pytorch, ssd300_ssd_pytorch_coco, "
        "ssd300_torchvision"
    ]


def test_an_empty_eval_split_stops_before_training(tmp_path):
    from ssd_jax import parallel
    from ssd_jax.data.synthetic import SyntheticShapes
    from ssd_jax.evaluator import Evaluator

    config = tiny_config()
    config.data.eval.num_images = 0
    with pytest.raises(DataError, match="the eval split holds no image: check config.data.eval"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    one_image = SyntheticShapes(1, num_classes=3, image_size=(96, 96), seed=1)
    evaluator = Evaluator(None, one_image, image_size=300, batch_size=8, max_boxes=8,
                          metric="voc", mesh=parallel.make_data_mesh())  # fmt: skip
    assert evaluator.num_images == 1  # one image is a split


def test_a_resume_with_another_network_normalization_or_data_names_the_differences(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    saved = checkpoint.read_meta(checkpoint.locate(str(tmp_path / "run")))
    config = checkpoint.saved_config(saved)
    with config.unlocked():
        config.num_steps = 151
        config.model.width = 1 / 16
        config.data.mean = (0.0, 0.0, 0.0)
        config.data.train.num_images = 32
    with pytest.raises(checkpoint.CheckpointError) as error:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    lines = str(error.value).splitlines()
    assert lines[0] == f"{tmp_path / 'run'} holds a run of another configuration (saved -> now):"
    assert lines[1] == f"  mean: {saved['mean']!r} -> [0.0, 0.0, 0.0]"
    assert lines[2] == "  config.model.width: 0.03125 -> 0.0625"
    assert lines[3].startswith("  config.data.train: {") and "'num_images': 16" in lines[3]
    assert lines[4] == (
        f"To train the new configuration from its weights, give another --workdir and "
        f"--config.init.checkpoint={tmp_path / 'run'}"
    )
    assert checkpoint.locate(str(tmp_path / "run")).step == 150  # nothing written
    with open(tmp_path / "run" / "checkpoints" / "150" / "meta" / "metadata") as file:
        assert json.load(file) == saved  # the meta is untouched


def test_a_resume_refuses_each_change_of_network_normalization_or_data_on_its_own():
    """Each key a resume must keep, changed alone, is one line (architecture also
    changes the default boxes it implies); the same class names in another order
    are other labels. What a resume may change (steps, eval data) is no difference,
    nor is a data key added to the schema since the checkpoint was written."""
    saved = checkpoint.read_meta(checkpoint.locate(FIXTURE))

    def differences(**changes):
        config = checkpoint.saved_config(saved)
        with config.unlocked():
            for key, value in changes.items():
                *parents, name = key.split("__")
                node = config
                for parent in parents:
                    node = node[parent]
                node[name] = value
        meta = checkpoint.meta_for(config, config.data.class_names, "/another/workdir")
        return checkpoint.resume_differences(saved, meta)

    assert differences(num_steps=300, data__eval__seed=7) == []
    assert differences(data__class_names=("square", "circle", "triangle")) == [
        "class_names: ['circle', 'square', 'triangle'] -> ['square', 'circle', 'triangle']"
    ]
    assert differences(data__class_names=("circle", "square")) == [
        "class_names: ['circle', 'square', 'triangle'] -> ['circle', 'square']"
    ]
    # the fixture predates the backbone key: it reads as VGG16, and another is refused
    assert differences(model__backbone="mobilenet") == ["backbone: 'vgg16' -> 'mobilenet'"]
    # a backbone with BatchNorm in any case leaves model.batch_norm out
    assert differences(model__backbone="resnet50", model__batch_norm=False) == [
        "backbone: 'vgg16' -> 'resnet50'"
    ]
    assert differences(model__architecture="ssd512") == [
        "architecture: 'ssd300' -> 'ssd512'",
        "default_boxes: 'ssd300' -> 'ssd512'",
    ]
    assert differences(model__default_boxes="ssd300_torchvision") == [
        "default_boxes: 'ssd300' -> 'ssd300_torchvision'"
    ]
    assert differences(data__mean=(0.0, 0.0, 0.0)) == [
        "mean: [123.675, 116.28, 103.53] -> [0.0, 0.0, 0.0]"
    ]
    assert differences(data__std=(1.0, 1.0, 1.0)) == [
        "std: [58.395, 57.12, 57.375] -> [1.0, 1.0, 1.0]"
    ]
    assert differences(model__batch_norm=False) == ["config.model.batch_norm: True -> False"]
    assert differences(model__width=0.0625) == ["config.model.width: 0.03125 -> 0.0625"]
    train_data = saved["config"]["data"]["train"]
    assert differences(data__train__seed=2) == [
        f"config.data.train: {train_data!r} -> {dict(train_data, seed=2)!r}"
    ]
    older = json.loads(json.dumps(saved))  # written before data.train had max_size
    del older["config"]["data"]["train"]["max_size"]
    config = checkpoint.saved_config(saved)
    meta = checkpoint.meta_for(config, config.data.class_names, "/another/workdir")
    assert checkpoint.resume_differences(older, meta) == []


def test_metrics_hold_each_step_once_after_a_resume(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    for step in (2, 4, 6):
        writer.write(step, {"loss": float(step)})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('{"step": 8, "train/lo')  # a write cut short by a kill
    writer = MetricsWriter(str(tmp_path), start_step=3)  # resumed from the checkpoint at 3
    writer.write(4, {"loss": 40.0})
    writer.close()
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r["train/loss"]) for r in records] == [(2, 2.0), (4, 40.0)]


def test_coco_files_with_repeated_or_dangling_ids_are_refused(tmp_path):
    from ssd_jax.data.sources import CocoSource
    from ssd_jax.data.synthetic import SyntheticShapes, write_coco

    write_coco(str(tmp_path / "coco.json"), str(tmp_path / "images"),
               SyntheticShapes(3, num_classes=2, image_size=(40, 60), seed=0))  # fmt: skip
    with open(tmp_path / "coco.json") as file:
        dataset = json.load(file)
    second = dataset["images"][1]["id"]  # its annotations lose their image:
    dataset["images"][1]["id"] = dataset["images"][0]["id"]  # two images, one id
    dataset["images"][2]["file_name"] = dataset["images"][0]["file_name"]
    dataset["annotations"][0]["image_id"] = 999
    with open(tmp_path / "bad.json", "w") as file:
        json.dump(dataset, file)
    first = dataset["images"][0]
    with pytest.raises(DataError) as error:
        CocoSource(str(tmp_path / "bad.json"), str(tmp_path / "images"))
    assert str(error.value) == (
        f"{tmp_path / 'bad.json'}: repeated image ids [{first['id']}]; repeated file names "
        f"[{first['file_name']!r}]; annotations of unknown image ids {sorted([999, second])}"
    )


def test_dataset_images_keep_their_stored_pixels_whatever_exif_says(tmp_path):
    """A photo tagged "rotate 90°" (EXIF orientation 6): the dataset's boxes refer
    to the stored pixels, so sources read those; predict shows it upright."""
    from PIL import Image

    from ssd_jax.data.example import read_image_rgb
    from ssd_jax.data.sources import VocSource
    from ssd_jax.data.synthetic import SyntheticShapes, write_voc

    shapes = SyntheticShapes(1, num_classes=2, image_size=(40, 64), seed=0)
    write_voc(str(tmp_path / "voc"), {"train": shapes})
    jpeg = tmp_path / "voc" / "JPEGImages" / "train_000000.jpg"
    stored = read_image_rgb(str(jpeg))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    Image.fromarray(stored).save(jpeg, quality=100, exif=exif)
    stored = np.asarray(Image.open(jpeg).convert("RGB"))  # the pixels as stored
    assert stored.shape == (40, 64, 3)
    np.testing.assert_array_equal(read_image_rgb(str(jpeg)), stored)
    upright = read_image_rgb(str(jpeg), exif_orientation=True)
    assert upright.shape == (64, 40, 3)
    np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))
    example = VocSource([(str(tmp_path / "voc"), "train")], class_names=shapes.class_names)[0]
    np.testing.assert_array_equal(example["image"], stored)  # no size mismatch, no rotation
    from ssd_jax import predict

    seen = []  # what predict gives the detector: the photo upright
    detector = lambda image, threshold: seen.append(image) or []  # noqa: E731
    predict.predict_image(detector, str(jpeg), str(tmp_path / "drawn.jpg"), 0.5)
    np.testing.assert_array_equal(seen[0], upright)


def test_a_diverging_run_never_saves_a_non_finite_state(tmp_path):
    """The learning rate explodes after step 2. With the loss looked at only when
    it is logged (here at the last step), NaN weights went into the checkpoints of
    the steps before; the check before each save stops the run at the first step
    that is not finite, and every checkpoint left holds finite variables."""
    config = tiny_config()
    config.optimizer.milestones, config.optimizer.gamma = (2,), 1e12
    config.num_steps, config.eval_every = 12, 0
    config.checkpoint_every, config.log_every, config.keep_checkpoints = 1, 100, 20
    with pytest.raises(train.NonFiniteLossError) as error:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    steps = checkpoint.finished_steps(str(tmp_path / "run" / "checkpoints"))
    assert steps == list(range(1, steps[-1] + 1)) and len(steps) < config.num_steps
    assert f"last good checkpoint: step {steps[-1]} (only finite states are saved)" in str(
        error.value
    )
    meta = checkpoint.read_meta(checkpoint.locate(str(tmp_path / "run")))
    for step in steps:
        location = checkpoint.Location(str(tmp_path / "run" / "checkpoints"), step)
        _, variables = inference.restore_network(location, checkpoint.saved_config(meta))
        assert divergence.all_finite(variables), step


def test_a_non_finite_gradient_norm_or_parameter_stops_the_save():
    """The loss may still be finite when the gradient norm overflows, or when the
    update of the last step made the parameters overflow: no checkpoint then."""
    from types import SimpleNamespace

    saved = []
    run = SimpleNamespace(
        state={"params": {"w": np.ones(3, np.float32)}, "batch_stats": {}},
        checkpoints=SimpleNamespace(save=lambda step, *_: saved.append(step)),
        iterator=None,
        meta={},
        train_ids=[],
    )
    batch = {"num_truncated": np.zeros(8, np.int32), "num_unreadable": np.zeros(8, np.int32)}
    window = LogWindow()
    window.add(3, {"loss": 2.0, "loc": 1.5, "conf": 0.5, "grad_norm": 4.0}, batch)
    train.save_finite(run, 3, window, None)
    window.add(4, {"loss": 2.0, "loc": 1.5, "conf": 0.5, "grad_norm": float("inf")}, batch)
    with pytest.raises(train.NonFiniteLossError) as error:
        train.save_finite(run, 4, window, 3)
    assert str(error.value).startswith(
        "loss is 2.0 (loc 1.5, conf 0.5, gradient norm inf) at step 4; last good checkpoint: "
        "step 3 (only finite states are saved)"
    )
    run.state["params"]["w"][1] = np.inf
    with pytest.raises(train.NonFiniteLossError) as error:
        train.save_finite(run, 5, LogWindow(), 3)
    assert str(error.value).startswith(
        "the parameters are not finite after step 5; last good checkpoint: step 3"
    )
    assert saved == [3]


def test_rollback_goes_back_past_the_bad_batches_at_a_lower_rate_and_a_resume_keeps_it(
    tmp_path, capsys
):
    """From step 3 on the rate is 1e12 times too high. With on_nonfinite='rollback'
    the run goes back to the last checkpoint, skips the batches up to the first
    bad step and goes on at 1e-12 times the rate (the sane rate again): it ends
    finite, each step once in the metrics; a resume keeps the lowered rate."""
    config = tiny_config()
    config.optimizer.warmup_steps, config.optimizer.milestones = 0, (2,)
    config.optimizer.gamma, config.rollback.learning_rate_factor = 1e12, 1e-12
    config.on_nonfinite, config.num_steps, config.eval_every = "rollback", 5, 0
    config.checkpoint_every, config.log_every, config.keep_checkpoints = 2, 1, 20
    workdir = tmp_path / "run"
    state = train.train_and_evaluate(config, str(workdir))
    assert divergence.all_finite({part: state[part] for part in checkpoint.VARIABLE_PARTS})
    (event,) = checkpoint.read_meta(checkpoint.locate(str(workdir)))["rollbacks"]
    assert event["restored"] == 2 and event["step"] > 2 and event["learning_rate_scale"] == 1e-12
    assert (
        f"rolled back to step 2 (1 of 3 rollbacks), skipping the batches of steps 3-{event['step']}"
        in capsys.readouterr().out
    )
    # the data iterator went past the skipped batches: one batch per step, and those
    position = json.loads(
        (workdir / "checkpoints" / "5" / "data" / "process_0-of-1.json").read_text()
    )
    assert position["next_index"] == 5 + event["step"] - 2
    records = [r for r in read_metrics(str(workdir / "metrics.jsonl")) if "train/loss" in r]
    assert [r["step"] for r in records] == list(range(1, 6))
    rates = [r["train/learning_rate"] for r in records]
    # 1e-3 scaled to batch 8; steps 1-2, then 1e12 * 1e-12 times that
    np.testing.assert_allclose(rates, [2.5e-4] * 5, rtol=1e-6)

    config.num_steps = 6  # a resume goes on at the lowered rate
    train.train_and_evaluate(config, str(workdir))
    assert len(checkpoint.read_meta(checkpoint.locate(str(workdir)))["rollbacks"]) == 1
    records = [r for r in read_metrics(str(workdir / "metrics.jsonl")) if "train/loss" in r]
    np.testing.assert_allclose(records[-1]["train/learning_rate"], 2.5e-4, rtol=1e-6)


def test_rollbacks_stop_when_used_up_or_when_nothing_was_saved_yet():
    config = tiny_config()
    config.on_nonfinite, config.rollback.max_times = "rollback", 2
    config.rollback.learning_rate_factor = 0.5
    meta = {}
    rollbacks = divergence.Rollbacks(config, meta)
    assert rollbacks.record(divergence.NonFiniteLossError("loss is nan", 7, 4)) == 4
    assert rollbacks.record(divergence.NonFiniteLossError("loss is nan", 9, 4)) == 4
    assert rollbacks.learning_rate_scale == 0.25
    assert meta["rollbacks"] == [
        {"step": 7, "restored": 4, "learning_rate_scale": 0.5},
        {"step": 9, "restored": 4, "learning_rate_scale": 0.25},
    ]
    with pytest.raises(
        divergence.NonFiniteLossError, match=r"after 2 rollbacks \(rollback.max_times = 2\)"
    ):
        rollbacks.record(divergence.NonFiniteLossError("loss is nan", 9, 4))
    with pytest.raises(divergence.NonFiniteLossError, match="no checkpoint to roll back to"):
        divergence.Rollbacks(config, {}).record(divergence.NonFiniteLossError("nan", 1, None))
    config.on_nonfinite = "stop"
    error = divergence.NonFiniteLossError("loss is nan", 7, 4)
    with pytest.raises(divergence.NonFiniteLossError) as raised:
        divergence.Rollbacks(config, {}).record(error)
    assert raised.value is error


@pytest.mark.slow
def test_kill_9_at_random_moments_then_a_rerun_ends_bitwise_equal_to_an_uninterrupted_run(
    tmp_path,
):
    """SIGKILL twice at random moments of a run that saves every step (so kills
    land in checkpoint writes too), then the same command to the end: the final
    variables equal an uninterrupted run's bit for bit."""
    overrides = {"num_steps": 6, "checkpoint_every": 1, "log_every": 1, "eval_every": 0}
    config = tiny_config()
    config.update(overrides)
    reference = train.train_and_evaluate(config, str(tmp_path / "reference"))
    workdir = tmp_path / "killed"
    command = [sys.executable, "-m", "ssd_jax.train", "--config", "configs/tiny.py",
               "--workdir", str(workdir), *(f"--config.{k}={v}" for k, v in overrides.items())]  # fmt: skip
    # the same 8 CPU devices as this process, so that the programs are the same
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8", "JAX_PLATFORMS": "cpu"}
    moments = random.Random()
    for kill_from_step in (2, 4):
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            for line in process.stdout:  # progress lines: "train 3/6 loss ..."
                done = re.search(r"^train (\d+)/6 ", line)
                if done and int(done.group(1)) >= kill_from_step:
                    time.sleep(moments.uniform(0, 1))  # within the next step or two
                    break
        finally:
            process.kill()
            process.wait()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)

    location = checkpoint.locate(str(workdir))
    assert location.step == 6
    template = {part: reference[part] for part in checkpoint.VARIABLE_PARTS}
    expected = [np.asarray(x) for x in jax.tree.leaves(template)]
    variables = checkpoint.restore_variables(location, template)  # in place
    for ours, theirs in zip(jax.tree.leaves(variables), expected, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), theirs)


@pytest.fixture(scope="module")
def detector():
    return inference.load_detector(FIXTURE)


def write_images(folder, names, seed=0):
    import cv2

    from ssd_jax.data.synthetic import SyntheticShapes

    folder.mkdir(parents=True, exist_ok=True)
    shapes = SyntheticShapes(len(names), num_classes=3, image_size=(60, 80), seed=seed)
    for k, name in enumerate(names):
        cv2.imwrite(str(folder / name), cv2.cvtColor(shapes[k]["image"], cv2.COLOR_RGB2BGR))
    return {name: (folder / name).read_bytes() for name in names}


def test_predict_never_writes_into_its_inputs_nor_over_its_own_outputs(tmp_path, detector):
    from ssd_jax import predict
    from ssd_jax.errors import UserError

    originals = write_images(tmp_path / "photos", ["a.jpg", "a.png", "b.jpg"])
    (tmp_path / "link").symlink_to(tmp_path / "photos")
    for output in (tmp_path / "photos", tmp_path / "photos" / ".", tmp_path / "link"):
        with pytest.raises(UserError, match="is the folder of the inputs: give another folder"):
            predict.predict(detector, str(tmp_path / "photos"), str(output), 0.3)
    with pytest.raises(UserError, match="is the folder of the inputs"):  # one image, its folder
        predict.predict(detector, str(tmp_path / "photos" / "b.jpg"), str(tmp_path / "photos"), 0.3)
    assert {n: (tmp_path / "photos" / n).read_bytes() for n in originals} == originals
    assert sorted(os.listdir(tmp_path / "photos")) == ["a.jpg", "a.png", "b.jpg"]

    report = predict.predict(detector, str(tmp_path / "photos"), str(tmp_path / "out"), 0.3)
    assert sorted(os.listdir(tmp_path / "out")) == [
        "a_jpg.jpg", "a_png.jpg", "b.jpg", "detections.json"
    ]  # fmt: skip
    assert len(report["detections"]) == 3
    (tmp_path / "not_a_folder").write_text("")
    with pytest.raises(UserError, match="cannot write to the output folder"):
        predict.predict(detector, str(tmp_path / "photos"), str(tmp_path / "not_a_folder"), 0.3)


def test_a_failed_write_stops_predict_and_keeps_what_was_done(tmp_path, detector, monkeypatch):
    import cv2

    from ssd_jax import predict
    from ssd_jax.errors import UserError

    write_images(tmp_path / "photos", ["a.jpg", "b.jpg", "c.jpg"])
    written, imwrite = [], cv2.imwrite

    def imwrite_until_disk_full(path, image):
        written.append(path)
        return len(written) < 2 and imwrite(path, image)

    monkeypatch.setattr(predict.cv2, "imwrite", imwrite_until_disk_full)
    with pytest.raises(UserError, match=r"cannot write .*b\.jpg"):
        predict.predict(detector, str(tmp_path / "photos"), str(tmp_path / "out"), 0.3)
    with open(tmp_path / "out" / "detections.json") as file:
        kept = json.load(file)["detections"]
    assert list(kept) == [str(tmp_path / "photos" / "a.jpg")]


def damage(step_folder, how):
    """Cuts the largest array file of a step short, or empties its data-iterator JSON."""
    if how == "truncated array file":
        files = [p for p in (step_folder / "state").rglob("*") if p.is_file()]
        largest = max(files, key=lambda p: p.stat().st_size)
        largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 3])
    else:
        (step_folder / "data" / "process_0-of-1.json").write_text("")


# A failed array read makes Orbax abandon its other reads in flight; Python reports
# those coroutines when they are collected (collected below, inside this test).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncated array file", "empty iterator state"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_goes_on(tmp_path, capsys, how):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    shutil.copytree(run / "checkpoints" / "150", run / "checkpoints" / "160")  # a later step
    damage(run / "checkpoints" / "160", how)
    config = checkpoint.saved_config(checkpoint.read_meta(checkpoint.locate(str(run), 150)))
    with config.unlocked():
        config.num_steps = 170
    checkpoints = run / "checkpoints"
    if how == "truncated array file":  # (inference reads no iterator state)
        with pytest.raises(checkpoint.DamagedCheckpointError) as error:
            inference.load_detector(str(run))  # inference never moves files: it says so
        assert str(error.value).startswith(f"{checkpoints} step 160 is damaged or incomplete (")
        assert str(error.value).endswith("); its steps: [150, 160]")  # --step picks another
    setup = train.setup(config, str(run))
    setup.close()
    out = capsys.readouterr().out
    assert f"warning: {run / 'checkpoints'} step 160 is damaged or incomplete" in out
    assert f"set aside as {run / 'checkpoints' / '160.damaged'}; going on from step 150" in out
    assert int(setup.state["step"]) == 150
    assert sorted(os.listdir(run / "checkpoints")) == ["150", "160.damaged"]  # kept for a look

    shutil.copytree(checkpoints / "150", checkpoints / "160")  # damaged again, later
    damage(checkpoints / "160", how)
    train.setup(config, str(run)).close()
    assert sorted(os.listdir(checkpoints)) == ["150", "160.damaged", "160.damaged1"]

    damage(checkpoints / "150", how)  # nothing intact left: each damaged step named
    shutil.copytree(checkpoints / "150", checkpoints / "155")
    with pytest.raises(checkpoint.DamagedCheckpointError) as error:
        train.setup(config, str(run))
    message = str(error.value)
    assert message.startswith(f"no intact checkpoint to resume from: {checkpoints} step 155 is")
    assert f"its steps: [150, 155]; {checkpoints} step 150 is damaged or incomplete (" in message
    assert sorted(os.listdir(checkpoints)) == ["150", "155", "160.damaged", "160.damaged1"]
    gc.collect()


def test_a_checkpoint_of_another_optimizer_is_refused_not_taken_for_damage(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    config = checkpoint.saved_config(checkpoint.read_meta(checkpoint.locate(str(tmp_path / "run"))))
    with config.unlocked():
        config.num_steps, config.optimizer.name = 151, "sgd"  # the run used Adam
    with pytest.raises(checkpoint.CheckpointError) as error:
        train.setup(config, str(tmp_path / "run"))
    assert type(error.value) is checkpoint.CheckpointError  # not a DamagedCheckpointError
    assert str(error.value).startswith(
        f"{tmp_path / 'run' / 'checkpoints'} step 150 holds a train state of other shapes ("
    )
    assert os.listdir(tmp_path / "run" / "checkpoints") == ["150"]


def test_a_data_iterator_state_of_an_unknown_format_is_named_not_taken_for_damage(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    config = checkpoint.saved_config(checkpoint.read_meta(checkpoint.locate(str(tmp_path / "run"))))
    with config.unlocked():
        config.num_steps = 151
    (tmp_path / "run/checkpoints/150/data/process_0-of-1.json").write_text('{"position": 150}')
    with pytest.raises(checkpoint.CheckpointError, match="unknown data-iterator state.*Grain"):
        train.setup(config, str(tmp_path / "run"))
    assert os.listdir(tmp_path / "run" / "checkpoints") == ["150"]


def voc_with_a_corrupt_image(root, count=8):
    """A VOC-style folder of ``count`` shapes images; image 2's JPEG is garbage."""
    from ssd_jax.data.synthetic import SyntheticShapes, write_voc

    shapes = SyntheticShapes(count, num_classes=3, image_size=(60, 80), seed=4)
    write_voc(str(root), {"trainval": shapes})
    bad = root / "JPEGImages" / "trainval_000002.jpg"
    bad.write_bytes(b"\xff\xd8 not a JPEG any more")
    return shapes.class_names, bad


def test_an_unreadable_image_is_replaced_in_training_and_left_out_of_evaluation(tmp_path, caplog):
    from ssd_jax.data import pipeline
    from ssd_jax.data.sources import VocSource

    class_names, bad = voc_with_a_corrupt_image(tmp_path / "voc")
    source = VocSource([(str(tmp_path / "voc"), "trainval")], class_names=class_names)
    warning = f"skipped: cannot decode image (corrupt or not an image): {bad}"
    # Evaluation first: the training iterator's threads go on reading ahead (and
    # warning again) after its last batch is taken, which would add to the count.
    batch = next(pipeline.make_iterator(pipeline.eval_dataset(source, image_size=300,
                                                              batch_size=8)))  # fmt: skip
    assert batch["unreadable"].tolist() == [k == 2 for k in range(8)]
    assert batch["is_padding"].tolist() == batch["unreadable"].tolist()  # scored as padding
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [warning]
    caplog.clear()

    batches = pipeline.make_iterator(
        pipeline.train_dataset(source, image_size=300, batch_size=4, seed=0, augment=False)
    )
    seen = [next(batches) for _ in range(4)]  # two epochs of two batches
    assert sum(int(b["num_unreadable"].sum()) for b in seen) == 2  # once per epoch
    indices = {int(i) for b in seen for i in b["unreadable_index"] if i >= 0}
    assert indices == {2} and source.image_file(2) == str(bad)
    assert all(b["image"].shape == (4, 300, 300, 3) for b in seen)
    assert {r.getMessage() for r in caplog.records if r.levelname == "WARNING"} == {warning}


def test_unreadable_training_images_count_once_each_and_stop_the_run_past_the_limit():
    from types import SimpleNamespace

    from ssd_jax.data.pipeline import UnreadableImages

    source = SimpleNamespace(image_file=lambda index: f"img{index}.jpg")
    unreadable = UnreadableImages(source, limit=2)
    unreadable.add({"unreadable_index": np.array([-1, 0, -1, 5])})
    unreadable.add({"unreadable_index": np.array([5, 0, -1, -1])})  # the same two again
    assert unreadable.names() == ["img0.jpg", "img5.jpg"]  # at the limit: the run goes on
    with pytest.raises(DataError) as error:
        unreadable.add({"unreadable_index": np.array([-1, -1, 3, -1])})
    assert str(error.value) == (
        "3 training images cannot be read, more than data.max_unreadable_images = 2: "
        "['img0.jpg', 'img3.jpg', 'img5.jpg']; fix or remove them, or raise the limit"
    )


def test_training_stops_past_max_unreadable_images_naming_them(tmp_path):
    class_names, bad = voc_with_a_corrupt_image(tmp_path / "voc")
    config = tiny_config()
    for split in ("train", "eval"):
        config.data[split].kind = "voc"
        config.data[split].voc_splits = (f"{tmp_path / 'voc'}:trainval",)
    config.data.class_names, config.data.augment = class_names, False
    config.data.max_unreadable_images = 0
    with pytest.raises(DataError) as error:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert str(error.value) == (
        f"1 training images cannot be read, more than data.max_unreadable_images = 0: "
        f"[{str(bad)!r}]; fix or remove them, or raise the limit"
    )


def test_evaluation_leaves_an_unreadable_image_out_and_says_so(tmp_path):
    from ssd_jax import parallel
    from ssd_jax.evaluator import make_evaluator

    # 7 images: one batch of 8 with a padding example beside the unreadable one
    voc_with_a_corrupt_image(tmp_path / "voc", count=7)  # the shapes classes, as the fixture
    location = checkpoint.locate(FIXTURE)
    config = checkpoint.saved_config(checkpoint.read_meta(location))
    with config.unlocked():
        config.data.eval = config_schema.data_config("voc")
        config.data.eval.voc_splits = (f"{tmp_path / 'voc'}:trainval",)
    graphdef, variables = inference.restore_network(location, config)
    mesh = parallel.make_data_mesh()
    variables = jax.device_put(variables, parallel.replicated(mesh))
    result = make_evaluator(config, graphdef, mesh)(variables).metrics
    assert result["unreadable_images"] == 1 and 0 <= result["map"] <= 1


def test_a_weights_file_given_as_checkpoint_points_to_convert(tmp_path):
    weights = tmp_path / "nvidia_ssdpyt.pt"
    weights.write_bytes(b"not a folder")
    with pytest.raises(checkpoint.CheckpointError, match=r"is a file, not an ssd_jax checkpoint: "
                       r"import a PyTorch detector with python -m ssd_jax.convert"):  # fmt: skip
        checkpoint.locate(str(weights))
