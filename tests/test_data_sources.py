import json
import os

import numpy as np
import pytest

from ssd_jax.data import example as example_lib
from ssd_jax.data.classes import COCO_CATEGORY_IDS, VOC_CLASSES
from ssd_jax.data.example import DataError
from ssd_jax.data.sources import CocoSource, TfdsSource, VocSource
from ssd_jax.data.synthetic import SHAPE_NAMES, SyntheticShapes, write_coco, write_voc
from tests import tfds_fixture


def assert_example_format(example):
    assert set(example) == set(example_lib.FIELDS)
    n = len(example["labels"])
    image = example["image"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[:2] == (example["height"], example["width"])
    assert example["boxes"].dtype == np.float32 and example["boxes"].shape == (n, 4)
    assert example["labels"].dtype == np.int32 and (example["labels"] >= 1).all()
    assert example["difficult"].dtype == bool and example["difficult"].shape == (n,)
    assert example["is_crowd"].dtype == bool and example["is_crowd"].shape == (n,)
    assert example["image_id"].dtype == np.int64
    assert example["height"].dtype == example["width"].dtype == np.int32
    boxes = example["boxes"]
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()


def jpeg_round_trip(image_rgb):
    import cv2

    _, data = cv2.imencode(
        ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
    )
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def assert_same_content(got, want):
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-6)
    np.testing.assert_array_equal(got["labels"], want["labels"])
    assert (got["height"], got["width"]) == (want["height"], want["width"])
    # images went through JPEG (quality 95); decoders may differ by a level or two
    error = np.abs(got["image"].astype(float) - jpeg_round_trip(want["image"]).astype(float))
    assert error.mean() < 1.0


@pytest.fixture(scope="module")
def shapes():
    return {
        "trainval": SyntheticShapes(6, num_classes=4, image_size=(120, 160), seed=1),
        "test": SyntheticShapes(3, num_classes=4, image_size=(120, 160), seed=2),
    }


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory, shapes):
    root = str(tmp_path_factory.mktemp("voc") / "VOC2007")
    write_voc(root, shapes)
    return root


def test_synthetic_examples_have_the_format(shapes):
    for index in range(len(shapes["trainval"])):
        assert_example_format(shapes["trainval"][index])


def test_voc_folder_round_trips(voc_root, shapes):
    source = VocSource([(voc_root, "trainval")], class_names=SHAPE_NAMES[:4])
    assert len(source) == 6 and not source.skipped
    for index in range(6):
        got = source[index]
        assert_example_format(got)
        assert_same_content(got, shapes["trainval"][index])
        assert got["image_id"] == index and not got["difficult"].any()


def test_voc_splits_concatenate(voc_root, shapes):
    source = VocSource([(voc_root, "trainval"), (voc_root, "test")], class_names=SHAPE_NAMES[:4])
    assert len(source) == 9
    assert_same_content(source[7], shapes["test"][1])
    assert source[7]["image_id"] == 7


def test_voc_class_subset_skips_and_counts_other_classes(voc_root, shapes):
    subset = ("triangle", "circle")
    source = VocSource([(voc_root, "trainval")], class_names=subset)
    for index in range(6):
        want = shapes["trainval"][index]
        names = [SHAPE_NAMES[label - 1] for label in want["labels"]]
        kept = [k for k, name in enumerate(names) if name in subset]
        np.testing.assert_array_equal(
            source[index]["labels"], [subset.index(names[k]) + 1 for k in kept]
        )
        np.testing.assert_allclose(source[index]["boxes"], want["boxes"][kept], atol=1e-6)
    dropped = sum(
        sum(SHAPE_NAMES[label - 1] not in subset for label in shapes["trainval"][i]["labels"])
        for i in range(6)
    )
    counted = sum(
        n for reason, n in source.skipped.items() if reason.startswith("object of unlisted")
    )
    assert counted == dropped > 0


