"""Optimizer and learning-rate schedule of SSD training."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


def step_schedule(
    learning_rate: float, warmup_steps: int, milestones: Sequence[int], gamma: float
) -> optax.Schedule:
    """Linear warmup from ``learning_rate / warmup_steps`` to ``learning_rate`` over
    ``warmup_steps`` steps, then multiplied by ``gamma`` at each milestone step
    (the paper's "x0.1 at 80k and 100k")."""
    milestones = jnp.asarray(sorted(milestones), jnp.int32)

    def schedule(step: jax.Array) -> jax.Array:
        warmup = jnp.minimum(1.0, (step + 1) / max(warmup_steps, 1))
        decays = jnp.sum(step >= milestones)
        return learning_rate * warmup * gamma**decays

    return schedule


def _kernels_only(params):
    """Weight decay mask: conv kernels (ndim > 1); not biases, BN or L2Norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    name: str,
    schedule: optax.Schedule,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    grad_clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """``"sgd"`` (with momentum) or ``"adam"``, with L2 weight decay added to the
    gradients of the conv kernels (Caffe's ``weight_decay``, which SSD used) and
    optional global-norm gradient clipping."""
    if name == "sgd":
        update = optax.sgd(schedule, momentum=momentum)
    elif name == "adam":
        update = optax.adam(schedule)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adam'")
    parts = []
    if grad_clip_norm:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=_kernels_only))
    return optax.chain(*parts, update)
