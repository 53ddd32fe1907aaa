"""Drawing boxes on images, for inspection and the notebooks.

Images are RGB uint8 (H, W, 3); boxes are pixel xyxy unless a name says otherwise.
"""

from collections.abc import Sequence

import cv2
import numpy as np

from ssd_jax.boxes import cxcywh_to_xyxy


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour for class ``label`` (golden-ratio hues)."""
    hue = np.uint8(round((label * 0.618033988749895) % 1.0 * 179))
    hsv = np.array([[[hue, 220, 255]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def draw_boxes(
    image: np.ndarray,
    boxes_xyxy: np.ndarray,
    labels: Sequence[int],
    captions: Sequence[str] | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """A copy of ``image`` with (N, 4) pixel xyxy ``boxes_xyxy`` drawn in their
    class colours, each with its caption (if any) on a filled label above the box
    (inside it at the top edge); line width and text scale with the image."""
    out = image.copy()
    thickness = thickness or max(1, round(max(image.shape[:2]) / 400))
    font_scale = 0.45 * max(thickness, 1)
    captions = captions or [None] * len(labels)
    for box, label, caption in zip(np.asarray(boxes_xyxy), labels, captions, strict=True):
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        colour = class_colour(int(label))
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness)
        if not caption:
            continue
        (text_w, text_h), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y0 - text_h - 4 if y0 - text_h - 4 >= 0 else y0
        cv2.rectangle(out, (x0, top), (x0 + text_w + 2, top + text_h + 4), colour, -1)
        cv2.putText(out, caption, (x0 + 1, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale, (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    return out


def draw_normalized_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    captions: Sequence[str] | None = None,
    box_format: str = "xyxy",
    thickness: int | None = None,
) -> np.ndarray:
    """:func:`draw_boxes` for (N, 4) boxes normalized to [0, 1], ``box_format``
    ``"xyxy"`` (ground truth, detections) or ``"cxcywh"`` (default boxes)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if box_format == "cxcywh":
        boxes = np.asarray(cxcywh_to_xyxy(boxes))
    elif box_format != "xyxy":
        raise ValueError(f"box_format must be 'xyxy' or 'cxcywh', got {box_format!r}")
    height, width = image.shape[:2]
    return draw_boxes(image, boxes * [width, height, width, height], labels, captions, thickness)


def image_grid(images: Sequence[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Same-size RGB images tiled row by row on a white canvas."""
    height, width = images[0].shape[:2]
    rows = -(-len(images) // columns)
    grid = np.full(
        (rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8
    )
    for k, image in enumerate(images):
        if image.shape[:2] != (height, width):
            raise ValueError(f"image {k} is {image.shape[:2]}, the first {(height, width)}")
        r, c = divmod(k, columns)
        grid[r * (height + gap) : r * (height + gap) + height,
             c * (width + gap) : c * (width + gap) + width] = image  # fmt: skip
    return grid
