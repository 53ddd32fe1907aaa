"""Box format conversions and IoU.

Every box is normalized to [0, 1] (fractions of the image width and height).
Two formats, named in every function and argument:

* ``xyxy``: (x_min, y_min, x_max, y_max); ground truth and detections.
* ``cxcywh``: (center x, center y, width, height); default boxes.

All functions are pure ``jax.numpy``, work on any leading batch shape ``(..., 4)``
and compute in float32, except :func:`iou_xyxy`, the one definition of IoU in the
package, which host code (NumPy, float64) shares through its ``xp`` argument.
"""

import jax
import jax.numpy as jnp


def cxcywh_to_xyxy(boxes_cxcywh: jax.Array) -> jax.Array:
    """(..., 4) cxcywh -> (..., 4) xyxy, float32."""
    boxes_cxcywh = jnp.asarray(boxes_cxcywh, jnp.float32)
    center, size = boxes_cxcywh[..., :2], boxes_cxcywh[..., 2:]
    return jnp.concatenate([center - size / 2, center + size / 2], axis=-1)


def xyxy_to_cxcywh(boxes_xyxy: jax.Array) -> jax.Array:
    """(..., 4) xyxy -> (..., 4) cxcywh, float32."""
    boxes_xyxy = jnp.asarray(boxes_xyxy, jnp.float32)
    top_left, bottom_right = boxes_xyxy[..., :2], boxes_xyxy[..., 2:]
    return jnp.concatenate([(top_left + bottom_right) / 2, bottom_right - top_left], axis=-1)


def area_xyxy(boxes_xyxy: jax.Array) -> jax.Array:
    """(..., 4) xyxy -> (...,) area; boxes with x_max < x_min or y_max < y_min have area 0."""
    boxes_xyxy = jnp.asarray(boxes_xyxy, jnp.float32)
    size = jnp.maximum(boxes_xyxy[..., 2:] - boxes_xyxy[..., :2], 0.0)
    return size[..., 0] * size[..., 1]


def iou_xyxy(boxes1_xyxy, boxes2_xyxy, *, plus_one: float = 0.0, xp=jnp):
    """Intersection over union of boxes paired by broadcasting.

    Args:
      boxes1_xyxy, boxes2_xyxy: (..., 4) xyxy, broadcastable against each other
        (``a[:, None]`` with ``b[None]`` gives every pair).
      plus_one: 0 for continuous coordinates; 1 for the VOC devkit's pixel
        coordinates, where a box spans ``x_max - x_min + 1`` pixels.
      xp: the array module: ``jax.numpy``, or ``numpy`` for host code (its dtype,
        e.g. float64, is kept).

    Returns:
      (...) IoU in [0, 1]. A pair whose union is empty (two zero-area boxes) has
      IoU 0 rather than NaN; inverted boxes have area 0.
    """
    top_left = xp.maximum(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    bottom_right = xp.minimum(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    size = xp.maximum(bottom_right - top_left + plus_one, 0)
    intersection = size[..., 0] * size[..., 1]
    union = _area(boxes1_xyxy, plus_one, xp) + _area(boxes2_xyxy, plus_one, xp) - intersection
    return xp.where(union > 0, intersection / xp.where(union > 0, union, 1), 0)


def _area(boxes_xyxy, plus_one: float, xp):
    size = xp.maximum(boxes_xyxy[..., 2:] - boxes_xyxy[..., :2] + plus_one, 0)
    return size[..., 0] * size[..., 1]


def pairwise_iou_xyxy(boxes1_xyxy: jax.Array, boxes2_xyxy: jax.Array) -> jax.Array:
    """Intersection over union of every pair.

    Args:
      boxes1_xyxy: (N, 4) xyxy.
      boxes2_xyxy: (M, 4) xyxy.

    Returns:
      (N, M) float32 in [0, 1]. A pair whose union is empty (two zero-area boxes)
      has IoU 0 rather than NaN.
    """
    boxes1_xyxy = jnp.asarray(boxes1_xyxy, jnp.float32)
    boxes2_xyxy = jnp.asarray(boxes2_xyxy, jnp.float32)
    return iou_xyxy(boxes1_xyxy[:, None, :], boxes2_xyxy[None, :, :])
