"""The dataset formats a configuration can name, in one table (:data:`FORMATS`),
and what a source of examples provides (:class:`Source`).

``data.train.kind`` and ``data.eval.kind`` name a format; the configuration's
validation, its messages and :func:`ssd_jax.build.source` read this table.
Adding a format takes a module with its source class and one entry here, which
also declares its configuration keys.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import ml_collections


class Source(Protocol):
    """A dataset split with random access: what the input pipelines
    (:mod:`ssd_jax.data.pipeline`, through Grain) and the metrics read.

    - ``source[i]``: the i-th example, a dict made by
      :func:`ssd_jax.data.example.make_example`: ``image`` (H, W, 3) uint8 RGB,
      ``boxes`` (N, 4) float32 xyxy normalized to [0, 1], ``labels`` (N,) int32 in
      1..C, ``difficult`` and ``is_crowd`` (N,) bool, ``image_id`` int64 (the id
      the COCO metric reports), ``height`` and ``width`` int32. An image that
      cannot be read raises (the pipelines replace it and count it).
    - ``class_names``: label k is ``class_names[k - 1]``.
    - ``skipped``: a :class:`~ssd_jax.data.example.SkipCounter` of the objects
      and images left out while reading annotations, by reason.
    - ``example_ids()``: a name for each example, in order (a checkpoint records
      them, so that a resume notices a changed dataset).
    - ``category_ids``: the dataset's own category id of each label (COCO
      results report them), or None to number labels 1..C; ``annotation_file``:
      a COCO JSON of the split that the COCO metric can score against, or None
      (the metric then builds one from the examples).
    """

    class_names: tuple[str, ...]
    skipped: object
    category_ids: tuple[int, ...] | None
    annotation_file: str | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...

    def example_ids(self) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class Format:
    """A dataset format: what it is, the configuration keys it reads with their
    defaults (``keys``: every ``data.train`` / ``data.eval`` block holds the keys
    of every format, :func:`ssd_jax.config_schema.data_config`), those that must
    not be empty (``required``), and ``open(data_config, class_names) -> Source``
    (``class_names`` None: the dataset's own list)."""

    what: str
    keys: dict[str, object]
    required: tuple[str, ...]
    open: Callable[[ml_collections.ConfigDict, Sequence[str] | None], Source]


def _voc(data, class_names):
    from ssd_jax.data.sources import VocSource

    splits = [tuple(entry.rsplit(":", 1)) for entry in data.voc_splits]
    if any(len(s) != 2 or not all(s) for s in splits):
        from ssd_jax.data.example import DataError

        raise DataError(f"voc_splits must be 'root:split' entries, got {tuple(data.voc_splits)}")
    return VocSource(splits, **({"class_names": class_names} if class_names else {}))


def _coco(data, class_names):
    from ssd_jax.data.sources import CocoSource

    return CocoSource(data.annotation_file, data.image_dir, class_names)


def _yolo(data, class_names):
    from ssd_jax.data.yolo import YoloSource

    return YoloSource(data.yolo_data, data.yolo_split, class_names)


def _tfds(data, class_names):
    from ssd_jax.data.sources import TfdsSource

    return TfdsSource(data.tfds_name, data.tfds_split, data.data_dir or None, class_names)


def _synthetic(data, class_names):
    from ssd_jax.data.synthetic import SHAPE_NAMES, SyntheticShapes

    num_classes = len(class_names) if class_names else 4
    if class_names and tuple(class_names) != SHAPE_NAMES[:num_classes]:
        from ssd_jax.data.example import DataError

        raise DataError(f"class_names {list(class_names)}: synthetic data has the classes "
                        f"{list(SHAPE_NAMES)}; name the first few of them")  # fmt: skip
    return SyntheticShapes(
        data.num_images,
        num_classes=num_classes,
        image_size=(data.image_height, data.image_width),
        max_objects=data.max_objects,
        seed=data.seed,
        min_size=data.min_size,
        max_size=data.max_size,
    )


SYNTHETIC_KEYS = {"num_images": 0, "seed": 0, "image_height": 300, "image_width": 300,
                  "max_objects": 6, "min_size": 0.03, "max_size": 0.9}  # fmt: skip

FORMATS: dict[str, Format] = {
    "voc": Format("VOC-style folders: voc_splits = ('root:split', ...)",
                  {"voc_splits": ("",)}, ("voc_splits",), _voc),
    "coco": Format("a COCO JSON and its images: annotation_file, image_dir",
                   {"annotation_file": "", "image_dir": ""}, ("annotation_file", "image_dir"),
                   _coco),
    "yolo": Format("a YOLO data.yaml and its images/labels folders: yolo_data, yolo_split",
                   {"yolo_data": "", "yolo_split": ""}, ("yolo_data", "yolo_split"), _yolo),
    "tfds": Format("a prepared TFDS dataset: tfds_name, tfds_split, data_dir",
                   {"tfds_name": "", "tfds_split": "", "data_dir": ""},
                   ("tfds_name", "tfds_split"), _tfds),
    # shape diameters min_size..max_size as fractions of the shorter side
    "synthetic": Format("generated shapes: num_images, seed, image_height, ...",
                        SYNTHETIC_KEYS, (), _synthetic),
}  # fmt: skip


def open_source(data: ml_collections.ConfigDict, class_names: Sequence[str] | None) -> Source:
    """The source that one ``data.train`` / ``data.eval`` block describes."""
    return FORMATS[data.kind].open(data, class_names)


def missing_keys(data: ml_collections.ConfigDict) -> list[str]:
    """The keys that ``data``'s format requires and that are empty."""
    if data.kind not in FORMATS:
        return []
    return [key for key in FORMATS[data.kind].required if not any(_values(data[key]))]


def _values(value) -> list:
    return list(value) if isinstance(value, tuple | list) else [value]
