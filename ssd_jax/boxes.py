"""Box format conversions and IoU.

Every box is normalized to [0, 1] (fractions of the image width and height).
Two formats, named in every function and argument:

* ``xyxy``: (x_min, y_min, x_max, y_max); ground truth and detections.
* ``cxcywh``: (center x, center y, width, height); default boxes.

All functions are pure ``jax.numpy``, work on any leading batch shape ``(..., 4)``
and compute in float32.
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
    top_left = jnp.maximum(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])  # (N, M, 2)
    bottom_right = jnp.minimum(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    size = jnp.maximum(bottom_right - top_left, 0.0)
    intersection = size[..., 0] * size[..., 1]  # (N, M)
    union = area_xyxy(boxes1_xyxy)[:, None] + area_xyxy(boxes2_xyxy)[None, :] - intersection
    return jnp.where(union > 0, intersection / jnp.where(union > 0, union, 1.0), 0.0)
