"""Fixed-shape batches with Grain: source -> per-process shard -> shuffle per epoch
-> augmentation -> batch -> (multiprocess) prefetch.

A batch is a dict of NumPy arrays (B = per-process batch size, M = ``max_boxes``):

================  ======================  ==========================================
``image``         uint8 (B, S, S, 3)      RGB, resized; normalized later on device
``boxes``         float32 (B, M, 4)       normalized xyxy, zeros where not ``mask``
``labels``        int32 (B, M)            1..C, 0 where not ``mask``
``mask``          bool (B, M)             real objects
``image_id``      int64 (B,)              see :mod:`ssd_jax.data.example`
``num_truncated`` int32 (B,)              objects beyond M that were dropped
``num_unreadable`` int32 (B,)             examples that could not be read and were
                                          replaced by the next readable one
``unreadable_index`` int64 (B,)           the first of them (source index), or -1
================  ======================  ==========================================

Evaluation batches add ``difficult``, ``is_crowd`` (B, M), ``height``, ``width``
(B,), ``is_padding`` (B,): the last batch is filled with padding examples so
every real image is evaluated exactly once, and ``unreadable`` (B,): an image
that could not be read, scored as padding.

Each example's augmentation depends only on (seed, epoch, index), and the Grain
iterator's state can be saved and restored (``get_state`` / ``set_state``), so
a resumed run sees the same data as an uninterrupted one.
"""

import logging
import math
import os
import threading
import time

import cv2
import grain
import numpy as np
from absl import flags

from ssd_jax.data.augment import (
    eval_preprocess,
    train_augment,
    train_resize_only,
    training_targets,
)
from ssd_jax.data.example import DataError
from ssd_jax.data.imagenet import IMAGENET_MEAN_RGB
from ssd_jax.data.iterator_state import AnyWorkerCount

DEFAULT_MAX_BOXES = 100  # VOC has at most 42 objects per image, COCO train2017 93


def pad_objects(boxes: np.ndarray, labels: np.ndarray, max_boxes: int, **flags: np.ndarray) -> dict:
    """Pads (or truncates) the N objects of one image to ``max_boxes`` rows.

    When N > ``max_boxes`` the largest boxes (by area) are kept, in their original
    order, and ``num_truncated`` says how many were dropped.

    Returns:
      ``{"boxes": (M, 4), "labels": (M,), "mask": (M,), **flags (M,), "num_truncated"}``.
    """
    num = len(labels)
    keep = np.arange(num)
    if num > max_boxes:
        areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        keep = np.sort(np.argsort(-areas, kind="stable")[:max_boxes])
    count = len(keep)
    out = {
        "boxes": np.zeros((max_boxes, 4), np.float32),
        "labels": np.zeros((max_boxes,), np.int32),
        "mask": np.arange(max_boxes) < count,
    }
    out["boxes"][:count] = boxes[keep]
    out["labels"][:count] = labels[keep]
    for name, values in flags.items():
        out[name] = np.zeros((max_boxes,), values.dtype)
        out[name][:count] = values[keep]
    out["num_truncated"] = np.int32(num - count)
    return out


class _ReadableSource:
    """``source``, where an example that cannot be read (:class:`DataError`: an
    undecodable or vanished image) is replaced by the next readable one, with a
    warning naming it, so that one bad file never ends a run. The replacement
    carries ``num_unreadable`` (how many were passed over) and ``unreadable_index``
    (the first of them; -1 when none), which the batches carry on."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.source)):
            try:
                example = self.source[(index + offset) % len(self.source)]
            except DataError as error:
                logging.warning("skipped: %s", error)
                continue
            return {
                **example,
                "num_unreadable": offset,
                "unreadable_index": index if offset else -1,
            }
        raise DataError("no example of the data source can be read")


class UnreadableImages:
    """The training images met so far that could not be read (each was replaced by
    the next readable one: :class:`_ReadableSource`)."""

    def __init__(self, source, limit: int):
        self.source, self.limit, self.indices = source, limit, set()

    def add(self, batch: dict) -> None:
        """Notes the batch's unreadable images; :class:`DataError` past the limit."""
        self.indices.update(int(i) for i in batch["unreadable_index"] if i >= 0)
        if len(self.indices) > self.limit:
            raise DataError(
                f"{len(self.indices)} training images cannot be read, more than "
                f"data.max_unreadable_images = {self.limit}: {self.names()[:20]}; fix or "
                "remove them, or raise the limit"
            )

    def names(self) -> list[str]:
        name = getattr(self.source, "image_file", lambda index: f"example {index}")
        return [name(index) for index in sorted(self.indices)]


