"""The example format every source yields, and the checks that guard it.

An example is a dict with these fields (N objects, possibly 0):

=============  ===================  ==============================================
``image``      uint8 (H, W, 3)      RGB
``boxes``      float32 (N, 4)       normalized xyxy, 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1
``labels``     int32 (N,)           classes 1..C (0 is background, never a label)
``difficult``  bool (N,)            VOC "difficult" flag (False elsewhere)
``is_crowd``   bool (N,)            COCO crowd flag (False elsewhere)
``image_id``   int64 scalar         COCO: the original image id; others: the
                                    position of the image in its source
``height``     int32 scalar         original image height in pixels
``width``      int32 scalar         original image width in pixels
=============  ===================  ==============================================

Bad annotations are never a crash mid-epoch: sources check them when they are
built. Objects that cannot be used (unknown class, inverted or zero-area box, box
entirely outside the image) are skipped and counted in a :class:`SkipCounter`,
which the source reports; boxes that stick out of the image are clipped to it.
Files that cannot be read or parsed raise :class:`DataError` naming the file.
"""

import collections
import logging
import os
from collections.abc import Callable
from typing import IO, Any

import cv2
import numpy as np

from ssd_jax.errors import UserError

FIELDS = ("image", "boxes", "labels", "difficult", "is_crowd", "image_id", "height", "width")


class DataError(UserError, ValueError):
    """A data file is missing, unreadable or malformed; the message names it."""


class SkipCounter(collections.Counter):
    """Counts skipped objects and images by reason, e.g. ``unknown class 'dog'``."""

    def add(self, reason: str, count: int = 1) -> None:
        if count:
            self[reason] += count

    def report(self, source_name: str) -> str:
        if not self:
            return f"{source_name}: nothing skipped"
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.items()))
        return f"{source_name}: skipped {reasons}"

    def log(self, source_name: str) -> None:
        # debug: training reports its split's counts itself, once per job
        logging.getLogger("ssd_jax.data").debug(self.report(source_name))


def normalize_boxes(
    boxes_xyxy_pixels: np.ndarray, width: int, height: int, skipped: SkipCounter, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel xyxy boxes -> normalized boxes clipped to the image, and a keep mask.

    Boxes with x1 >= x2 or y1 >= y2 (inverted or zero-area, before or after
    clipping) and boxes entirely outside the image are not kept; each is counted
    in ``skipped`` under its reason.

    Args:
      boxes_xyxy_pixels: (N, 4) float, pixel coordinates.
      width, height: image size in pixels (must be positive).
      skipped: counter to add skip reasons to.
      where: file or image name for error messages.

    Returns:
      ``(boxes, keep)``: (N, 4) float32 normalized and clipped boxes, (N,) bool.
    """
    if width <= 0 or height <= 0:
        raise DataError(f"{where}: image size {width}x{height} is not positive")
    boxes = np.asarray(boxes_xyxy_pixels, np.float64).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise DataError(f"{where}: box coordinates are not finite numbers: {boxes.tolist()}")
    scale = np.array([width, height, width, height], np.float64)
    normalized = boxes / scale
    inverted = (normalized[:, 2] < normalized[:, 0]) | (normalized[:, 3] < normalized[:, 1])
    outside = (
        (normalized[:, 2] <= 0) | (normalized[:, 3] <= 0)
        | (normalized[:, 0] >= 1) | (normalized[:, 1] >= 1)
    )  # fmt: skip
    clipped = np.clip(normalized, 0.0, 1.0)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    skipped.add("inverted box (x_max < x_min or y_max < y_min)", int(inverted.sum()))
    skipped.add("box outside the image", int((outside & ~inverted).sum()))
    skipped.add("zero-area box", int((empty & ~inverted & ~outside).sum()))
    return clipped.astype(np.float32), ~(inverted | outside | empty)


def make_example(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    image_id: int,
    height: int,
    width: int,
    difficult: np.ndarray | None = None,
    is_crowd: np.ndarray | None = None,
) -> dict:
    """Assembles an example with the documented dtypes and shapes."""
    labels = np.asarray(labels, np.int32).reshape(-1)
    num = len(labels)
    no_flags = np.zeros(num, bool)
    return {
        "image": np.ascontiguousarray(image, np.uint8),
        "boxes": np.asarray(boxes, np.float32).reshape(num, 4),
        "labels": labels,
        "difficult": no_flags if difficult is None else np.asarray(difficult, bool).reshape(num),
        "is_crowd": no_flags if is_crowd is None else np.asarray(is_crowd, bool).reshape(num),
        "image_id": np.int64(image_id),
        "height": np.int32(height),
        "width": np.int32(width),
    }


def read_image_rgb(path: str, exif_orientation: bool = False) -> np.ndarray:
    """Reads an image file as uint8 (H, W, 3) RGB; :class:`DataError` if it cannot.

    The stored pixels, whatever the EXIF orientation tag says (dataset boxes refer
    to them, as in TFDS and PIL-based loaders), unless ``exif_orientation``: then
    turned upright as photo viewers show it (for ``predict`` on photos)."""
    if not os.path.isfile(path):
        raise DataError(f"image file not found: {path}")
    data = np.fromfile(path, np.uint8)
    flags = (
        cv2.IMREAD_COLOR if exif_orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    )
    image = cv2.imdecode(data, flags)
    if image is None:
        raise DataError(f"cannot decode image (corrupt or not an image): {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_structured(
    path: str, load: Callable[[IO[str]], Any], parse_error: type[Exception], what: str, kind: str
) -> Any:
    """``load(file)`` of the text file ``path`` (a ``what`` in ``kind``, e.g. "annotation
    file", "JSON"); a missing file or a ``parse_error`` is a :class:`DataError` naming it."""
    try:
        with open(path) as file:
            return load(file)
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except parse_error as error:
        first = " ".join(str(error).split())  # parsers' messages span lines
        raise DataError(f"malformed {kind} in {path}: {first}") from None
