"""Each extension point is one table: a new entry is all that a new dataset
format, metric, export format or importer needs for the configuration's
validation, the error messages and the library calls to take it."""

import json
import subprocess
import sys
import types

import numpy as np
import pytest
from flax import nnx

from ssd_jax import build, config_schema, exporters
from ssd_jax.data import formats
from ssd_jax.data.synthetic import SyntheticShapes
from ssd_jax.evaluation import scoring, voc
from ssd_jax.importers import detectors
from ssd_jax.models import backbones
from ssd_jax.models.vgg import ConvBlock
from tests.test_reliability import ROOT


def tiny_config():
    return config_schema.load_config_file(f"{ROOT}/configs/tiny.py")


def test_a_new_dataset_format_is_one_entry_with_its_keys(monkeypatch):
    def open_numbered(data, class_names):
        return SyntheticShapes(data.count, num_classes=2, image_size=(64, 64), seed=data.seed)

    monkeypatch.setitem(formats.FORMATS, "numbered", formats.Format(
        "numbered shapes: count", {"count": 0}, ("count",), open_numbered))  # fmt: skip
    config = tiny_config()
    config.data.train = config_schema.data_config("numbered")  # its key, with its default
    assert config.data.train.count == 0
    with pytest.raises(config_schema.ConfigError) as error:  # a required key left empty
        config_schema.validate(config)
    assert str(error.value).endswith(
        "data.train.count = 0: must be set: data.train.kind = 'numbered' reads numbered shapes: "
        "count"
    )
    config.data.train.count = 3
    config_schema.validate(config)
    assert len(build.source(config.data.train, None)) == 3

    monkeypatch.delitem(formats.FORMATS, "numbered")  # gone from the table: unknown
    with pytest.raises(config_schema.ConfigError, match="data.train.kind"):
        config_schema.validate(config)


def test_a_new_metric_is_one_entry(monkeypatch):
    def count(ground_truth, detections, class_names, *unused):
        return {"detections": float(sum(len(d.scores) for d in detections))}

    monkeypatch.setitem(scoring.METRICS, "count", scoring.Metric(
        "detections found", ("detections", "detections"), count))  # fmt: skip
    config = tiny_config()
    config.eval_metric = "count"
    config_schema.validate(config)
    gts = [voc.ImageGroundTruth(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0, bool))]
    dets = [voc.ImageDetections(np.zeros((2, 4)), np.array([0.9, 0.8]), np.array([1, 1]))]
    result = scoring.score(gts, dets, ["a"], "count")
    assert result == {"detections": 2.0}
    assert scoring.headline(result, "count") == ("detections", 2.0)
    config.eval_metric = "kitti"
    with pytest.raises(config_schema.ConfigError, match="eval_metric.*one of voc, coco, count"):
        config_schema.validate(config)


def test_a_new_export_format_is_one_entry_and_gets_the_shared_sidecar(monkeypatch, tmp_path):
    module = types.ModuleType("npz_export")
    module.to_bytes = lambda detector, scale=1: (b"x" * scale, {"runs_on": "numpy"})
    monkeypatch.setitem(sys.modules, "npz_export", module)
    monkeypatch.setitem(exporters.EXPORTERS, "npz", exporters.Exporter(
        "weights as NumPy", ".npz", "npz_export", ("scale",)))  # fmt: skip
    detector = types.SimpleNamespace(class_names=("a", "b"), image_size=300)
    info = exporters.export(detector, "npz", str(tmp_path / "out" / "d.npz"), scale=3)
    assert (tmp_path / "out" / "d.npz").read_bytes() == b"xxx"
    sidecar = json.loads((tmp_path / "out" / "d.npz.json").read_text())
    assert sidecar == info and sidecar["class_names"] == ["a", "b"]
    assert sidecar["image_size"] == 300 and sidecar["runs_on"] == "numpy"
    with pytest.raises(ValueError, match="unknown export format 'tflite': one of jax, onnx, npz"):
        exporters.export(detector, "tflite", str(tmp_path / "d.tflite"))


def test_the_export_command_takes_its_choices_and_flags_from_the_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ssd_jax.export", "--checkpoint", str(tmp_path), "--format",
         "tflite"], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "flag --format=tflite: value should be one of <jax|onnx>" in result.stderr


def test_a_new_importer_is_one_entry(monkeypatch):
    def from_mine(weights):  # what an importer returns: our variables and its info
        return {"vgg/conv1_1/conv/kernel": weights["conv1"]}, {"num_classes": 2}

    monkeypatch.setitem(detectors.IMPORTERS, "mine", from_mine)
    converted, info = detectors.import_detector("mine", {"conv1": np.zeros((3, 3, 3, 32))})
    assert info["width"] == 0.5 and len(info["class_names"]) == 2  # completed by the caller
    assert list(converted) == ["vgg/conv1_1/conv/kernel"]
    with pytest.raises(ValueError, match="unknown source 'caffe': one of pytorch_ssd, .*, mine"):
        detectors.import_detector("caffe", {})


class TwoMaps(nnx.Module):
    """A trunk: a stride-8 map of 8 channels and a stride-16 map of 16."""

    def __init__(self, *, width, batch_norm, dtype, param_dtype, rngs):
        kwargs = dict(batch_norm=batch_norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.down8 = ConvBlock(3, 8, 8, stride=8, padding=2, **kwargs)  # 300 -> 38
        self.down16 = ConvBlock(8, 16, 2, stride=2, **kwargs)
        self.out_features = (8, 16)

    def __call__(self, x):
        x8 = self.down8(x)
        return x8, self.down16(x8)


def test_a_new_backbone_is_one_entry(monkeypatch):
    extras = tuple(backbones.ExtraLayer(f"extra{k}", 8, 16, 3, 2, 1) for k in range(2))
    extras += tuple(backbones.ExtraLayer(f"extra{k}", 8, 16, 3, 1, 0) for k in (2, 3))
    monkeypatch.setitem(backbones.BACKBONES, "two_maps", backbones.Backbone(
        "two strided convs", "two", TwoMaps, {"ssd300": extras}))  # fmt: skip
    config = tiny_config()
    config.model.backbone = "two_maps"
    config_schema.validate(config)
    model = build.model(config.model, 3, 0)
    loc, conf = model(np.zeros((1, 300, 300, 3), np.float32))
    assert loc.shape == (1, 8732, 4) and conf.shape == (1, 8732, 4)  # the ssd300 layout
    assert "two" in nnx.to_pure_dict(nnx.state(model)) and model.trunk is model.two
    config.model.architecture = "ssd512"  # not one of this backbone's
    with pytest.raises(config_schema.ConfigError, match=r"model.architecture = 'ssd512': must be "
                                                        r"\('ssd300',\)"):  # fmt: skip
        config_schema.validate(config)