def _training_ids(example: dict) -> dict:
    """What a training batch carries of an example besides its pixels and targets:
    ``image_id`` and the unreadable examples it replaced (:class:`_ReadableSource`)."""
    return {
        "image_id": np.int64(example["image_id"]),
        "num_unreadable": np.int32(example.get("num_unreadable", 0)),
        "unreadable_index": np.int64(example.get("unreadable_index", -1)),
    }


class TrainTransform(grain.transforms.RandomMap):
    """Augments one example (:func:`ssd_jax.data.augment.train_augment`) and pads it."""

    def __init__(
        self,
        image_size: int,
        max_boxes: int,
        fill_rgb: tuple[float, float, float] = IMAGENET_MEAN_RGB,
        keep_difficult: bool = False,
        keep_crowd: bool = False,
        augment: bool = True,
        *,
        photometric: bool = True,
        zoom_out: bool = True,
    ):
        self.image_size = image_size
        self.max_boxes = max_boxes
        self.fill_rgb = fill_rgb
        self.keep_difficult = keep_difficult
        self.keep_crowd = keep_crowd
        self.augment = augment
        self.photometric = photometric
        self.zoom_out = zoom_out

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        keep = (self.keep_difficult, self.keep_crowd)
        if self.augment:
            steps = {"photometric": self.photometric, "zoom_out": self.zoom_out}
            augmented = train_augment(example, rng, self.image_size, self.fill_rgb, *keep, **steps)
        else:
            augmented = train_resize_only(example, self.image_size, *keep)
        return {
            "image": augmented["image"],
            **pad_objects(augmented["boxes"], augmented["labels"], self.max_boxes),
            **_training_ids(example),
        }


