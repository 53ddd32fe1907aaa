"""YOLO-format datasets (ssd_jax.data.yolo) on files the tests write: what a
source reads, each bad line named, and a training run on them."""

import os
import pathlib

import numpy as np
import pytest

from ssd_jax import build, config_schema, evaluator, train
from ssd_jax.data.example import DataError
from ssd_jax.data.synthetic import SHAPE_NAMES, SyntheticShapes, write_yolo
from ssd_jax.data.yolo import YoloSource, label_file
from tests.test_data_sources import assert_example_format, assert_same_content

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shapes():
    return {
        "train": SyntheticShapes(8, num_classes=3, image_size=(90, 120), seed=1),
        "val": SyntheticShapes(4, num_classes=3, image_size=(90, 120), seed=2),
    }


@pytest.fixture
def dataset(tmp_path, shapes):
    return write_yolo(str(tmp_path / "yolo"), shapes)


def test_a_yolo_split_reads_the_images_and_labels_written(dataset, shapes):
    """Boxes written as normalized cxcywh to 6 decimals come back as the xyxy
    boxes (to that rounding: 1e-6); YOLO class k is label k + 1."""
    source = YoloSource(dataset, "val")
    assert source.class_names == SHAPE_NAMES[:3] and len(source) == 4
    assert source.category_ids is None and source.annotation_file is None
    assert source.example_ids() == [f"images/val/{k:06d}.jpg" for k in range(4)]
    for k in range(4):
        assert_example_format(source[k])
        assert_same_content(source[k], shapes["val"][k])
        assert source[k]["image_id"] == k
    empty = sum(len(shapes["val"][k]["labels"]) == 0 for k in range(4))
    assert source.skipped == ({"image without usable objects (kept as background)": empty}
                              if empty else {})  # fmt: skip


def test_names_as_a_list_a_subset_of_classes_and_an_image_without_labels(dataset, shapes):
    data = pathlib.Path(dataset).read_text()
    names = "names: [" + ", ".join(SHAPE_NAMES[:3]) + "]\n"
    with open(dataset, "w") as file:  # the list form of names
        file.write(data.split("names:")[0] + names)
    os.remove(label_file(os.path.join(os.path.dirname(dataset), "images/train/000002.jpg")))
    kept = SHAPE_NAMES[2], SHAPE_NAMES[0]  # another order: labels follow it
    source = YoloSource(dataset, "train", class_names=kept)
    example, written = source[0], shapes["train"][0]
    wanted = np.isin(written["labels"], [3, 1])
    np.testing.assert_array_equal(example["labels"], np.where(written["labels"] == 3, 1, 2)[wanted])
    assert len(source[2]["labels"]) == 0  # no label file: no objects
    unlisted = sum(int((shapes["train"][k]["labels"] == 2).sum()) for k in range(8) if k != 2)
    background = sum(
        1 for k in range(8) if k == 2 or not np.isin(shapes["train"][k]["labels"], [3, 1]).any()
    )
    assert source.skipped == {
        "object of unlisted class": unlisted,
        "image without usable objects (kept as background)": background,
    }


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        ("names: circle", "'names' must be a list of class names or a dict 0..K-1 -> name, "
                          "got 'circle'"),
        ("names: []", "'names' must be a list of class names"),
        ("names: [circle, square, circle]", "'names' holds ['circle'] more than once"),
        ("names: {0: circle, 2: square}", "'names' keys must be the classes 0..1"),
        ("names: [circle, square", "malformed YAML in "),
    ],
)  # fmt: skip
def test_a_data_file_with_bad_names_is_one_line_naming_it(dataset, names, problem):
    data = pathlib.Path(dataset).read_text()
    pathlib.Path(dataset).write_text(data.split("names:")[0] + names + "\n")
    with pytest.raises(DataError) as error:
        YoloSource(dataset, "train")
    assert problem in str(error.value) and "\n" not in str(error.value)


