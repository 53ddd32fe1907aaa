"""Encoding of boxes as offsets from default boxes, and its exact inverse.

For a box g and a default box d, both in cxcywh, the paper's offsets with
variances ``(v_cx, v_cy, v_w, v_h)`` (default ``(0.1, 0.1, 0.2, 0.2)``) are::

    ((g_cx - d_cx) / d_w / v_cx, (g_cy - d_cy) / d_h / v_cy,
     log(g_w / d_w) / v_w,       log(g_h / d_h) / v_h)

Boxes enter and leave in normalized ``xyxy``; default boxes are ``cxcywh``.
Everything is float32 and broadcasts over leading dimensions.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ssd_jax.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

VARIANCES = (0.1, 0.1, 0.2, 0.2)


def encode(
    boxes_xyxy: jax.Array,
    default_boxes_cxcywh: jax.Array,
    variances: Sequence[float] = VARIANCES,
) -> jax.Array:
    """Offsets of ``boxes_xyxy`` (..., 4) from ``default_boxes_cxcywh`` (..., 4) -> (..., 4).

    Boxes must have positive width and height (the log of a zero size is -inf).
    """
    boxes = xyxy_to_cxcywh(boxes_xyxy)
    defaults = jnp.asarray(default_boxes_cxcywh, jnp.float32)
    variances = jnp.asarray(variances, jnp.float32)
    centre = (boxes[..., :2] - defaults[..., :2]) / defaults[..., 2:]
    size = jnp.log(boxes[..., 2:] / defaults[..., 2:])
    return jnp.concatenate([centre, size], axis=-1) / variances


def decode(
    deltas: jax.Array,
    default_boxes_cxcywh: jax.Array,
    variances: Sequence[float] = VARIANCES,
) -> jax.Array:
    """Inverse of :func:`encode`: offsets (..., 4) -> boxes (..., 4) xyxy, not clipped."""
    deltas = jnp.asarray(deltas, jnp.float32) * jnp.asarray(variances, jnp.float32)
    defaults = jnp.asarray(default_boxes_cxcywh, jnp.float32)
    centre = defaults[..., :2] + deltas[..., :2] * defaults[..., 2:]
    size = defaults[..., 2:] * jnp.exp(deltas[..., 2:])
    return cxcywh_to_xyxy(jnp.concatenate([centre, size], axis=-1))
