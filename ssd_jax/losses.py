"""The SSD multibox loss: smooth L1 localization + softmax confidence with hard
negative mining, normalized by the number of positives: the batch's (the
paper's) or each image's (NVIDIA's SSD300 v1.1), per :data:`NORMALIZATIONS`."""

import jax
import jax.numpy as jnp
import optax

# How the summed loss is divided: "batch", by the positives of the whole batch (the
# paper, Caffe SSD and most ports); "image", each image's loss by its own
# positives, then the mean over the batch's images (NVIDIA's SSD300 v1.1; an image
# without positives adds 0 and still counts in the mean).
NORMALIZATIONS = ("batch", "image")


def hard_negative_mask(
    background_loss: jax.Array, positive: jax.Array, neg_pos_ratio: float
) -> jax.Array:
    """Hard negative mining for one image.

    Ranks the non-positive default boxes by their background loss (highest first,
    earlier index first on ties) and keeps the top ``min(floor(neg_pos_ratio * P),
    A - P)``, where P is the number of positives.

    Args:
      background_loss: (A,) float32, -log p(background) of each default box.
      positive: (A,) bool.
      neg_pos_ratio: negatives kept per positive (the paper's 3).

    Returns:
      (A,) bool, True for the kept negatives.
    """
    num_pos = positive.sum()
    num_neg = jnp.minimum(jnp.floor(neg_pos_ratio * num_pos), positive.size - num_pos)
    ranked_loss = jnp.where(positive, -jnp.inf, jax.lax.stop_gradient(background_loss))
    order = jnp.argsort(-ranked_loss, stable=True)  # (A,) hardest negative first
    rank = jnp.argsort(order, stable=True)  # (A,) position of each box in that order
    return rank < num_neg


def multibox_loss(
    loc_pred: jax.Array,
    conf_logits: jax.Array,
    target_labels: jax.Array,
    target_deltas: jax.Array,
    neg_pos_ratio: float = 3.0,
    alpha: float = 1.0,
    normalization: str = "batch",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SSD loss of a batch, in float32 whatever the network's dtype.

    ``loss = (conf + alpha * loc) / N`` where N is the number of positive default
    boxes in the whole batch (at least 1); ``loc`` sums smooth L1 (beta 1) over the
    positives' four offsets; ``conf`` sums softmax cross-entropy over positives and,
    per image, the hard negatives (:func:`hard_negative_mask`). With
    ``normalization="image"`` each image's sums are divided by its own positives
    and the results averaged over the B images (0 for an image without any). A
    batch without ground truth has loss 0 and zero gradients.

    Args:
      loc_pred: (B, A, 4) predicted offsets.
      conf_logits: (B, A, C + 1) class logits, background at index 0.
      target_labels: (B, A) int, 0 for background (from :func:`ssd_jax.matching.match_batch`).
      target_deltas: (B, A, 4) encoded target offsets.
      neg_pos_ratio: negatives kept per positive.
      alpha: weight of the localization loss.
      normalization: ``"batch"`` or ``"image"`` (:data:`NORMALIZATIONS`).

    Returns:
      ``(loss, aux)``: the scalar loss and ``{"loc", "conf", "num_pos"}`` (the two
      normalized parts, unweighted, and N before clamping to 1).
    """
    loc_pred = jnp.asarray(loc_pred, jnp.float32)
    conf_logits = jnp.asarray(conf_logits, jnp.float32)
    target_deltas = jnp.asarray(target_deltas, jnp.float32)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}: one of {NORMALIZATIONS}")
    positive = target_labels > 0  # (B, A)
    num_pos = positive.sum().astype(jnp.float32)

    def normalized(per_box: jax.Array) -> jax.Array:  # (B, A) -> the normalized sum
        if normalization == "batch":
            return per_box.sum() / jnp.maximum(num_pos, 1.0)
        per_image = per_box.sum(axis=1) / jnp.maximum(positive.sum(axis=1), 1)
        return per_image.mean()

    smooth_l1 = optax.huber_loss(loc_pred, target_deltas, delta=1.0).sum(axis=-1)  # (B, A)
    loc = normalized(jnp.where(positive, smooth_l1, 0.0))

    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
        conf_logits, target_labels
    )  # (B, A)
    # For a non-positive box the cross-entropy is its background loss -log p(0).
    negative = jax.vmap(hard_negative_mask, in_axes=(0, 0, None))(
        cross_entropy, positive, neg_pos_ratio
    )
    conf = normalized(jnp.where(positive | negative, cross_entropy, 0.0))

    loss = conf + alpha * loc
    return loss, {"loc": loc, "conf": conf, "num_pos": num_pos}
