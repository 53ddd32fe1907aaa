"""Random-access detection sources: local VOC- and COCO-style folders, and
prepared TFDS datasets read without TensorFlow.

Every source follows :class:`ssd_jax.data.formats.Source` (examples by index,
class names, skip counts, example ids, COCO category ids), so it plugs into Grain
as a ``RandomAccessDataSource``; :data:`ssd_jax.data.formats.FORMATS` names them.
"""

import collections
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np

from ssd_jax.data.classes import COCO_CATEGORY_IDS, COCO_CLASSES, UNUSED_PREFIX, VOC_CLASSES
from ssd_jax.data.example import (
    DataError,
    SkipCounter,
    make_example,
    normalize_boxes,
    read_image_rgb,
    read_structured,
)


def _label_lookup(class_names: Sequence[str]) -> dict[str, int]:
    if len(set(class_names)) != len(class_names) or not class_names:
        raise ValueError(f"class_names must be a non-empty list without repeats: {class_names}")
    return {name: label for label, name in enumerate(class_names, start=1)}


class _AnnotatedImages:
    """A source of parsed annotation records that reads each image on access."""

    _records: list[dict]
    category_ids: tuple[int, ...] | None = None  # see ssd_jax.data.formats.Source
    annotation_file: str | None = None

    def __len__(self) -> int:
        return len(self._records)

    def image_file(self, index: int) -> str:
        return self._records[index]["image_file"]

    def example_ids(self) -> list[str]:
        """Each example's name, in order (see the module docstring)."""
        return [record["name"] for record in self._records]

    def __getitem__(self, index: int) -> dict:
        record = self._records[index]
        image = read_image_rgb(record["image_file"])
        _check_size(image, record, record["image_file"])
        return make_example(
            image,
            record["boxes"],
            record["labels"],
            image_id=record["image_id"],
            height=record["height"],
            width=record["width"],
            difficult=record.get("difficult"),
            is_crowd=record.get("is_crowd"),
        )


class VocSource(_AnnotatedImages):
    """VOC-style folders: ``<root>/Annotations/<id>.xml``, ``<root>/JPEGImages/<id>.jpg``
    and ``<root>/ImageSets/Main/<split>.txt``.

    Args:
      splits: ``(root, split)`` pairs, concatenated in order, e.g.
        ``[(".../VOC2007", "trainval"), (".../VOC2012", "trainval")]``.
      class_names: the classes to keep, label k = ``class_names[k - 1]``; objects of
        other classes are skipped and counted.

    Annotations are parsed when the source is built: a missing list or XML file,
    malformed XML or a missing field raises :class:`DataError` naming the file.
    Pixel coordinates follow the devkit (1-based): 1 is subtracted before dividing
    by the image size, as TFDS does.
    """

    def __init__(self, splits: Sequence[tuple[str, str]], class_names: Sequence[str] = VOC_CLASSES):
        self.class_names = tuple(class_names)
        self.skipped = SkipCounter()
        label_of = _label_lookup(self.class_names)
        self._records = []
        for root, split in splits:
            list_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
            if not os.path.isfile(list_file):
                raise DataError(f"split list not found: {list_file}")
            with open(list_file) as f:
                names = [line.split()[0] for line in f if line.strip()]
            folder = os.path.basename(os.path.normpath(root))
            for name in names:
                record = self._parse(root, name, label_of)
                self._records.append({**record, "name": f"{folder}/{name}"})
        for index, record in enumerate(self._records):
            record["image_id"] = index  # position in the concatenated splits
        _check_images_exist(self._records)
        self.skipped.log(f"VOC {list(splits)}")

    def _parse(self, root: str, name: str, label_of: dict[str, int]) -> dict:
        xml_file = os.path.join(root, "Annotations", f"{name}.xml")
        try:
            annotation = ET.parse(xml_file).getroot()
        except FileNotFoundError:
            raise DataError(f"annotation file not found: {xml_file}") from None
        except ET.ParseError as error:
            raise DataError(f"malformed XML in {xml_file}: {error}") from None
        try:
            width = int(annotation.findtext("size/width"))
            height = int(annotation.findtext("size/height"))
            objects = []
            for obj in annotation.iter("object"):
                class_name = obj.findtext("name").strip()
                corners = [
                    float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")
                ]
                difficult = int(obj.findtext("difficult") or 0) == 1
                objects.append((class_name, corners, difficult))
        except (TypeError, ValueError, AttributeError):
            raise DataError(
                f"{xml_file}: missing or non-numeric size, object name or bndbox field"
            ) from None

        known = []
        for class_name, corners, difficult in objects:
            if class_name in label_of:
                known.append((label_of[class_name], corners, difficult))
            else:
                self.skipped.add(f"object of unlisted class {class_name!r}")
        pixels = np.array([corners for _, corners, _ in known], np.float64).reshape(-1, 4) - 1
        boxes, keep = normalize_boxes(pixels, width, height, self.skipped, xml_file)
        if not keep.any():
            self.skipped.add("image without usable objects (kept as background)")
        return {
            "image_file": os.path.join(root, "JPEGImages", f"{name}.jpg"),
            "boxes": boxes[keep],
            "labels": np.array([label for label, _, _ in known], np.int32)[keep],
            "difficult": np.array([d for _, _, d in known], bool)[keep],
            "height": height,
            "width": width,
        }


