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


def label_rectangles(
    boxes_xyxy: np.ndarray, label_sizes: Sequence[tuple[int, int]], image_shape: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Where each box's label goes: (x0, y0, x1, y1) pixel rectangles (x1, y1
    exclusive) inside the image that overlap no earlier label where any place
    allows it.

    Labels are placed in order (give the best detection first). Each tries, in
    turn: above the box, inside it at the top, below it, inside at the bottom,
    each at the box's left edge, then slid right along the box, then the same
    one label height further out (or in), up to four deep; the first place clear
    of the labels placed so far wins, else the least-overlapping one.

    Args:
      boxes_xyxy: (N, 4) pixel boxes.
      label_sizes: N (width, height) of the labels in pixels.
      image_shape: (height, width) of the image.
    """
    height, width = image_shape
    placed: list[tuple[int, int, int, int]] = []
    for (x0, y0, x1, y1), (w, h) in zip(np.asarray(boxes_xyxy), label_sizes, strict=True):
        x0, y0, x1, y1 = (round(float(v)) for v in (x0, y0, x1, y1))
        rows = [
            row
            for k in range(4)  # above, inside top, below, inside bottom, then stacked
            for row in (y0 - (k + 1) * h, y0 + k * h, y1 + k * h, y1 - (k + 1) * h)
        ]
        columns = [x0, *range(x0 + max(w // 2, 1), max(x1 - w, x0) + 1, max(w // 2, 1))]
        candidates = []
        for top in rows:
            for left in columns:
                left = min(max(left, 0), max(width - w, 0))
                top = min(max(top, 0), max(height - h, 0))
                candidates.append((left, top, left + w, top + h))
        overlaps = [sum(_overlap(rect, other) for other in placed) for rect in candidates]
        placed.append(candidates[int(np.argmin(overlaps))])  # the first of the least
    return placed


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Overlapping area of two pixel rectangles (x0, y0, x1, y1), far edges exclusive."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def draw_boxes(
    image: np.ndarray,
    boxes_xyxy: np.ndarray,
    labels: Sequence[int],
    captions: Sequence[str] | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """A copy of ``image`` with (N, 4) pixel xyxy ``boxes_xyxy`` drawn in their
    class colours, each with its caption (if any) on a filled label placed by
    :func:`label_rectangles` (above the box where there is room; labels never
    cover one another where the image allows); line width and text scale with
    the image. Give the most important box first: its label is placed first."""
    out = image.copy()
    thickness = thickness or max(1, round(max(image.shape[:2]) / 400))
    font_scale = 0.45 * max(thickness, 1)
    boxes_xyxy = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    for box, label in zip(boxes_xyxy, labels, strict=True):
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), class_colour(int(label)), thickness)
    captioned = [k for k, caption in enumerate(captions or []) if caption]
    sizes = [cv2.getTextSize(captions[k], cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)[0]
             for k in captioned]  # fmt: skip
    rectangles = label_rectangles(
        boxes_xyxy[captioned], [(w + 2, h + 4) for w, h in sizes], image.shape[:2]
    )
    for k, (lx0, ly0, lx1, ly1), (_, text_h) in zip(captioned, rectangles, sizes, strict=True):
        # far edges exclusive: cv2 fills both corners
        cv2.rectangle(out, (lx0, ly0), (lx1 - 1, ly1 - 1), class_colour(int(labels[k])), -1)
        cv2.putText(out, captions[k], (lx0 + 1, ly0 + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX,
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