def write_voc_image(root, name, objects, size=(100, 80), image=True, xml_text=None):
    """A one-image VOC folder; ``objects`` are (name, xmin, ymin, xmax, ymax, difficult)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    with open(os.path.join(root, "ImageSets/Main/train.txt"), "a") as f:
        f.write(name + "\n")
    if xml_text is None:
        parts = [f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>"]
        for cls, x0, y0, x1, y1, difficult in objects:
            parts.append(
                f"<object><name>{cls}</name><difficult>{difficult}</difficult><bndbox>"
                f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
                "</bndbox></object>"
            )
        xml_text = "".join(parts) + "</annotation>"
    with open(os.path.join(root, "Annotations", name + ".xml"), "w") as f:
        f.write(xml_text)
    if image:
        import cv2

        cv2.imwrite(
            os.path.join(root, "JPEGImages", name + ".jpg"),
            np.full((size[1], size[0], 3), 128, np.uint8),
        )


def test_voc_devkit_coordinates_and_bad_boxes(tmp_path):
    root = str(tmp_path)
    write_voc_image(
        root,
        "a",
        [
            ("dog", 1, 1, 100, 80, 0),  # whole image: (0, 0, 99/100, 79/80)
            ("cat", 51, 41, 60, 50, 1),  # difficult
            ("car", 90, 10, 120, 20, 0),  # sticks out: clipped to x_max = 1
            ("dog", 30, 30, 20, 40, 0),  # inverted
            ("dog", 10, 10, 10, 30, 0),  # zero width
            ("dog", 150, 10, 160, 20, 0),  # outside
            ("unicorn", 10, 10, 20, 20, 0),  # unknown class
        ],
    )
    source = VocSource([(root, "train")])
    example = source[0]
    assert_example_format(example)
    np.testing.assert_allclose(
        example["boxes"],
        [[0, 0, 0.99, 79 / 80], [0.5, 0.5, 0.59, 49 / 80], [0.89, 9 / 80, 1.0, 19 / 80]],
        atol=1e-6,
    )
    np.testing.assert_array_equal(
        example["labels"], [VOC_CLASSES.index(c) + 1 for c in ("dog", "cat", "car")]
    )
    np.testing.assert_array_equal(example["difficult"], [False, True, False])
    assert source.skipped == {
        "inverted box (x_max < x_min or y_max < y_min)": 1,
        "zero-area box": 1,
        "box outside the image": 1,
        "object of unlisted class 'unicorn'": 1,
    }
    assert "unicorn" in source.skipped.report("VOC")


def test_boxes_on_an_image_edge_are_outside_and_each_bad_box_counts_once():
    skipped = example_lib.SkipCounter()
    boxes = [
        [100, 10, 110, 20],  # starts on the right edge of the 100x80 image
        [-10, 10, 0, 20],  # ends on the left edge
        [10, 80, 20, 90],  # starts on the bottom edge
        [10, -5, 20, 0],  # ends on the top edge
        [120, 10, 110, 20],  # inverted (and outside): counted once, as inverted
        [10, 30, 20, 30],  # zero height, not inverted
        [0, 0, 100, 80],  # the whole image
    ]
    _, keep = example_lib.normalize_boxes(np.array(boxes, float), 100, 80, skipped, "a.xml")
    assert keep.tolist() == [False] * 6 + [True]
    assert skipped == {
        "box outside the image": 4,
        "inverted box (x_max < x_min or y_max < y_min)": 1,
        "zero-area box": 1,
    }
    for width, height in ((0, 80), (100, 0)):
        with pytest.raises(DataError, match=f"^a.xml: image size {width}x{height} is not positive"):
            example_lib.normalize_boxes(np.zeros((0, 4)), width, height, skipped, "a.xml")


def test_voc_image_without_objects_is_kept_and_counted(tmp_path):
    write_voc_image(str(tmp_path), "empty", [])
    source = VocSource([(str(tmp_path), "train")])
    example = source[0]
    assert_example_format(example)
    assert example["boxes"].shape == (0, 4)
    assert source.skipped == {"image without usable objects (kept as background)": 1}


@pytest.mark.parametrize(
    ("xml_text", "message"),
    [
        ("<annotation><size><width>10", "malformed XML in .*bad.xml"),
        (
            "<annotation><object><name>dog</name></object></annotation>",
            "bad.xml: missing or non-numeric",
        ),
        (
            "<annotation><size><width>10</width><height>10</height></size><object><name>dog</name>"
            "<bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
            "bad.xml: missing or non-numeric",
        ),
        (
            "<annotation><size><width>10</width><height>10</height></size><object>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
            "bad.xml: missing or non-numeric",
        ),
        (
            "<annotation><size><width>10</width><height>10</height></size><object><name>dog</name>"
            "<bndbox><xmin>nan</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
            "bad.xml: box coordinates are not finite",
        ),
    ],
)
def test_voc_malformed_annotation_names_the_file(tmp_path, xml_text, message):
    write_voc_image(str(tmp_path), "bad", [], xml_text=xml_text)
    with pytest.raises(DataError, match=message):
        VocSource([(str(tmp_path), "train")])


def test_voc_missing_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="split list not found: .*val.txt"):
        VocSource([(str(tmp_path), "val")])
    write_voc_image(str(tmp_path), "noimage", [("dog", 1, 1, 5, 5, 0)], image=False)
    with pytest.raises(DataError, match="image file not found: .*noimage.jpg"):
        VocSource([(str(tmp_path), "train")])  # when the source is built, not mid-epoch
    with open(os.path.join(str(tmp_path), "JPEGImages", "noimage.jpg"), "wb") as f:
        f.write(b"not a jpeg at all")
    source = VocSource([(str(tmp_path), "train")])
    with pytest.raises(DataError, match="cannot decode image .*noimage.jpg"):
        source[0]
    with open(os.path.join(str(tmp_path), "ImageSets/Main/train.txt"), "a") as f:
        f.write("missing\n")
    with pytest.raises(DataError, match="annotation file not found: .*missing.xml"):
        VocSource([(str(tmp_path), "train")])


def test_voc_image_size_mismatch_names_the_file(tmp_path):
    write_voc_image(str(tmp_path), "a", [("dog", 1, 1, 5, 5, 0)], size=(100, 80))
    import cv2

    cv2.imwrite(os.path.join(str(tmp_path), "JPEGImages", "a.jpg"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DataError, match="a.jpg: image is 10x10 but its annotation says 100x80"):
        VocSource([(str(tmp_path), "train")])[0]


def test_coco_folder_round_trips(tmp_path, shapes):
    write_coco(str(tmp_path / "instances_train.json"), str(tmp_path / "images"), shapes["trainval"])
    source = CocoSource(str(tmp_path / "instances_train.json"), str(tmp_path / "images"))
    assert source.class_names == SHAPE_NAMES[:4]
    assert source.category_ids == (1, 3, 5, 7)
    assert len(source) == 6
    assert set(source.skipped) <= {"image without usable objects (kept as background)"}
    for index in range(6):
        got = source[index]
        assert_example_format(got)
        assert_same_content(got, shapes["trainval"][index])
        assert got["image_id"] == 1000 + index


def write_coco_json(path, images, annotations, categories):
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def test_coco_crowd_subset_and_bad_boxes(tmp_path):
    import cv2

    os.makedirs(tmp_path / "img")
    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), np.zeros((50, 100, 3), np.uint8))
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 100, 50], "iscrowd": 1},
        {"id": 3, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 4, "image_id": 7, "category_id": 18, "bbox": [10, 5, 0, 10], "iscrowd": 0},
    ]
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    write_coco_json(
        tmp_path / "a.json",
        [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 50}],
        annotations,
        categories,
    )
    source = CocoSource(
        str(tmp_path / "a.json"), str(tmp_path / "img"), class_names=["dog", "person"]
    )
    assert source.category_ids == (18, 1)
    example = source[0]
    assert_example_format(example)
    np.testing.assert_allclose(example["boxes"], [[0.1, 0.1, 0.3, 0.3], [0, 0, 1, 1]], atol=1e-6)
    np.testing.assert_array_equal(example["labels"], [1, 2])
    np.testing.assert_array_equal(example["is_crowd"], [False, True])
    assert example["image_id"] == 7
    assert source.skipped == {"object of unlisted category": 1, "zero-area box": 1}
    with pytest.raises(DataError, match="has no categories \\['cat'\\]"):
        CocoSource(str(tmp_path / "a.json"), str(tmp_path / "img"), class_names=["cat"])
    # torchvision's layout: label k is category id k, unused ids are placeholders
    layout = ["person", "unused_2", "unused_3", "dog"]  # but id 3 is the file's "car"
    with pytest.raises(DataError, match="has no categories \\['unused_3'\\]"):
        CocoSource(str(tmp_path / "a.json"), str(tmp_path / "img"), class_names=layout)
    layout = ["person", "unused_2", "dog"]
    source = CocoSource(str(tmp_path / "a.json"), str(tmp_path / "img"), class_names=layout)
    assert source.category_ids == (1, 2, 18)
    np.testing.assert_array_equal(source[0]["labels"], [3, 1])


def test_coco_malformed_json_names_the_file(tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(DataError, match="malformed JSON in .*broken.json"):
        CocoSource(str(tmp_path / "broken.json"), str(tmp_path))
    (tmp_path / "partial.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="partial.json: no \\['annotations', 'categories'\\]"):
        CocoSource(str(tmp_path / "partial.json"), str(tmp_path))
    write_coco_json(
        tmp_path / "bbox.json",
        [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}],
        [{"id": 1, "name": "person"}],
    )
    with pytest.raises(DataError, match="bbox.json image 1: annotation 9 has bbox"):
        CocoSource(str(tmp_path / "bbox.json"), str(tmp_path))
    write_coco_json(
        tmp_path / "size.json", [{"id": 1, "file_name": "a.jpg", "height": 10}], [],
        [{"id": 1, "name": "person"}],
    )  # fmt: skip
    with pytest.raises(DataError, match="size.json image 1: missing width, height or file_name"):
        CocoSource(str(tmp_path / "size.json"), str(tmp_path))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, shapes):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    examples = [shapes["trainval"][i] for i in range(4)]
    examples[1]["difficult"][:1] = True
    tfds_fixture.prepare(tfds_fixture.Voc, "2007", data_dir, {"test": examples})
    coco_examples = [dict(e, image_id=np.int64(500 + i)) for i, e in enumerate(examples)]
    coco_examples[2]["is_crowd"] = np.ones_like(coco_examples[2]["is_crowd"])
    tfds_fixture.prepare(tfds_fixture.Coco, "2017", data_dir, {"validation": coco_examples})
    return data_dir, examples, coco_examples


def most_similar(got, candidates):
    """TFDS stores examples in hashed-key order: find the written one by its pixels."""
    errors = [np.abs(got["image"].astype(float) - c["image"]).mean() for c in candidates]
    return candidates[int(np.argmin(errors))]


def test_tfds_voc_reads_without_tensorflow(tfds_dir):
    data_dir, examples, _ = tfds_dir
    source = TfdsSource("voc/2007", "test", data_dir=data_dir)
    assert len(source) == 4 and source.class_names == VOC_CLASSES
    for index in range(4):
        got = source[index]
        want = most_similar(got, examples)
        assert_example_format(got)
        assert_same_content(got, want)  # TFDS labels are 0-based: +1 restored
        np.testing.assert_array_equal(got["difficult"], want["difficult"])
        assert got["image_id"] == index


def test_tfds_coco_restores_ids(tfds_dir):
    data_dir, _, examples = tfds_dir
    source = TfdsSource("coco/2017", "validation", data_dir=data_dir)
    assert source.category_ids == COCO_CATEGORY_IDS
    for index in range(4):
        got = source[index]
        want = examples[int(got["image_id"]) - 500]
        assert_example_format(got)
        assert_same_content(got, want)
        np.testing.assert_array_equal(got["is_crowd"], want["is_crowd"])
    assert sorted(source[i]["image_id"] for i in range(4)) == [500, 501, 502, 503]
    subset = TfdsSource("coco/2017", "validation", data_dir=data_dir, class_names=["car", "person"])
    assert subset.category_ids == (3, 1)


def test_tfds_missing_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="python -m ssd_jax.data.prepare voc/2012"):
        TfdsSource("voc/2012", "train", data_dir=str(tmp_path))


def test_prepare_without_tensorflow_names_the_extra(monkeypatch, tmp_path):
    import subprocess
    import sys

    from ssd_jax.data import prepare
    from ssd_jax.errors import UserError

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if TensorFlow were not installed
    with pytest.raises(UserError, match=r"coco/2017 needs TensorFlow: .*ssd_jax\[prepare\]"):
        prepare.prepare(["coco/2017"], str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "ssd_jax.data.prepare", "imagenet/2012", "--data_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: cannot prepare ['imagenet/2012']: give any of ['voc/2007', 'voc/2012', 'coco/2017']"
    )