def _check_images_exist(records: list[dict]) -> None:
    """Missing images fail when the source is built, not mid-epoch."""
    missing = [r["image_file"] for r in records if not os.path.isfile(r["image_file"])]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(f"image file not found: {missing[0]}{more}")


def _check_size(image: np.ndarray, record: dict, where: str) -> None:
    if image.shape[:2] != (record["height"], record["width"]):
        raise DataError(
            f"{where}: image is {image.shape[1]}x{image.shape[0]} but its annotation says "
            f"{record['width']}x{record['height']}"
        )


class CocoSource(_AnnotatedImages):
    """A COCO-style dataset: an ``instances_*.json`` and its image folder.

    Categories become contiguous labels 1..C in category-id order (or in the order
    of ``class_names``, a subset of the category names); ``category_ids[k - 1]``
    maps label k back to the original id, and ``image_id`` is the original image
    id. Boxes (xywh pixels) become normalized xyxy; crowd annotations are kept with
    ``is_crowd`` set. Unreadable or malformed JSON raises :class:`DataError`.
    """

    def __init__(
        self, annotation_file: str, image_dir: str, class_names: Sequence[str] | None = None
    ):
        from pycocotools.coco import COCO

        self.annotation_file = annotation_file
        dataset = read_structured(annotation_file, json.load, json.JSONDecodeError,
                                  "annotation file", "JSON")  # fmt: skip
        missing = {"images", "annotations", "categories"} - set(dataset)
        if missing:
            raise DataError(f"{annotation_file}: no {sorted(missing)} in the COCO JSON")
        _check_coco_references(dataset, annotation_file)
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()

        categories = sorted(coco.cats.values(), key=lambda c: c["id"])
        id_of_name = {c["name"]: c["id"] for c in categories}
        if class_names is None:
            class_names = [c["name"] for c in categories]
        # torchvision's COCO detectors keep a label slot for each category id COCO
        # leaves unused; their importer names it unused_<id>: no ground truth
        unused = {name: int(name.removeprefix(UNUSED_PREFIX)) for name in class_names
                  if name.startswith(UNUSED_PREFIX) and name.removeprefix(UNUSED_PREFIX).isdigit()
                  and int(name.removeprefix(UNUSED_PREFIX)) not in coco.cats}  # fmt: skip
        id_of_name |= unused
        unknown = [name for name in class_names if name not in id_of_name]
        if unknown:
            raise DataError(
                f"{annotation_file} has no categories {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}; it has {sorted(id_of_name)[:10]} ..."
            )
        self.class_names = tuple(class_names)
        _label_lookup(self.class_names)
        self.category_ids = tuple(id_of_name[name] for name in self.class_names)
        label_of_category = {cid: k for k, cid in enumerate(self.category_ids, start=1)}

        self.skipped = SkipCounter()
        self._records = []
        for image_id in sorted(coco.imgs):
            info = coco.imgs[image_id]
            where = f"{annotation_file} image {image_id}"
            annotations = []
            for ann in coco.imgToAnns.get(image_id, []):
                if ann.get("category_id") not in label_of_category:
                    self.skipped.add("object of unlisted category")
                    continue
                bbox = ann.get("bbox")
                if not isinstance(bbox, list) or len(bbox) != 4:
                    raise DataError(f"{where}: annotation {ann.get('id')} has bbox {bbox!r}")
                annotations.append(ann)
            xywh = np.array([a["bbox"] for a in annotations], np.float64).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            try:
                width, height = int(info["width"]), int(info["height"])
                file_name = info["file_name"]
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{where}: missing width, height or file_name") from None
            boxes, keep = normalize_boxes(xyxy, width, height, self.skipped, where)
            if not keep.any():
                self.skipped.add("image without usable objects (kept as background)")
            self._records.append({
                "image_file": os.path.join(image_dir, file_name),
                "image_id": image_id,
                "name": f"{image_id}:{file_name}",
                "boxes": boxes[keep],
                "labels": np.array(
                    [label_of_category[a["category_id"]] for a in annotations], np.int32
                )[keep],
                "is_crowd": np.array([bool(a.get("iscrowd", 0)) for a in annotations], bool)[keep],
                "height": height,
                "width": width,
            })  # fmt: skip
        _check_images_exist(self._records)
        self.skipped.log(f"COCO {annotation_file}")


def _repeated(values) -> list:
    counts = collections.Counter(values)
    return sorted(value for value, count in counts.items() if count > 1)


