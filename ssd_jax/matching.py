"""Matching of ground truth to default boxes (the paper's "matching strategy").

Per image, with static shapes: ground truth is padded to ``max_boxes`` rows and a
boolean mask says which rows are real. Batch with :func:`match_batch` (a
``jax.vmap`` of :func:`match`).
"""

import jax
import jax.numpy as jnp

from ssd_jax.box_coding import VARIANCES, encode
from ssd_jax.boxes import area_xyxy, cxcywh_to_xyxy, pairwise_iou_xyxy


def match(
    gt_boxes_xyxy: jax.Array,
    gt_labels: jax.Array,
    gt_mask: jax.Array,
    default_boxes_cxcywh: jax.Array,
    match_iou_threshold: float = 0.5,
    variances: tuple[float, ...] = VARIANCES,
) -> tuple[jax.Array, jax.Array]:
    """Assigns every default box a class and regression target for one image.

    1. IoU of every valid ground-truth box against every default box.
    2. Each default box takes the ground truth it overlaps most (first on ties).
    3. Each valid ground truth forces its best default box (first on ties) to be
       positive and matched to it; if two ground truths share a best default box,
       the later one wins.
    4. Other default boxes are positive where their best IoU >= ``match_iou_threshold``.

    Padded rows never match, and neither do rows of zero area (they overlap
    nothing; the data pipeline rejects such boxes before they get here). An image
    without valid ground truth is all background.

    Args:
      gt_boxes_xyxy: (M, 4) float, normalized xyxy; padded rows are ignored.
      gt_labels: (M,) int, classes in 1..C.
      gt_mask: (M,) bool, True for real ground truth.
      default_boxes_cxcywh: (A, 4) float, normalized cxcywh.
      match_iou_threshold: IoU from which a default box is positive.
      variances: offsets' variances (see :mod:`ssd_jax.box_coding`).

    Returns:
      target_labels: (A,) int32, 0 for background, else the matched class.
      target_deltas: (A, 4) float32 encoded offsets of the matched box; 0 for background.
    """
    gt_boxes_xyxy = jnp.asarray(gt_boxes_xyxy, jnp.float32)
    valid = jnp.asarray(gt_mask, bool) & (area_xyxy(gt_boxes_xyxy) > 0)  # (M,)
    num_gt = gt_boxes_xyxy.shape[0]

    iou = pairwise_iou_xyxy(gt_boxes_xyxy, cxcywh_to_xyxy(default_boxes_cxcywh))  # (M, A)
    iou = jnp.where(valid[:, None], iou, -1.0)
    best_gt_iou = iou.max(axis=0)  # (A,)
    best_gt = iou.argmax(axis=0)  # (A,)

    # Bipartite forcing: scatter-max of the ground-truth index is deterministic, so
    # the later ground truth wins a shared default box.
    best_default = iou.argmax(axis=1)  # (M,)
    forcing_gt = jnp.full(best_gt.shape, -1, jnp.int32)
    gt_index = jnp.arange(num_gt, dtype=jnp.int32)
    forcing_gt = forcing_gt.at[best_default].max(jnp.where(valid, gt_index, -1))
    forced = forcing_gt >= 0
    best_gt = jnp.where(forced, forcing_gt, best_gt)

    positive = forced | (best_gt_iou >= match_iou_threshold)
    target_labels = jnp.where(positive, jnp.asarray(gt_labels, jnp.int32)[best_gt], 0)
    # Background rows encode a dummy unit box so that no log(0) enters the graph.
    unit_box = jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32)
    matched_boxes = jnp.where(positive[:, None], gt_boxes_xyxy[best_gt], unit_box)
    target_deltas = jnp.where(
        positive[:, None], encode(matched_boxes, default_boxes_cxcywh, variances), 0.0
    )
    return target_labels, target_deltas


def match_batch(
    gt_boxes_xyxy: jax.Array,
    gt_labels: jax.Array,
    gt_mask: jax.Array,
    default_boxes_cxcywh: jax.Array,
    match_iou_threshold: float = 0.5,
    variances: tuple[float, ...] = VARIANCES,
) -> tuple[jax.Array, jax.Array]:
    """:func:`match` over a batch: (B, M, 4), (B, M), (B, M) ground truth and shared
    (A, 4) default boxes -> (B, A) int32 labels and (B, A, 4) float32 deltas."""
    per_image = jax.vmap(match, in_axes=(0, 0, 0, None, None, None))
    return per_image(
        gt_boxes_xyxy, gt_labels, gt_mask, default_boxes_cxcywh, match_iou_threshold, variances
    )
