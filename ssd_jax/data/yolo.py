"""YOLO-format datasets, in the layout that Ultralytics reads and that most
annotation tools and dataset hubs export::

    data.yaml            path: .              # the root (default: data.yaml's folder)
                         train: images/train  # a folder of images, a .txt list of
                         val: images/val      # images, or a list of those
                         names: [circle, square]   # or {0: circle, 1: square}
    images/train/a.jpg
    labels/train/a.txt   # one line per object: class cx cy w h, normalized to [0, 1]

An image's label file is its path with the last ``images`` folder replaced by
``labels`` and the extension by ``.txt``; an image without one has no objects.
Class ``k`` of the files is ``names[k]``. Labels are read when the source is
built: a bad line (another field count, a value that is not a number or lies
outside [0, 1], a class that ``names`` does not have) is a :class:`DataError`
naming the file and line.
"""

import os
from collections.abc import Sequence

import numpy as np

from ssd_jax.data.example import (
    DataError,
    SkipCounter,
    make_example,
    normalize_boxes,
    read_structured,
)
from ssd_jax.data.example import read_image_rgb as _read_image_rgb

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
_SLACK = 1e-6  # exported labels often round just past 0 or 1


def read_data_yaml(path: str) -> tuple[str, dict, list[str]]:
    """``(root, splits, names)`` of a ``data.yaml``: ``splits`` maps a split name
    (``train``, ``val``, ``test``) to what the file gives for it."""
    import yaml

    data = read_structured(path, yaml.safe_load, yaml.YAMLError, "YOLO data file", "YAML")
    if not isinstance(data, dict) or "names" not in data:
        raise DataError(f"{path}: no 'names' (the class names) in the YOLO data file")
    names = data["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: 'names' keys must be the classes 0..{len(names) - 1}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: 'names' must be a list of class names or a dict 0..K-1 -> "
                        f"name, got {names!r}")  # fmt: skip
    names = [str(name) for name in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: 'names' holds {repeated} more than once")
    folder = os.path.dirname(os.path.abspath(path))
    root = os.path.join(folder, str(data.get("path") or ""))
    splits = {k: v for k, v in data.items() if k in ("train", "val", "test") and v}
    return os.path.normpath(root), splits, names


def _image_files(root: str, entry, path: str) -> list[str]:
    """The image files of one split entry: folders (searched recursively), .txt
    lists of image paths (relative to the root), or a list of those."""
    files = []
    for item in entry if isinstance(entry, list) else [entry]:
        where = os.path.join(root, str(item))
        if os.path.isdir(where):
            found = (os.path.join(d, f) for d, _, names in os.walk(where) for f in names)
            files += sorted(f for f in found if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(where):
            with open(where) as listed:
                files += [os.path.join(root, line.strip()) for line in listed if line.strip()]
        else:
            raise DataError(f"{path}: {item!r} is neither a folder nor a list of images")
    return files


def label_file(image_file: str) -> str:
    """The label file of ``image_file`` (see the module docstring)."""
    folder, name = os.path.split(image_file)
    parts = folder.split(os.sep)
    if "images" in parts:
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
    return os.path.join(os.sep.join(parts), os.path.splitext(name)[0] + ".txt")


def read_labels(path: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) YOLO classes and (N, 4) normalized cxcywh boxes of a label file
    (empty when there is none)."""
    if not os.path.isfile(path):
        return np.zeros(0, np.int64), np.zeros((0, 4))
    classes, boxes = [], []
    with open(path) as file:
        for number, line in enumerate(file, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path} line {number}"
            if len(fields) != 5:
                raise DataError(f"{where}: expected 'class cx cy w h', got {len(fields)} "
                                f"fields: {line.strip()!r}")  # fmt: skip
            try:
                cls, values = float(fields[0]), [float(v) for v in fields[1:]]
            except ValueError:
                raise DataError(f"{where}: not numbers: {line.strip()!r}") from None
            if not (0 <= cls < num_classes and cls == int(cls)):  # NaN fails the first test
                raise DataError(f"{where}: class {fields[0]} is not one of the data file's "
                                f"classes 0..{num_classes - 1}")  # fmt: skip
            if not all(-_SLACK <= v <= 1 + _SLACK for v in values):
                raise DataError(f"{where}: cx cy w h must lie in [0, 1]: {line.strip()!r}")
            classes.append(int(cls))
            boxes.append(values)
    return np.asarray(classes, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4)


class YoloSource:
    """One split of a YOLO-format dataset (see the module docstring).

    Args:
      data_yaml: the dataset's ``data.yaml``.
      split: ``"train"``, ``"val"`` or ``"test"``: the data file's entry.
      class_names: the classes to keep, label k = ``class_names[k - 1]`` (default:
        the data file's ``names`` in order); objects of other classes are skipped
        and counted.
    """

    category_ids = None  # labels are the model's own (COCO scoring numbers them 1..C)
    annotation_file = None

    def __init__(self, data_yaml: str, split: str, class_names: Sequence[str] | None = None):
        root, splits, names = read_data_yaml(data_yaml)
        if split not in splits:
            raise DataError(f"{data_yaml} has no {split!r} split; it has {sorted(splits)}")
        self.class_names = tuple(names if class_names is None else class_names)
        unknown = [name for name in self.class_names if name not in names]
        if unknown:
            raise DataError(f"class_names {unknown} are not classes of {data_yaml} ({names}): "
                            "name some of those, or none (--config.data.class_names=None) "
                            "for all of them")  # fmt: skip
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"class_names {list(self.class_names)} name a class twice")
        # YOLO class -> label (0: not kept)
        label_of = np.array([self.class_names.index(n) + 1 if n in self.class_names else 0
                             for n in names], np.int32)  # fmt: skip
        self.skipped = SkipCounter()
        self._root, self._records = root, []
        for image_file in _image_files(root, splits[split], data_yaml):
            if not os.path.isfile(image_file):
                raise DataError(f"image file not found: {image_file}")
            classes, cxcywh = read_labels(label_file(image_file), len(names))
            labels = label_of[classes]
            self.skipped.add("object of unlisted class", int((labels == 0).sum()))
            xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2,
                                   cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)  # fmt: skip
            boxes, keep = normalize_boxes(xyxy, 1, 1, self.skipped, label_file(image_file))
            keep &= labels > 0
            if not keep.any():
                self.skipped.add("image without usable objects (kept as background)")
            self._records.append((image_file, boxes[keep], labels[keep]))
        self.skipped.log(f"YOLO {data_yaml} {split}")

    def __len__(self) -> int:
        return len(self._records)

    def image_file(self, index: int) -> str:
        return self._records[index][0]

    def example_ids(self) -> list[str]:
        """Each image's path relative to the dataset's root, in order."""
        return [os.path.relpath(file, self._root) for file, _, _ in self._records]

    def __getitem__(self, index: int) -> dict:
        image_file, boxes, labels = self._records[index]
        image = _read_image_rgb(image_file)
        height, width = image.shape[:2]
        return make_example(image, boxes, labels, image_id=index, height=height, width=width)