def _check_coco_references(dataset: dict, annotation_file: str) -> None:
    """Image ids and file names must be unique and every annotation's image must
    exist: pycocotools would silently pair an image with another's boxes."""
    try:
        image_ids = [image["id"] for image in dataset["images"]]
        file_names = [image["file_name"] for image in dataset["images"]]
        annotated = {annotation["image_id"] for annotation in dataset["annotations"]}
    except (KeyError, TypeError):
        raise DataError(f"{annotation_file}: an image without id or file_name, or an "
                        "annotation without image_id") from None  # fmt: skip
    problems = {
        "repeated image ids": _repeated(image_ids),
        "repeated file names": _repeated(file_names),
        "annotations of unknown image ids": sorted(annotated - set(image_ids)),
    }
    found = [f"{what} {values[:10]}" for what, values in problems.items() if values]
    if found:
        raise DataError(f"{annotation_file}: " + "; ".join(found))


def _latest_version_dir(data_dir: str, name: str) -> str:
    dataset_dir = os.path.join(data_dir, *name.split("/"))
    versions = sorted(
        (v for v in os.listdir(dataset_dir) if v[0].isdigit())
        if os.path.isdir(dataset_dir)
        else [],
        key=lambda v: tuple(int(p) for p in v.split(".")),
    )
    if not versions:
        raise DataError(
            f"no prepared TFDS dataset {name!r} under {data_dir}; prepare it with "
            f"`python -m ssd_jax.data.prepare {name} --data_dir {data_dir}`"
        )
    return os.path.join(dataset_dir, versions[-1])


class TfdsSource:
    """``voc/2007``, ``voc/2012`` or ``coco/2017`` from a prepared TFDS data dir
    (array_record format), read with ``tfds.builder_from_directory`` and no
    TensorFlow. TFDS's yxyx boxes and 0-based labels become the example format;
    COCO image ids and category ids are restored.

    Args:
      name: ``"voc/2007"``, ``"voc/2012"`` or ``"coco/2017"``.
      split: e.g. ``"trainval"``, ``"test"``, ``"train"``, ``"validation"``.
      data_dir: the TFDS data dir (default ``~/tensorflow_datasets``).
      class_names: subset of the dataset's classes to keep (default all).
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        class_names: Sequence[str] | None = None,
    ):
        import tensorflow_datasets as tfds

        if not name.startswith(("voc/", "coco/")):
            raise ValueError(f"TfdsSource reads voc/2007, voc/2012 or coco/2017, not {name!r}")
        data_dir = os.path.expanduser(data_dir or "~/tensorflow_datasets")
        builder = tfds.builder_from_directory(_latest_version_dir(data_dir, name))
        self.name, self.split, self.version = name, split, str(builder.version)
        self.category_ids, self.annotation_file = None, None  # (COCO ids: below)
        self._is_coco = name.startswith("coco/")
        self._source = builder.as_data_source(split=split)
        # TFDS orders labels as our lists do (VOC alphabetically, COCO by category id).
        dataset_names = list(COCO_CLASSES if self._is_coco else VOC_CLASSES)
        num_tfds_labels = builder.info.features["objects"]["label"].num_classes
        if num_tfds_labels != len(dataset_names):
            raise DataError(
                f"{name}: expected {len(dataset_names)} labels, found {num_tfds_labels}"
            )
        self.class_names = tuple(dataset_names if class_names is None else class_names)
        label_of = _label_lookup(self.class_names)
        unknown = [n for n in self.class_names if n not in dataset_names]
        if unknown:
            raise ValueError(f"{name} has no classes {unknown}; it has {dataset_names}")
        # TFDS label index -> our label (0 = not kept)
        self._label_map = np.array([label_of.get(n, 0) for n in dataset_names], np.int32)
        if self._is_coco:
            self.category_ids = tuple(
                COCO_CATEGORY_IDS[dataset_names.index(n)] for n in self.class_names
            )
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self._source)

    def example_ids(self) -> list[str]:
        """The dataset, version, split and position of each example: a prepared TFDS
        version holds the same examples in the same order (reading the records'
        own ids would decode every image)."""
        return [f"{self.name}:{self.version}:{self.split}/{index}" for index in range(len(self))]

    def __getitem__(self, index: int) -> dict:
        record = self._source[index]
        image = np.asarray(record["image"])
        objects = record["objects"]
        height, width = image.shape[:2]
        yxyx = np.asarray(objects["bbox"], np.float32).reshape(-1, 4)
        labels = self._label_map[np.asarray(objects["label"], np.int64).reshape(-1)]
        self.skipped.add("object of unlisted class", int((labels == 0).sum()))
        where = f"{self.name} {self.split} example {index}"
        pixels = yxyx[:, [1, 0, 3, 2]] * np.array([width, height, width, height])
        boxes, keep = normalize_boxes(pixels, width, height, self.skipped, where)
        keep &= labels > 0
        flag = "is_crowd" if self._is_coco else "is_difficult"
        flags = np.asarray(objects[flag], bool).reshape(-1)[keep]
        return make_example(
            image,
            boxes[keep],
            labels[keep],
            image_id=int(record["image/id"]) if self._is_coco else index,
            height=height,
            width=width,
            difficult=None if self._is_coco else flags,
            is_crowd=flags if self._is_coco else None,
        )
