"""SSD data augmentation (Liu et al. 2016, section 2.2 and 3.6), NumPy/OpenCV.

Training (:func:`train_augment`) applies
:func:`~ssd_jax.data.photometric.photometric_distort`, then draws a zoom-out, a
crop and a flip (:func:`draw_geometry`) and applies them with the resize as one
affine warp of the selected window (:func:`apply_geometry`; the zoom-out canvas,
of ``fill_rgb``, the configuration's ``data.mean``, is never built). The
separate ops (:func:`expand`, :func:`crop`, :func:`horizontal_flip`; each takes
an RGB image (H, W, 3), normalized xyxy boxes (N, 4) and a
``np.random.Generator`` and returns the image, the boxes and the indices of the
kept boxes) draw the same random numbers and define what the warp must equal
(tested). Evaluation only resizes. :mod:`ssd_jax.data.device_augment` does the
same on the accelerator.
"""

import dataclasses

import cv2
import numpy as np

from ssd_jax.boxes import iou_xyxy
from ssd_jax.data.photometric import photometric_distort

# the paper's sampler: no crop, minimum IoU 0.1 ... 0.9, or any patch
CROP_MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)


def sample_expand(
    image_shape: tuple[int, int],
    rng: np.random.Generator,
    max_ratio: float = 4.0,
    probability: float = 0.5,
) -> tuple[int, int, int, int] | None:
    """Draws a zoom-out: ``(canvas_height, canvas_width, top, left)`` of a canvas
    ``r`` times the image (r ~ U(1, max_ratio)) with the image at (top, left); or
    None (with 1 - ``probability``) for no zoom-out."""
    if rng.uniform() >= probability:
        return None
    height, width = image_shape
    ratio = rng.uniform(1, max_ratio)
    canvas_height, canvas_width = int(height * ratio), int(width * ratio)
    top = int(rng.integers(0, canvas_height - height + 1))
    left = int(rng.integers(0, canvas_width - width + 1))
    return canvas_height, canvas_width, top, left


def expand_boxes(
    boxes: np.ndarray, image_shape: tuple[int, int], canvas: tuple[int, int, int, int]
) -> np.ndarray:
    """Normalized boxes of the image -> normalized boxes of the zoom-out canvas."""
    height, width = image_shape
    canvas_height, canvas_width, top, left = canvas
    scale = np.array([width, height, width, height], np.float64)
    offset = np.array([left, top, left, top], np.float64)
    canvas_scale = np.array([canvas_width, canvas_height] * 2, np.float64)
    return ((boxes.astype(np.float64) * scale + offset) / canvas_scale).astype(np.float32)