def test_class_names_none_means_the_datasets_own_list():
    config = config_schema.load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    for given in (None, (), (None,)):  # (None,): what --config.data.class_names=None gives
        config.data.class_names = given
        assert build.class_names(config.data) is None
    config.data.class_names = ("circle",)
    assert build.class_names(config.data) == ("circle",)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("0 0.5 0.5 0.2", "expected 'class cx cy w h', got 4 fields: '0 0.5 0.5 0.2'"),
        ("0 0.5 0.5 0.2 0.2 0.1", "expected 'class cx cy w h', got 6 fields"),
        ("a 0.5 0.5 0.2 0.2", "not numbers: 'a 0.5 0.5 0.2 0.2'"),
        ("3 0.5 0.5 0.2 0.2", "class 3 is not one of the data file's classes 0..2"),
        ("1.5 0.5 0.5 0.2 0.2", "class 1.5 is not one of the data file's classes 0..2"),
        ("nan 0.5 0.5 0.2 0.2", "class nan is not one of the data file's classes 0..2"),
        ("inf 0.5 0.5 0.2 0.2", "class inf is not one of the data file's classes 0..2"),
        ("0 0.5 1.2 0.2 0.2", "cx cy w h must lie in [0, 1]: '0 0.5 1.2 0.2 0.2'"),
        ("0 0.5 0.5 -0.1 0.2", "cx cy w h must lie in [0, 1]"),
    ],
)
def test_a_bad_label_line_is_an_error_naming_file_and_line(dataset, line, problem):
    labels = label_file(os.path.join(os.path.dirname(dataset), "images/val/000001.jpg"))
    with open(labels, "a") as file:
        file.write("\n" + line + "\n")
    count = len(pathlib.Path(labels).read_text().splitlines())
    with pytest.raises(DataError) as error:
        YoloSource(dataset, "val")
    assert str(error.value).startswith(f"{labels} line {count}: {problem}")


def test_data_files_and_splits_that_are_not_there_are_named(dataset, tmp_path):
    with pytest.raises(DataError, match=r"has no 'test' split; it has \['train', 'val'\]"):
        YoloSource(dataset, "test")
    with pytest.raises(DataError, match="YOLO data file not found"):
        YoloSource(str(tmp_path / "missing.yaml"), "train")
    with pytest.raises(DataError, match=r"class_names \['dog'\] are not classes of .*: name "):
        YoloSource(dataset, "val", class_names=("circle", "dog"))
    with pytest.raises(DataError, match=r"class_names \['circle', 'circle'\] name a class twice"):
        YoloSource(dataset, "val", class_names=("circle", "circle"))
    (tmp_path / "list.txt").write_text("images/val/000001.jpg\nimages/val/000003.jpg\n")
    with open(dataset, "a") as file:  # a split as a list file
        file.write(f"test: {tmp_path / 'list.txt'}\n")
    assert YoloSource(dataset, "test").example_ids() == [
        "images/val/000001.jpg", "images/val/000003.jpg"
    ]  # fmt: skip


def test_a_yolo_dataset_trains_and_evaluates_end_to_end(dataset, tmp_path):
    config = config_schema.load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    for split, name in (("train", "train"), ("eval", "val")):
        config.data[split] = config_schema.data_config("yolo")
        config.data[split].yolo_data, config.data[split].yolo_split = dataset, name
    config.data.class_names = None  # the data file's names
    config.num_steps, config.checkpoint_every, config.eval_every = 2, 2, 2
    state = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert int(state["step"]) == 2
    result = evaluator.evaluate_checkpoint(str(tmp_path / "run")).metrics  # its own eval split
    assert 0 <= result["map"] <= 1 and np.isfinite(result["loss"])


def test_a_yolo_split_without_its_data_file_is_a_configuration_error():
    config = config_schema.load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    config.data.train = config_schema.data_config("yolo")
    with pytest.raises(config_schema.ConfigError) as error:
        config_schema.validate(config)
    assert str(error.value).splitlines()[1:] == [
        f"  data.train.{key} = '': must be set: data.train.kind = 'yolo' reads a YOLO "
        "data.yaml and its images/labels folders: yolo_data, yolo_split"
        for key in ("yolo_data", "yolo_split")
    ]
