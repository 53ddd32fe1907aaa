"""From network outputs to detections: softmax, decode, per-class NMS, top-k.

One jit-compiled function for a whole batch with fixed-shape outputs; the loops
over images and classes are ``vmap``s, the greedy NMS a ``fori_loop`` over the
(fixed) candidate slots.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssd_jax.box_coding import VARIANCES, decode
from ssd_jax.boxes import pairwise_iou_xyxy


class Detections(NamedTuple):
    """Fixed-shape detections of a batch, best first; rows past ``num_detections``
    are padding (``valid`` False, box, score and class 0).

    Attributes:
      boxes_xyxy: (B, K, 4) float32, normalized xyxy, clipped to [0, 1].
      scores: (B, K) float32 class probabilities.
      classes: (B, K) int32 in 1..C.
      valid: (B, K) bool.
      num_detections: (B,) int32.
    """

    boxes_xyxy: jax.Array
    scores: jax.Array
    classes: jax.Array
    valid: jax.Array
    num_detections: jax.Array


NMS_METHODS = ("auto", "loop", "fixed_point")


def greedy_nms(
    boxes_xyxy: jax.Array, candidate: jax.Array, nms_iou_threshold: float, method: str = "auto"
) -> jax.Array:
    """Greedy non-maximum suppression over boxes already sorted by score.

    Walks the boxes in order; a candidate is kept unless a kept, higher-ranked box
    overlaps it with IoU > ``nms_iou_threshold``. Two exact implementations (the
    same result; their speed differs by backend):

    - ``"loop"``: one step per box (``fori_loop`` over N), the least work; best
      on CPU.
    - ``"fixed_point"``: "keep i unless a kept earlier box overlaps it", applied
      to the whole keep vector until it stops changing. Box i is final once every
      earlier box is, so this ends after at most N passes, in practice after the
      longest chain of suppressions (a few passes), each pass one (N, N) mask
      reduction: far fewer sequential steps, which is what a GPU needs.
    - ``"auto"``: ``loop`` on CPU, ``fixed_point`` elsewhere.

    Args:
      boxes_xyxy: (N, 4) xyxy, best score first.
      candidate: (N,) bool, boxes that may be kept at all.
      nms_iou_threshold: suppression threshold.
      method: one of ``NMS_METHODS``.

    Returns:
      (N,) bool, True for kept boxes.
    """
    candidate = jnp.asarray(candidate, bool)
    overlaps = pairwise_iou_xyxy(boxes_xyxy, boxes_xyxy) > nms_iou_threshold  # (N, N)
    if method == "auto":
        return jax.lax.platform_dependent(
            overlaps, candidate, cpu=_nms_loop, default=_nms_fixed_point
        )
    if method == "loop":
        return _nms_loop(overlaps, candidate)
    if method == "fixed_point":
        return _nms_fixed_point(overlaps, candidate)
    raise ValueError(f"unknown NMS method {method!r}; expected one of {NMS_METHODS}")


def _nms_loop(overlaps: jax.Array, candidate: jax.Array) -> jax.Array:
    def visit(i: jax.Array, state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        keep, suppressed = state
        keep_i = candidate[i] & ~suppressed[i]
        return keep.at[i].set(keep_i), suppressed | (keep_i & overlaps[i])

    num_boxes = candidate.shape[0]
    no_box = jnp.zeros((num_boxes,), bool)
    keep, _ = jax.lax.fori_loop(0, num_boxes, visit, (no_box, no_box))
    return keep


def _nms_fixed_point(overlaps: jax.Array, candidate: jax.Array) -> jax.Array:
    # suppresses[j, i]: box j ranks above box i and overlaps it.
    suppresses = jnp.triu(overlaps, k=1)

    def apply(keep: jax.Array) -> jax.Array:
        return candidate & ~jnp.any(suppresses & keep[:, None], axis=0)

    def changed(state: tuple[jax.Array, jax.Array]) -> jax.Array:
        keep, previous = state
        return jnp.any(keep != previous)

    def iterate(state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        keep, _ = state
        return apply(keep), keep

    # The fixed point is unique (box i depends only on earlier boxes), so stopping
    # when nothing changes gives exactly the greedy result.
    keep, _ = jax.lax.while_loop(changed, iterate, (apply(candidate), candidate))
    return keep


def _detect_one_class(
    scores: jax.Array,
    boxes_xyxy: jax.Array,
    score_threshold: float,
    nms_iou_threshold: float,
    *,
    top_k: int,
    nms_method: str,
) -> tuple[jax.Array, jax.Array]:
    """(A,) scores and (A, 4) boxes of one class -> (top_k,) scores (-inf where not
    kept) and (top_k, 4) boxes."""
    top_scores, top_index = jax.lax.top_k(scores, top_k)  # best first, lower index on ties
    top_boxes = boxes_xyxy[top_index]
    keep = greedy_nms(top_boxes, top_scores > score_threshold, nms_iou_threshold, nms_method)
    return jnp.where(keep, top_scores, -jnp.inf), top_boxes


def _detect_one_image(
    loc_pred: jax.Array,
    conf_logits: jax.Array,
    default_boxes_cxcywh: jax.Array,
    score_threshold: float,
    nms_iou_threshold: float,
    variances: tuple[float, ...],
    *,
    top_k_per_class: int,
    max_detections: int,
    nms_method: str,
    clip_before_nms: bool,
) -> Detections:
    probs = jax.nn.softmax(jnp.asarray(conf_logits, jnp.float32), axis=-1)  # (A, C + 1)
    boxes = decode(loc_pred, default_boxes_cxcywh, variances)  # (A, 4)
    if clip_before_nms:
        boxes = jnp.clip(boxes, 0.0, 1.0)
    num_boxes, num_classes = probs.shape[0], probs.shape[1] - 1
    top_k = min(top_k_per_class, num_boxes)

    per_class = jax.vmap(
        functools.partial(_detect_one_class, top_k=top_k, nms_method=nms_method),
        in_axes=(0, None, None, None),
    )
    class_scores, class_boxes = per_class(
        probs[:, 1:].T, boxes, score_threshold, nms_iou_threshold
    )  # (C, top_k), (C, top_k, 4)

    flat_classes = jnp.repeat(jnp.arange(1, num_classes + 1, dtype=jnp.int32), top_k)
    # class-major, so ties go to the lower class
    return best_detections(
        class_scores.reshape(-1), class_boxes.reshape(-1, 4), flat_classes, max_detections
    )


def best_detections(
    scores: jax.Array, boxes_xyxy: jax.Array, classes: jax.Array, max_detections: int
) -> Detections:
    """The ``max_detections`` best of one image's kept candidates: ``scores`` (N,)
    (-inf for none), unclipped ``boxes_xyxy`` (N, 4), ``classes`` (N,) in 1..C.
    Returned boxes are clipped to [0, 1]; empty rows are zeros."""
    if scores.shape[0] < max_detections:  # too few slots: pad with empty ones
        pad = max_detections - scores.shape[0]
        scores = jnp.pad(scores, (0, pad), constant_values=-jnp.inf)
        boxes_xyxy = jnp.pad(boxes_xyxy, ((0, pad), (0, 0)))
        classes = jnp.pad(classes, (0, pad))
    best, index = jax.lax.top_k(scores, max_detections)
    valid = best > -jnp.inf
    return Detections(
        boxes_xyxy=jnp.where(valid[:, None], jnp.clip(boxes_xyxy[index], 0.0, 1.0), 0.0),
        scores=jnp.where(valid, best, 0.0),
        classes=jnp.where(valid, classes[index], 0),
        valid=valid,
        num_detections=valid.sum().astype(jnp.int32),
    )


@functools.partial(
    jax.jit, static_argnames=("top_k_per_class", "max_detections", "nms_method", "clip_before_nms")
)
def detect(
    loc_pred: jax.Array,
    conf_logits: jax.Array,
    default_boxes_cxcywh: jax.Array,
    score_threshold: float = 0.01,
    nms_iou_threshold: float = 0.45,
    top_k_per_class: int = 200,
    max_detections: int = 200,
    variances: tuple[float, ...] = VARIANCES,
    nms_method: str = "auto",
    clip_before_nms: bool = False,
) -> Detections:
    """Detections of a batch, the paper's inference procedure.

    Per image: softmax over classes; decode every default box; per object class,
    take the ``top_k_per_class`` highest-scoring boxes, drop those with score <=
    ``score_threshold`` and run greedy NMS at ``nms_iou_threshold`` (a box is suppressed
    by IoU > threshold) on the decoded boxes, unclipped as in the paper's Caffe
    code (or clipped to the image first, as torchvision does, with
    ``clip_before_nms``); then keep the ``max_detections`` best over all classes.
    Returned boxes are clipped to [0, 1].

    Args:
      loc_pred: (B, A, 4) predicted offsets.
      conf_logits: (B, A, C + 1) class logits, background at index 0.
      default_boxes_cxcywh: (A, 4) normalized cxcywh.
      score_threshold: minimum class probability (exclusive).
      nms_iou_threshold: NMS IoU threshold.
      top_k_per_class: candidates per class entering NMS (static).
      max_detections: K, detections kept per image (static).
      variances: offsets' variances.
      nms_method: how greedy NMS is computed (same result): see :func:`greedy_nms`.
      clip_before_nms: clip the decoded boxes to [0, 1] before NMS (static).

    Returns:
      :class:`Detections` with K rows per image.
    """
    one_image = functools.partial(
        _detect_one_image,
        top_k_per_class=top_k_per_class,
        max_detections=max_detections,
        nms_method=nms_method,
        clip_before_nms=clip_before_nms,
    )
    per_image = jax.vmap(one_image, in_axes=(0, 0, None, None, None, None))
    return per_image(
        loc_pred, conf_logits, default_boxes_cxcywh, score_threshold, nms_iou_threshold, variances
    )