def expand(
    image: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    fill_rgb: tuple[float, float, float],
    max_ratio: float = 4.0,
    probability: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Zoom out (:func:`sample_expand`) on a canvas filled with ``fill_rgb`` (the
    dataset mean, RGB order). Returns the canvas image and the moved boxes."""
    canvas = sample_expand(image.shape[:2], rng, max_ratio, probability)
    if canvas is None:
        return image, boxes
    canvas_height, canvas_width, top, left = canvas
    height, width = image.shape[:2]
    out = np.empty((canvas_height, canvas_width, 3), np.uint8)
    out[...] = np.round(np.asarray(fill_rgb, np.float64)).astype(np.uint8)
    out[top : top + height, left : left + width] = image
    return out, expand_boxes(boxes, image.shape[:2], canvas)


def iou_with_patches(boxes: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) xyxy boxes with each of (T, 4) xyxy patches -> (T, N)."""
    return iou_xyxy(boxes[None], patches[:, None], xp=np)


def sample_crop(
    boxes: np.ndarray,
    image_shape: tuple[int, int],
    rng: np.random.Generator,
    min_scale: float = 0.3,
    max_trials: int = 50,
) -> tuple[np.ndarray | None, float | None]:
    """The paper's patch sampler.

    Picks a mode from :data:`CROP_MIN_IOUS`; for a minimum IoU t, draws up to
    ``max_trials`` pixel-aligned patches (side scale U(min_scale, 1), aspect ratio
    U(0.5, 2) limited to what fits) until one contains the centre of a box whose
    IoU with the patch is >= t (Caffe's "any object" constraint, checked on the
    exact patch that :func:`crop` will cut). Mode 0.0 accepts any patch holding a
    box centre; an image without boxes accepts the first patch.

    Args:
      boxes: (N, 4) normalized xyxy.
      image_shape: (height, width) in pixels.
      rng: random generator.

    Returns:
      ``(patch, min_iou)``: the normalized xyxy patch, or ``(None, mode)`` to keep
      the whole image (the "no crop" mode, or no patch satisfied the mode).
    """
    min_iou = CROP_MIN_IOUS[int(rng.integers(len(CROP_MIN_IOUS)))]
    if min_iou is None:
        return None, None
    height, width = image_shape
    # all trials drawn at once; the first that satisfies the constraint wins
    scale = rng.uniform(min_scale, 1.0, max_trials)
    low, high = np.maximum(0.5, scale**2), np.minimum(2.0, 1 / scale**2)
    aspect = low + (high - low) * rng.uniform(size=max_trials)
    patch_w = np.maximum(1, np.round(scale * np.sqrt(aspect) * width))
    patch_h = np.maximum(1, np.round(scale / np.sqrt(aspect) * height))
    left = np.floor(rng.uniform(size=max_trials) * (width - patch_w + 1))
    top = np.floor(rng.uniform(size=max_trials) * (height - patch_h + 1))
    patches = np.stack([left, top, left + patch_w, top + patch_h], 1) / [
        width,
        height,
        width,
        height,
    ]
    if len(boxes) == 0:
        return patches[0], min_iou
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (N, 2)
    inside = np.all(
        (centres[None] > patches[:, None, :2]) & (centres[None] < patches[:, None, 2:]), axis=2
    )  # (T, N)
    good = np.nonzero((inside & (iou_with_patches(boxes, patches) >= min_iou)).any(axis=1))[0]
    return (patches[good[0]], min_iou) if len(good) else (None, min_iou)


def crop_boxes(boxes: np.ndarray, patch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keeps the boxes whose centre lies inside the normalized ``patch``, clipped to
    it and renormalized to it. Returns boxes (N', 4) and their indices (N',)."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = np.all((centres > patch[:2]) & (centres < patch[2:]), axis=1)
    kept = np.nonzero(inside)[0]
    corners = np.clip(boxes[kept].reshape(-1, 2, 2), patch[:2], patch[2:])
    new_boxes = (corners - patch[:2]) / (patch[2:] - patch[:2])
    return new_boxes.reshape(-1, 4).astype(np.float32), kept


def crop(
    image: np.ndarray, boxes: np.ndarray, patch: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops ``image`` to the normalized, pixel-aligned ``patch`` and its boxes with
    :func:`crop_boxes`. Returns image, boxes, kept indices."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = np.round(patch * [width, height, width, height]).astype(int)
    new_boxes, kept = crop_boxes(boxes, patch)
    return image[y0:y1, x0:x1], new_boxes, kept


def flip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Mirrors normalized xyxy boxes left-right."""
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = 1 - boxes[:, 2], 1 - boxes[:, 0]
    return flipped


def horizontal_flip(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, probability: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Mirrors image and boxes left-right with ``probability``."""
    if rng.uniform() >= probability:
        return image, boxes
    return image[:, ::-1], flip_boxes(boxes)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes to (size, size) with bilinear interpolation (area when shrinking a lot)."""
    height, width = image.shape[:2]
    shrink = max(height, width) > 2 * size
    return cv2.resize(
        image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def _warp_window(
    image: np.ndarray,
    window: np.ndarray,
    flip: bool,
    size: int,
    fill_rgb: tuple[float, float, float],
) -> np.ndarray:
    """Resamples the pixel ``window`` (x0, y0, x1, y1, may extend past the image,
    where it shows ``fill_rgb``) of ``image`` to (size, size), mirrored if ``flip``.

    Uses cv2.resize's pixel-centre convention, so without zoom-out it equals
    cropping then resizing."""
    x0, y0, x1, y1 = window
    scale_x, scale_y = (x1 - x0) / size, (y1 - y0) / size
    if flip:  # output column u shows source x = x1 - (u + 0.5) * scale_x - 0.5
        row_x = [-scale_x, 0.0, x1 - 0.5 * scale_x - 0.5]
    else:
        row_x = [scale_x, 0.0, x0 + 0.5 * scale_x - 0.5]
    matrix = np.array([row_x, [0.0, scale_y, y0 + 0.5 * scale_y - 0.5]])
    height, width = image.shape[:2]
    inside = x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE if inside else cv2.BORDER_CONSTANT,
        borderValue=tuple(float(v) for v in fill_rgb),
    )


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The geometric augmentation's parameters: the zoom-out canvas
    ``(height, width, top, left)`` in pixels (None: no zoom-out), the crop patch as
    normalized xyxy of the canvas (None: no crop) and the flip."""

    canvas: tuple[int, int, int, int] | None
    patch: np.ndarray | None
    flip: bool


def draw_geometry(
    boxes: np.ndarray, image_shape: tuple[int, int], rng: np.random.Generator, zoom_out: bool = True
) -> Geometry:
    """Zoom-out (:func:`sample_expand`; not drawn unless ``zoom_out``), crop
    (:func:`sample_crop` on the canvas's boxes) and flip (p = 0.5), drawn in that
    order, for normalized xyxy ``boxes`` (N, 4) of an image of ``image_shape``
    (height, width)."""
    canvas = sample_expand(image_shape, rng) if zoom_out else None
    canvas_shape = image_shape if canvas is None else canvas[:2]
    if canvas is not None:
        boxes = expand_boxes(boxes, image_shape, canvas)
    patch, _ = sample_crop(boxes, canvas_shape, rng)
    return Geometry(canvas, patch, bool(rng.uniform() < 0.5))


def apply_geometry(
    image: np.ndarray,
    boxes: np.ndarray,
    geometry: Geometry,
    image_size: int,
    fill_rgb: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zoom-out, crop and flip of ``geometry`` then resize to (image_size,
    image_size), as one affine warp of the selected window: the 16x-larger
    zoom-out canvas is never built. Returns the image, the boxes (N', 4) and
    the indices of the kept boxes (centres inside the crop)."""
    height, width = image.shape[:2]
    canvas = geometry.canvas or (height, width, 0, 0)
    if geometry.canvas is not None:
        boxes = expand_boxes(boxes, (height, width), canvas)
    canvas_height, canvas_width, top, left = canvas
    patch, kept = geometry.patch, np.arange(len(boxes))
    if patch is None:
        patch = np.array([0.0, 0.0, 1.0, 1.0])
    else:
        boxes, kept = crop_boxes(boxes, patch)
    if geometry.flip:
        boxes = flip_boxes(boxes)
    canvas_scale = np.array([canvas_width, canvas_height, canvas_width, canvas_height])
    window = np.round(patch * canvas_scale) - [left, top, left, top]
    return _warp_window(image, window, geometry.flip, image_size, fill_rgb), boxes, kept


def train_augment(
    example: dict,
    rng: np.random.Generator,
    image_size: int,
    fill_rgb: tuple[float, float, float],
    keep_difficult: bool = False,
    keep_crowd: bool = False,
    *,
    photometric: bool = True,
    zoom_out: bool = True,
) -> dict:
    """The full training augmentation of one example: :func:`photometric_distort`,
    zoom-out (:func:`sample_expand`), :func:`sample_crop`, flip (p = 0.5) and resize.
    ``photometric=False`` / ``zoom_out=False`` leave out those steps and their
    random draws (torchvision's "ssdlite" policy: crop and flip only).

    The geometric ops draw the same random numbers as :func:`expand`,
    :func:`crop` and :func:`horizontal_flip` applied in turn (:func:`draw_geometry`),
    and the pixels come from one affine warp (:func:`apply_geometry`). Difficult
    and crowd objects are removed first unless ``keep_*``; boxes narrower or
    shorter than one output pixel are dropped.

    Returns:
      ``{"image": uint8 (S, S, 3), "boxes": float32 (N', 4), "labels": int32 (N',),
      "image_id", "height", "width"}``.
    """
    boxes, labels = training_targets(example, keep_difficult, keep_crowd)
    image = photometric_distort(example["image"], rng) if photometric else example["image"]
    geometry = draw_geometry(boxes, image.shape[:2], rng, zoom_out)
    image, boxes, kept = apply_geometry(image, boxes, geometry, image_size, fill_rgb)
    return training_output(example, image, boxes, labels[kept], image_size)


def training_targets(
    example: dict, keep_difficult: bool, keep_crowd: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The boxes and labels of ``example`` that are training targets: difficult
    and crowd objects are left out unless ``keep_*``."""
    keep = np.ones(len(example["labels"]), bool)
    if not keep_difficult:
        keep &= ~example["difficult"]
    if not keep_crowd:
        keep &= ~example["is_crowd"]
    return example["boxes"][keep], example["labels"][keep]


def training_output(
    example: dict, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, image_size: int
) -> dict:
    """Clips boxes and drops those under one output pixel."""
    boxes = np.clip(boxes, 0, 1)
    big_enough = np.all((boxes[:, 2:] - boxes[:, :2]) * image_size >= 1, axis=1)
    return {
        "image": image,
        "boxes": boxes[big_enough].astype(np.float32),
        "labels": labels[big_enough].astype(np.int32),
        "image_id": example["image_id"],
        "height": example["height"],
        "width": example["width"],
    }


def train_resize_only(
    example: dict, image_size: int, keep_difficult: bool = False, keep_crowd: bool = False
) -> dict:
    """Training without augmentation: targets as in :func:`train_augment`, image
    only resized."""
    boxes, labels = training_targets(example, keep_difficult, keep_crowd)
    return training_output(example, resize(example["image"], image_size), boxes, labels, image_size)


def eval_preprocess(example: dict, image_size: int) -> dict:
    """Evaluation: resize only; every object kept with its flags."""
    return {**example, "image": resize(example["image"], image_size)}
