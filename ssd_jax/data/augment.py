"""SSD data augmentation (Liu et al. 2016, section 2.2 and 3.6), NumPy/OpenCV.

Every op takes an RGB image (H, W, 3), normalized xyxy boxes (N, 4) and a
``np.random.Generator``, and returns the transformed image and boxes plus the
indices of the boxes it kept (so labels and flags can follow). Training applies,
in order: :func:`photometric_distort`, :func:`expand`, :func:`random_crop`,
:func:`horizontal_flip`, resize. Evaluation only resizes.
"""

import cv2
import numpy as np

# the paper's sampler: no crop, minimum IoU 0.1 ... 0.9, or any patch
CROP_MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)


def adjust_saturation_hue(
    image: np.ndarray, saturation_factor: float = 1.0, hue_degrees: float = 0.0
) -> np.ndarray:
    """Scales saturation (clipped to [0, 1]) and rotates hue (mod 360 degrees) of a
    float32 RGB image in [0, 255]."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # float32: H [0, 360), S [0, 1], V [0, 255]
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation_factor, 0, 1)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue_degrees, 360)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness (+-32), contrast (x0.5-1.5, before or after the HSV part),
    saturation (x0.5-1.5), hue (+-18 degrees), each with p = 0.5, then a random
    channel permutation with p = 0.5. uint8 RGB in, uint8 RGB out."""
    x = image.astype(np.float32)
    if rng.uniform() < 0.5:
        x += rng.uniform(-32, 32)
    contrast_first = rng.uniform() < 0.5
    if contrast_first and rng.uniform() < 0.5:
        x *= rng.uniform(0.5, 1.5)
    x = np.clip(x, 0, 255)
    saturation = rng.uniform(0.5, 1.5) if rng.uniform() < 0.5 else 1.0
    hue = rng.uniform(-18, 18) if rng.uniform() < 0.5 else 0.0
    if saturation != 1.0 or hue != 0.0:
        x = adjust_saturation_hue(x, saturation, hue)
    if not contrast_first and rng.uniform() < 0.5:
        x *= rng.uniform(0.5, 1.5)
    if rng.uniform() < 0.5:
        x = x[..., rng.permutation(3)]
    return np.clip(x, 0, 255).astype(np.uint8)


def expand(
    image: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    fill_rgb: tuple[float, float, float],
    max_ratio: float = 4.0,
    probability: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Zoom out: with ``probability``, place the image at a random position on a
    canvas ``r`` times its size (r ~ U(1, max_ratio)) filled with ``fill_rgb``
    (the dataset mean, RGB order). Returns the image and the moved boxes."""
    if rng.uniform() >= probability:
        return image, boxes
    height, width = image.shape[:2]
    ratio = rng.uniform(1, max_ratio)
    new_height, new_width = int(height * ratio), int(width * ratio)
    top = int(rng.integers(0, new_height - height + 1))
    left = int(rng.integers(0, new_width - width + 1))
    canvas = np.empty((new_height, new_width, 3), np.uint8)
    canvas[...] = np.round(np.asarray(fill_rgb, np.float64)).astype(np.uint8)
    canvas[top : top + height, left : left + width] = image
    scale = np.array([width, height, width, height], np.float64)
    offset = np.array([left, top, left, top], np.float64)
    new_scale = np.array([new_width, new_height, new_width, new_height], np.float64)
    new_boxes = (boxes.astype(np.float64) * scale + offset) / new_scale
    return canvas, new_boxes.astype(np.float32)


def _iou_with_patch(boxes: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) xyxy boxes with one (4,) xyxy patch."""
    top_left = np.maximum(boxes[:, :2], patch[:2])
    bottom_right = np.minimum(boxes[:, 2:], patch[2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    union = areas + np.prod(patch[2:] - patch[:2]) - intersection
    return intersection / np.maximum(union, 1e-12)


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
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for _ in range(max_trials):
        scale = rng.uniform(min_scale, 1.0)
        aspect = rng.uniform(max(0.5, scale**2), min(2.0, 1 / scale**2))
        patch_w = max(1, round(scale * np.sqrt(aspect) * width))
        patch_h = max(1, round(scale / np.sqrt(aspect) * height))
        left = int(rng.integers(0, width - patch_w + 1))
        top = int(rng.integers(0, height - patch_h + 1))
        patch = np.array([left, top, left + patch_w, top + patch_h]) / [
            width,
            height,
            width,
            height,
        ]
        if len(boxes) == 0:
            return patch, min_iou
        inside = np.all((centres > patch[:2]) & (centres < patch[2:]), axis=1)
        if (inside & (_iou_with_patch(boxes, patch) >= min_iou)).any():
            return patch, min_iou
    return None, min_iou


def crop(
    image: np.ndarray, boxes: np.ndarray, patch: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops ``image`` to the normalized, pixel-aligned ``patch``; keeps the boxes
    whose centre is inside it, clipped to it and renormalized.

    Returns:
      image, boxes (N', 4), kept indices (N',) into the input boxes.
    """
    height, width = image.shape[:2]
    x0, y0, x1, y1 = np.round(patch * [width, height, width, height]).astype(int)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = np.all((centres > patch[:2]) & (centres < patch[2:]), axis=1)
    kept = np.nonzero(inside)[0]
    corners = np.clip(boxes[kept].reshape(-1, 2, 2), patch[:2], patch[2:])
    new_boxes = (corners - patch[:2]) / (patch[2:] - patch[:2])
    return image[y0:y1, x0:x1], new_boxes.reshape(-1, 4).astype(np.float32), kept


def horizontal_flip(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, probability: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Mirrors image and boxes left-right with ``probability``."""
    if rng.uniform() >= probability:
        return image, boxes
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = 1 - boxes[:, 2], 1 - boxes[:, 0]
    return image[:, ::-1], flipped


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes to (size, size) with bilinear interpolation (area when shrinking a lot)."""
    height, width = image.shape[:2]
    shrink = max(height, width) > 2 * size
    return cv2.resize(
        image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def train_augment(
    example: dict,
    rng: np.random.Generator,
    image_size: int,
    fill_rgb: tuple[float, float, float],
    keep_difficult: bool = False,
    keep_crowd: bool = False,
) -> dict:
    """The full training augmentation of one example.

    Difficult and crowd objects are removed first unless ``keep_*``. After the
    geometric ops, boxes narrower or shorter than one pixel of the
    ``image_size`` output are dropped.

    Returns:
      ``{"image": uint8 (S, S, 3), "boxes": float32 (N', 4), "labels": int32 (N',),
      "image_id", "height", "width"}``.
    """
    keep = np.ones(len(example["labels"]), bool)
    if not keep_difficult:
        keep &= ~example["difficult"]
    if not keep_crowd:
        keep &= ~example["is_crowd"]
    boxes, labels = example["boxes"][keep], example["labels"][keep]

    image = photometric_distort(example["image"], rng)
    image, boxes = expand(image, boxes, rng, fill_rgb)
    patch, _ = sample_crop(boxes, image.shape[:2], rng)
    if patch is not None:
        image, boxes, kept = crop(image, boxes, patch)
        labels = labels[kept]
    image, boxes = horizontal_flip(image, boxes, rng)
    image = resize(image, image_size)
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


def eval_preprocess(example: dict, image_size: int) -> dict:
    """Evaluation: resize only; every object kept with its flags."""
    return {**example, "image": resize(example["image"], image_size)}