class DecodeTransform(grain.transforms.Map):
    """The host's part of device-side augmentation: one decoded example fitted into
    uint8 (S, S, 3) (shrunk only if its longer side exceeds S = ``max_side``,
    padded at the bottom and right) with its valid ``image_hw`` and its training
    targets padded; :func:`ssd_jax.data.device_augment.augment_batch` does the rest."""

    def __init__(
        self, max_side: int, max_boxes: int, keep_difficult: bool = False, keep_crowd: bool = False
    ):
        self.max_side = max_side
        self.max_boxes = max_boxes
        self.keep_difficult = keep_difficult
        self.keep_crowd = keep_crowd

    def map(self, example: dict) -> dict:
        image = fit_within(example["image"], self.max_side)
        height, width = image.shape[:2]
        padded = np.zeros((self.max_side, self.max_side, 3), np.uint8)
        padded[:height, :width] = image
        boxes, labels = training_targets(example, self.keep_difficult, self.keep_crowd)
        return {
            "image": padded,
            "image_hw": np.array([height, width], np.int32),
            **pad_objects(boxes, labels, self.max_boxes),
            **_training_ids(example),
        }


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` shrunk (area interpolation, aspect kept) so that its longer side is
    at most ``max_side``; unchanged when it already is."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class EvalTransform(grain.transforms.Map):
    """Resizes one example and pads its objects, keeping difficult and crowd flags."""

    def __init__(self, image_size: int, max_boxes: int):
        self.image_size = image_size
        self.max_boxes = max_boxes

    def map(self, example: dict) -> dict:
        resized = eval_preprocess(example, self.image_size)
        padded = pad_objects(
            resized["boxes"],
            resized["labels"],
            self.max_boxes,
            difficult=resized["difficult"],
            is_crowd=resized["is_crowd"],
        )
        return {
            "image": resized["image"],
            **padded,
            "image_id": np.int64(resized["image_id"]),
            "height": np.int32(resized["height"]),
            "width": np.int32(resized["width"]),
            "is_padding": np.bool_(example.get("is_padding", False)),
            "unreadable": np.bool_(example.get("unreadable", False)),
        }


class _PaddedSource:
    """``source`` followed by blank examples (``is_padding`` True) up to ``length``."""

    def __init__(self, source, length: int):
        self.source, self.length = source, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if index < len(self.source):
            try:
                return self.source[index]
            except DataError as error:  # scored as padding, counted as ``unreadable``
                logging.warning("skipped: %s", error)
                return {**self._blank(), "unreadable": True}
        return self._blank()

    @staticmethod
    def _blank() -> dict:
        blank = np.zeros(0, bool)
        return {
            "image": np.zeros((8, 8, 3), np.uint8),
            "boxes": np.zeros((0, 4), np.float32),
            "labels": np.zeros(0, np.int32),
            "difficult": blank,
            "is_crowd": blank,
            "image_id": np.int64(-1),
            "height": np.int32(8),
            "width": np.int32(8),
            "is_padding": True,
        }


def _check_shard(shard_index: int, shard_count: int) -> None:
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is not in [0, {shard_count})")


def train_dataset(
    source,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    max_boxes: int = DEFAULT_MAX_BOXES,
    fill_rgb: tuple[float, float, float] = IMAGENET_MEAN_RGB,
    keep_difficult: bool = False,
    keep_crowd: bool = False,
    augment: bool = True,
    photometric: bool = True,
    zoom_out: bool = True,
    augment_on: str = "host",
    max_side: int = 512,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.MapDataset:
    """Training batches of this process's shard (``source[shard_index::shard_count]``),
    reshuffled every epoch, augmented, batched with ``drop_remainder``.

    ``batch_size`` is the per-process batch; ``num_epochs=None`` repeats forever;
    ``augment=False`` only resizes; ``photometric`` / ``zoom_out`` False leave out
    those steps of the host augmentation (the device's are set in the train
    step). ``augment_on="device"`` leaves the
    augmentation to the train step: the batches are decoded images fitted into
    (``max_side``, ``max_side``) with ``image_hw`` (:class:`DecodeTransform`).
    Iterate with :func:`make_iterator`.
    """
    _check_shard(shard_index, shard_count)
    if len(source) // shard_count < batch_size:
        raise ValueError(
            f"the data shard has {len(source) // shard_count} examples, fewer than one batch "
            f"of {batch_size}"
        )
    if augment_on not in ("host", "device"):
        raise ValueError(f"augment_on must be 'host' or 'device', got {augment_on!r}")
    dataset = grain.MapDataset.source(_ReadableSource(source))[shard_index::shard_count]
    dataset = dataset.shuffle(seed=seed).repeat(num_epochs)
    keep = (keep_difficult, keep_crowd)
    if augment and augment_on == "device":
        dataset = dataset.map(DecodeTransform(max_side, max_boxes, *keep))
    else:
        steps = {"photometric": photometric, "zoom_out": zoom_out}
        transform = TrainTransform(image_size, max_boxes, fill_rgb, *keep, augment, **steps)
        dataset = dataset.random_map(transform, seed=seed)
    return dataset.batch(batch_size, drop_remainder=True)


def eval_dataset(
    source,
    *,
    image_size: int,
    batch_size: int,
    max_boxes: int = DEFAULT_MAX_BOXES,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.MapDataset:
    """Evaluation batches of every image, in order, each exactly once over all
    shards; blank examples with ``is_padding`` fill the last batches so that every
    process runs the same number of equal-shape batches."""
    _check_shard(shard_index, shard_count)
    per_round = batch_size * shard_count
    padded = _PaddedSource(source, math.ceil(len(source) / per_round) * per_round)
    dataset = grain.MapDataset.source(padded)[shard_index::shard_count]
    dataset = dataset.map(EvalTransform(image_size, max_boxes))
    return dataset.batch(batch_size, drop_remainder=True)


def make_iterator(
    dataset: grain.MapDataset, num_workers: int = 0, prefetch: int = 2
) -> AnyWorkerCount:
    """An iterator over ``dataset``: ``num_workers`` worker processes (0: in this
    process), each preparing ``prefetch`` batches ahead on as many threads. It
    supports ``get_state()`` / ``set_state()``, also of a state saved with another
    ``num_workers``.

    Batches from worker processes live in shared memory: copy them (e.g.
    ``jax.device_put``) before keeping them past the next step.
    """
    read_options = grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)
    iter_dataset = dataset.to_iter_dataset(read_options)
    if num_workers > 0:
        # Grain's workers read absl flags, which are unparsed outside absl.app.run.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers),
            worker_init_fn=_init_worker,
        )
    else:
        _single_threaded_opencv()
    return AnyWorkerCount(iter(iter_dataset), num_workers)


def _init_worker(*_) -> None:
    """Runs in each worker process: single-threaded OpenCV, and an end of the
    worker once its parent is gone (killed with ``kill -9``, or ended by JAX's
    runtime), which Grain's workers would otherwise outlive, blocked on a full
    buffer."""
    _single_threaded_opencv()
    parent = os.getppid()

    def end_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=end_with_parent, daemon=True, name="end-with-parent").start()


def _single_threaded_opencv(*_) -> None:
    # Per-image OpenCV calls on ~500x375 images lose more to OpenCV's own thread
    # pool than they gain; parallelism comes from Grain's threads and workers.
    cv2.setNumThreads(1)
