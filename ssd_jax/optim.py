"""Optimizer and learning-rate schedule of SSD training.

Two tables name the choices that the configuration's ``optimizer.schedule`` and
``optimizer.weight_decay_on`` take (its validation and messages read them):
:data:`SCHEDULES` and :data:`WEIGHT_DECAY_ON`.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax


def _warmup(step: jax.Array, warmup_steps: int) -> jax.Array:
    """The warmup factor ``min(1, (step + 1) / warmup_steps)``."""
    return jnp.minimum(1.0, (step + 1) / max(warmup_steps, 1))


def step_schedule(
    learning_rate: float, warmup_steps: int, milestones: Sequence[int], gamma: float
) -> optax.Schedule:
    """Linear warmup from ``learning_rate / warmup_steps`` to ``learning_rate`` over
    ``warmup_steps`` steps, then multiplied by ``gamma`` at each milestone step
    (the paper's "x0.1 at 80k and 100k")."""
    milestones = jnp.asarray(sorted(milestones), jnp.int32)

    def schedule(step: jax.Array) -> jax.Array:
        decays = jnp.sum(step >= milestones)
        return learning_rate * _warmup(step, warmup_steps) * gamma**decays

    return schedule


def cosine_schedule(learning_rate: float, warmup_steps: int, num_steps: int) -> optax.Schedule:
    """The warmup of :func:`step_schedule` times a cosine decay over the whole run:
    ``learning_rate * warmup * (1 + cos(pi * step / num_steps)) / 2``, half the rate
    at ``num_steps / 2`` and 0 at ``num_steps`` (and after).

    torchvision's detection reference (``--lr-scheduler cosineannealinglr``) differs
    in two ways: its ``CosineAnnealingLR(T_max=epochs)`` steps once per epoch, so
    the rate is constant within an epoch and the last epoch trains at
    ``lr * (1 + cos(pi * (epochs - 1) / epochs)) / 2``, not near 0; and in the first
    epoch it multiplies the rate by ``LinearLR(start_factor=0.001,
    total_iters=min(1000, iterations of that epoch - 1))``, a warmup from
    ``lr / 1000`` where this one starts at ``lr / warmup_steps``. As there, the
    warmup factor and the cosine multiply (the cosine does not wait for the warmup
    to end)."""

    def schedule(step: jax.Array) -> jax.Array:
        progress = jnp.minimum(step, num_steps) / max(num_steps, 1)
        return learning_rate * _warmup(step, warmup_steps) * 0.5 * (1 + jnp.cos(math.pi * progress))

    return schedule


# optimizer.schedule: name -> what it is
SCHEDULES = {
    "step": "linear warmup, then x gamma at each of the milestones (step_schedule)",
    "cosine": "linear warmup times a cosine from the rate to 0 at num_steps (cosine_schedule)",
}


def make_schedule(
    name: str,
    learning_rate: float,
    *,
    warmup_steps: int,
    num_steps: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> optax.Schedule:
    """The schedule ``name`` of :data:`SCHEDULES`."""
    if name == "step":
        return step_schedule(learning_rate, warmup_steps, milestones, gamma)
    if name == "cosine":
        return cosine_schedule(learning_rate, warmup_steps, num_steps)
    raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")


# Attribute names of the normalization modules in ssd_jax.models: BatchNorm
# (``bn`` of layers.ConvBN and vgg.ConvBlock) and VGG's L2Norm of conv4_3,
# whose per-channel ``scale`` is a normalization parameter too (torchvision's
# split_normalization_params, which finds norm layers by class, would decay its
# SSD300's conv4_3 scale, a plain nn.Parameter, under --norm-weight-decay 0).
NORMALIZATION_MODULES = ("bn", "conv4_3_norm")


def is_normalization(names: Sequence[str]) -> bool:
    """Whether the parameter at path ``names`` belongs to a normalization module."""
    return any(name in NORMALIZATION_MODULES for name in names)


# optimizer.weight_decay_on: name -> (what it is, decays(path names, parameter))
WEIGHT_DECAY_ON: dict[str, tuple[str, Callable[[tuple[str, ...], jax.Array], bool]]] = {
    "kernels": (
        "conv kernels only (ndim > 1): not biases, BatchNorm or L2Norm parameters "
        "(Caffe's decay_mult 0 on biases, as SSD trained)",
        lambda names, p: p.ndim > 1,
    ),
    "all": (
        "every parameter, biases and normalization ones included (torch SGD's "
        "weight_decay: torchvision's reference without --norm-weight-decay)",
        lambda names, p: True,
    ),
    "all_but_norm": (
        "conv kernels and biases, not BatchNorm or L2Norm parameters (torchvision's "
        "reference with --norm-weight-decay 0)",
        lambda names, p: not is_normalization(names),
    ),
}


def _names(path) -> tuple[str, ...]:
    """The names along a pytree key path (dict keys, attributes, indices)."""
    return tuple(jax.tree_util.keystr(path, simple=True, separator="/").split("/"))


def decay_mask(weight_decay_on: str) -> Callable:
    """``mask(params)``: a tree of bools, True where weight decay applies, as
    :data:`WEIGHT_DECAY_ON` ``[weight_decay_on]`` says."""
    if weight_decay_on not in WEIGHT_DECAY_ON:
        raise ValueError(
            f"unknown weight_decay_on {weight_decay_on!r}; expected one of "
            f"{', '.join(WEIGHT_DECAY_ON)}"
        )
    decays = WEIGHT_DECAY_ON[weight_decay_on][1]

    def mask(params):
        return jax.tree_util.tree_map_with_path(lambda path, p: decays(_names(path), p), params)

    return mask


def make_optimizer(
    name: str,
    schedule: optax.Schedule,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    grad_clip_norm: float | None = None,
    weight_decay_on: str = "kernels",
) -> optax.GradientTransformation:
    """``"sgd"`` (with momentum) or ``"adam"``, with L2 weight decay added to the
    gradients of the parameters that ``weight_decay_on`` (:data:`WEIGHT_DECAY_ON`)
    names (default: the conv kernels, Caffe's ``weight_decay``, which SSD used) and
    optional global-norm gradient clipping. Every choice keeps the same optimizer
    state (a mask, all True for ``"all"``)."""
    if name == "sgd":
        update = optax.sgd(schedule, momentum=momentum)
    elif name == "adam":
        update = optax.adam(schedule)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adam'")
    mask = decay_mask(weight_decay_on)
    parts = []
    if grad_clip_norm:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=mask))
    return optax.chain(*parts, update)
