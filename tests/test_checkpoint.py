"""The run directory on disk (ssd_jax.checkpoint): finding checkpoints, reading
what travels with them, restoring weights without an optimizer, writing imported
detectors, backbones, and a checkpoint written before the entry-layer rework."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from ssd_jax import build, checkpoint, config_schema, inference, parallel, train
from ssd_jax.data.augment import resize
from ssd_jax.data.synthetic import SHAPE_NAMES, SyntheticShapes
from ssd_jax.evaluator import make_evaluator
from ssd_jax.models import SSD
from ssd_jax.steps import normalize_images, split_model
from tests import cross_version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "data", "checkpoint_v0.1")
with open(os.path.join(FIXTURE, "expected.json")) as file:
    EXPECTED = json.load(file)


def eval_images(count):
    """The fixture's eval split (its configuration's synthetic data)."""
    split = SyntheticShapes(16, 3, image_size=(160, 160), max_objects=2, seed=1, min_size=0.2)
    return [split[k]["image"] for k in range(count)]


@pytest.fixture
def run_copy(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    return tmp_path / "run"


def test_locate_takes_a_run_its_checkpoints_folder_or_one_step(run_copy):
    expected = checkpoint.Location(str(run_copy / "checkpoints"), 150)
    for path in (run_copy, run_copy / "checkpoints", run_copy / "checkpoints" / "150"):
        assert checkpoint.locate(str(path)) == expected
    assert checkpoint.locate(str(run_copy), step=150) == expected
    with pytest.raises(checkpoint.CheckpointError, match=r"has no step 3; it has steps \[150\]"):
        checkpoint.locate(str(run_copy), step=3)
    with pytest.raises(checkpoint.CheckpointError, match="is step 150, but step 7"):
        checkpoint.locate(str(run_copy / "checkpoints" / "150"), step=7)
    # an unfinished write (Orbax's temporary folder) is not a checkpoint
    shutil.copytree(run_copy / "checkpoints" / "150",
                    run_copy / "checkpoints" / "300.orbax-checkpoint-tmp-1")  # fmt: skip
    assert checkpoint.locate(str(run_copy)).step == 150


def test_a_run_keeps_its_newest_keep_checkpoints(tmp_path):
    """keep_checkpoints = 2: after steps 1-4 are saved, steps 3 and 4 are left."""
    from ssd_jax.data import pipeline

    shapes = SyntheticShapes(4, 3, image_size=(32, 32), seed=0)
    iterator = pipeline.make_iterator(
        pipeline.train_dataset(shapes, image_size=32, batch_size=4, seed=0)
    )
    checkpoints = checkpoint.TrainingCheckpoints(str(tmp_path), keep=2)
    for step in range(1, 5):
        state, meta = {"w": np.full(2, step, np.float32)}, {"step": step}
        checkpoints.save(step, state, iterator, meta, train_ids=["0", "1", "2", "3"])
    checkpoints.close()
    assert checkpoint.finished_steps(str(tmp_path / "checkpoints")) == [3, 4]


def test_locate_says_what_it_looked_for_and_creates_nothing(tmp_path):
    missing = tmp_path / "runs" / "shapse"
    with pytest.raises(checkpoint.CheckpointError, match="does not exist: give a run's --workdir"):
        checkpoint.locate(str(missing))
    assert not (tmp_path / "runs").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.locate(str(tmp_path / "empty"))
    assert str(tmp_path / "empty" / "checkpoints") in str(error.value)
    assert os.listdir(tmp_path / "empty") == []


def test_a_checkpoint_from_before_the_rework_gives_the_same_network_and_detections():
    """tests/data/checkpoint_v0.1 (see its README): the network's raw outputs, the
    detections of four images, and the eval loss and the VOC and COCO results on
    its eval split (now from one forward pass, then from two) are those the code
    that wrote it computed."""
    location = checkpoint.locate(FIXTURE)
    config = checkpoint.saved_config(checkpoint.read_meta(location))
    graphdef, variables = inference.restore_network(location, config)
    model = nnx.merge(graphdef, variables["params"], variables["batch_stats"])
    model.eval()
    image = resize(eval_images(1)[0], 300)[None]
    loc, conf = model(normalize_images(image, config.data.mean, config.data.std, jnp.float32))
    outputs = np.load(os.path.join(FIXTURE, "expected_outputs.npz"))
    # float32 sums in another order (another CPU, another XLA kernel) through 15
    # convolutions of up to 3 * 3 * 1024 / 32 products: rounding errors of about
    # sqrt(15 * 288) * eps = 8e-6 of the outputs' scale, whatever the size of an
    # output itself (measured: 2.6e-5 on an output of -0.08, the scale being 15; a
    # wrong network differs by the scale)
    for ours, name in ((loc[0], "loc"), (conf[0], "conf")):
        scale = np.abs(outputs[name]).max()
        np.testing.assert_allclose(ours, outputs[name], rtol=0, atol=1e-5 * scale)

    detector = inference.load_detector(FIXTURE)
    found = detector.detect_batch(eval_images(4), score_threshold=0.35)
    expected = EXPECTED["detections_at_0.35"]
    assert [[d["class"] for d in image] for image in found] == [
        [d["class"] for d in image] for image in expected
    ]
    for ours, theirs in zip(
        (d for image in found for d in image), (d for image in expected for d in image)
    ):
        # records are rounded to 0.1 pixel and 1e-4: allow one rounding step
        np.testing.assert_allclose(ours["box"], theirs["box"], atol=0.1 + 1e-3)
        assert abs(ours["score"] - theirs["score"]) <= 1e-4 + 1e-6

    mesh = parallel.make_data_mesh()
    with config.unlocked():
        config.detection.score_threshold = 0.35  # margins: see the fixture's README
        config.eval_batches = 0
    replicated = jax.device_put(variables, parallel.replicated(mesh))
    for metric in ("voc", "coco"):
        result = make_evaluator(config, graphdef, mesh, metric)(replicated).metrics
        for name, value in EXPECTED["at_score_threshold_0.35"][metric].items():
            assert result[name] == pytest.approx(value, rel=1e-9), name
        # the loss from the same forward pass: float32 sums in another order
        for name, value in EXPECTED["eval_loss"].items():
            assert result[name] == pytest.approx(value, rel=1e-5), name


def test_a_run_resumes_from_a_checkpoint_from_before_the_rework(run_copy, capsys):
    """Set up on the old run directory, a run takes its state and data position
    (training steps after a resume: tests/test_train.py)."""
    location = checkpoint.locate(str(run_copy))
    config = checkpoint.saved_config(checkpoint.read_meta(location))
    with config.unlocked():
        config.num_steps = 151
    run = train.setup(config, str(run_copy))
    try:
        assert f"resumed from {run_copy / 'checkpoints'} at step 150" in capsys.readouterr().out
        assert int(run.state["step"]) == 150
        _, saved = inference.restore_network(location, config)
        np.testing.assert_array_equal(flat_params(run.state)["vgg/conv4_3/conv/kernel"],
                                      flat_params(saved)["vgg/conv4_3/conv/kernel"])  # fmt: skip
        assert run.iterator.get_state()["next_index"] == 150  # where the old run stopped
        moments = [x for x in jax.tree.leaves(run.state["opt_state"]) if x.dtype.kind == "f"]
        assert moments and all(np.abs(x).max() > 0 for x in moments)  # Adam's, not fresh zeros
    finally:
        run.close()


def tiny_variables(num_classes, seed, architecture="ssd300"):
    model = SSD(architecture, num_classes, width=1 / 32, batch_norm=True, rngs=nnx.Rngs(seed))
    return split_model(model)[1]


def flat_params(variables):
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(variables["params"]))
    return {"/".join(map(str, key)): value for key, value in flat.items()}


def test_restore_is_strict_for_inference_and_keeps_new_heads_for_fine_tuning():
    location = checkpoint.locate(FIXTURE)
    _, saved = inference.restore_network(
        location, checkpoint.saved_config(checkpoint.read_meta(location))
    )
    two_classes = tiny_variables(2, seed=5)
    fresh_head = np.asarray(flat_params(two_classes)["conf_heads/0/kernel"]).copy()
    shapes = r"params/conf_heads/0/bias has shape \(16,\) there, the model's has shape \(12,\)"
    with pytest.raises(checkpoint.CheckpointError, match=shapes):
        checkpoint.restore_variables(location, two_classes)
    config = checkpoint.saved_config(checkpoint.read_meta(location))
    with config.unlocked():
        config.data.class_names = SHAPE_NAMES[:2]
    with pytest.raises(checkpoint.CheckpointError, match=shapes):
        inference.restore_network(location, config)  # evaluate's, predict's and export's
    two_classes = tiny_variables(2, seed=5)
    checkpoint.restore_variables(location, two_classes, strict=False)
    ours, theirs = flat_params(two_classes), flat_params(saved)
    np.testing.assert_array_equal(
        ours["vgg/conv1_1/conv/kernel"], theirs["vgg/conv1_1/conv/kernel"]
    )
    np.testing.assert_array_equal(ours["loc_heads/0/kernel"], theirs["loc_heads/0/kernel"])
    np.testing.assert_array_equal(ours["conf_heads/0/kernel"], fresh_head)
    ssd512 = tiny_variables(3, seed=5, architecture="ssd512")
    del ssd512["params"]["conf_heads"], ssd512["params"]["loc_heads"]  # its 7 heads differ
    with pytest.raises(checkpoint.CheckpointError, match="params/conv12_1/bn/bias is not in it"):
        checkpoint.restore_variables(location, ssd512)


def test_an_imported_detector_is_variables_and_meta_only(tmp_path):
    config = config_schema.base_config()
    config.model.width, config.model.batch_norm = 1 / 32, True
    config.data.class_names = SHAPE_NAMES[:3]
    model = build.model(config.model, 3, seed=3)
    graphdef, variables = split_model(model)
    meta = checkpoint.meta_for(config, SHAPE_NAMES[:3], str(tmp_path))
    location = checkpoint.write_detector(str(tmp_path / "imported"), variables, meta)
    assert location == checkpoint.Location(str(tmp_path / "imported" / "checkpoints"), 0)
    assert sorted(os.listdir(tmp_path / "imported" / "checkpoints" / "0")) == [
        "_CHECKPOINT_METADATA", "commit_success.txt", "meta", "state"
    ]  # fmt: skip
    loaded = inference.load_detector(str(tmp_path / "imported"))
    direct = inference.Detector(graphdef, variables, build.step_settings(config),
                                SHAPE_NAMES[:3], 300)  # fmt: skip
    images = np.stack([resize(image, 300) for image in eval_images(2)])
    for name, value in direct.detect_resized(images)._asdict().items():
        np.testing.assert_array_equal(getattr(loaded.detect_resized(images), name), value)


def test_saved_configurations_read_on_todays_schema():
    saved = {"loss": {"iou_threshold": 0.6, "alpha": 2.0}, "model": {"gone": 1}, "old": 3}
    config = config_schema.from_saved(saved)
    assert config.loss.match_iou_threshold == 0.6 and config.loss.alpha == 2.0
    assert config.detection.nms_iou_threshold == 0.45  # added since: the default
    assert "old" not in config and "gone" not in config.model
    meta = checkpoint.read_meta(checkpoint.locate(FIXTURE))
    assert meta["config"]["data"]["class_names"] == list(SHAPE_NAMES[:3])
    config = checkpoint.saved_config(meta | {"class_names": ["a", "b", "c"]})
    assert config.data.class_names == ("a", "b", "c")  # the meta's list is the truth


def test_evaluation_config_takes_the_network_from_the_checkpoint():
    saved = config_schema.base_config()  # as saved with a checkpoint
    saved.model.width, saved.model.default_boxes = 0.125, "ssd300_torchvision"
    saved.data.class_names = SHAPE_NAMES[:4]
    saved.data.mean, saved.data.std = (123.0, 117.0, 104.0), (1.0, 1.0, 1.0)
    saved.detection.top_k_per_class = 400
    given = config_schema.base_config()
    given.data.eval.voc_splits = ("/data/VOC2007:test",)
    merged = config_schema.with_network_of(given, saved)
    assert merged.model.width == 0.125 and merged.model.default_boxes == "ssd300_torchvision"
    assert merged.data.class_names == SHAPE_NAMES[:4] and merged.data.std == (1.0, 1.0, 1.0)
    assert merged.detection.top_k_per_class == 400
    assert merged.data.eval.voc_splits == ("/data/VOC2007:test",)  # the data stays the given one
    assert given.model.width == 1.0  # the given config itself is untouched


def test_backbone_weights_load_into_the_trunk_with_their_normalization(tmp_path):
    donor = SSD("ssd300", 3, width=1 / 16, rngs=nnx.Rngs(1))
    weights = {
        f"vgg/{name}": np.asarray(value)
        for name, value in traverse_util.flatten_dict(
            nnx.to_pure_dict(nnx.state(donor.vgg)), sep="/"
        ).items()
    }
    np.savez(tmp_path / "vgg.npz", **weights)
    assert checkpoint.backbone_normalization(str(tmp_path / "vgg.npz")) is None
    np.savez(tmp_path / "caffe.npz", **weights, **{
        "normalization/mean": np.array([123.0, 117.0, 104.0]),
        "normalization/std": np.ones(3)})  # fmt: skip
    normalization = checkpoint.backbone_normalization(str(tmp_path / "caffe.npz"))
    assert normalization == ((123.0, 117.0, 104.0), (1.0, 1.0, 1.0))
    model = SSD("ssd300", 3, width=1 / 16, rngs=nnx.Rngs(0))
    head_before = np.asarray(model.conf_heads[0].kernel[...]).copy()
    checkpoint.load_backbone(model, str(tmp_path / "caffe.npz"))
    np.testing.assert_array_equal(
        model.vgg.conv5_3.conv.kernel[...], donor.vgg.conv5_3.conv.kernel[...]
    )
    np.testing.assert_array_equal(
        model.vgg.conv4_3_norm.scale[...], donor.vgg.conv4_3_norm.scale[...]
    )
    np.testing.assert_array_equal(model.conf_heads[0].kernel[...], head_before)  # heads untouched
    # through training: the run starts from the trunk, with its normalization
    config = config_schema.load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    config.init.backbone = str(tmp_path / "caffe.npz")
    run = train.setup(config, str(tmp_path / "run"))
    run.close()
    assert run.config.data.mean == (123.0, 117.0, 104.0) and run.config.data.std == (1, 1, 1)
    assert run.meta["mean"] == [123.0, 117.0, 104.0]  # what a resume and predict read
    np.testing.assert_array_equal(
        run.state["params"]["vgg"]["conv5_3"]["conv"]["kernel"][...],
        donor.vgg.conv5_3.conv.kernel[...],
    )
    np.savez(tmp_path / "bad.npz", **{"vgg/conv1_1/conv/kernel": np.zeros((3, 3, 3, 1))})
    with pytest.raises(checkpoint.CheckpointError, match="has shape"):
        checkpoint.load_backbone(model, str(tmp_path / "bad.npz"))
    with pytest.raises(checkpoint.CheckpointError, match="no backbone weights file"):
        checkpoint.backbone_normalization(str(tmp_path / "missing.npz"))


def test_checkpoints_cross_interpreters_and_jax_versions_both_ways(tmp_path):
    """A checkpoint written by the Python 3.11 stack (jax 0.10) restores on the
    newest (Python 3.13, jax 0.12) and back: the same parameters bit for bit
    (Orbax's files and the NNX variable tree read the same), the same network
    outputs up to float32 sums in another order (other XLA versions fuse
    differently; at most 3 * 3 * 64 products per sum in this 1/16-width network).
    Part of the newest-stack suite: .ci/run sets SSD_JAX_OTHER_PYTHON to the
    floor's interpreter."""
    other_python = os.environ.get("SSD_JAX_OTHER_PYTHON")
    if not other_python:
        if os.environ.get("CI") and sys.version_info >= (3, 12):
            pytest.fail("CI runs this with SSD_JAX_OTHER_PYTHON (see .ci/run)")
        pytest.skip("set SSD_JAX_OTHER_PYTHON to another interpreter with ssd_jax installed")
    ours, theirs, arrays = tmp_path / "ours", tmp_path / "theirs", tmp_path / "theirs.npz"
    cross_version.train_tiny(str(ours))
    command = [other_python, cross_version.__file__, str(theirs), str(arrays), str(ours)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    other = np.load(arrays)
    for k, workdir in enumerate((theirs, ours)):
        here = cross_version.restored(str(workdir))
        np.testing.assert_array_equal(here["variables"], other[f"{k}/variables"])
        for name in ("loc", "conf"):
            np.testing.assert_allclose(here[name], other[f"{k}/{name}"], rtol=1e-4, atol=1e-5)


def test_a_backbones_normalization_reads_back_as_the_configuration_states_it(tmp_path):
    """Stored as float32 in the .npz, read back as the decimals a configuration
    holds: a resume that leaves init.backbone off compares equal."""
    from ssd_jax.checkpoint import variables
    from ssd_jax.data.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
    from ssd_jax.importers.backbone import record_arrays

    path = tmp_path / "trunk.npz"
    np.savez(path, **record_arrays({"mean": IMAGENET_MEAN_RGB, "std": IMAGENET_STD_RGB}))
    assert variables.backbone_normalization(str(path)) == (
        tuple(IMAGENET_MEAN_RGB),
        tuple(IMAGENET_STD_RGB),
    )
