"""The optimizer that `build.optimizer` makes from a configuration, step by step
against hand-computed updates: SGD with momentum, weight decay on conv kernels
only, gradient clipping, Adam, and the learning rate scaled with the batch."""

import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import build, config_schema, optim

PARAMS = {"conv": {"kernel": jnp.full((3, 3, 1, 2), 2.0), "bias": jnp.full((2,), 2.0)},
          "norm": {"scale": jnp.full((2,), 20.0)}}  # fmt: skip
GRADS = {"conv": {"kernel": jnp.full((3, 3, 1, 2), 0.5), "bias": jnp.full((2,), 0.5)},
         "norm": {"scale": jnp.full((2,), 0.5)}}  # fmt: skip


def updates(optimizer, steps: int = 1) -> dict:
    """The update of each leaf (its first value) after ``steps`` equal gradients."""
    state = optimizer.init(PARAMS)
    for _ in range(steps):
        update, state = optimizer.update(GRADS, state, PARAMS)
    return {
        f"{a}/{b}": float(v.ravel()[0]) for a, leaves in update.items() for b, v in leaves.items()
    }


def test_sgd_decays_conv_kernels_only_and_carries_momentum():
    schedule = optim.step_schedule(0.1, 1, (), 0.1)  # constant 0.1
    sgd = optim.make_optimizer("sgd", schedule, momentum=0.9, weight_decay=0.01)
    # step 1: -lr * (g + wd * p) for the kernel, -lr * g for the rest
    assert updates(sgd) == pytest.approx(
        {"conv/kernel": -0.1 * (0.5 + 0.01 * 2), "conv/bias": -0.05, "norm/scale": -0.05}
    )
    # step 2 (same parameters): momentum trace 0.9 * t + g
    assert updates(sgd, 2) == pytest.approx(
        {"conv/kernel": -0.1 * 1.9 * 0.52, "conv/bias": -0.1 * 1.9 * 0.5, "norm/scale": -0.095}
    )


def test_gradient_clipping_scales_the_global_norm_before_decay():
    schedule = optim.step_schedule(1.0, 1, (), 0.1)
    clipped = optim.make_optimizer("sgd", schedule, momentum=0.0, weight_decay=0.0,
                                   grad_clip_norm=1.0)  # fmt: skip
    norm = np.sqrt(0.5**2 * (18 + 2 + 2))  # 22 gradient entries of 0.5
    assert updates(clipped) == pytest.approx({k: -0.5 / norm for k in
                                              ("conv/kernel", "conv/bias", "norm/scale")})  # fmt: skip


def test_adam_first_step_is_the_rate_times_the_gradient_sign():
    """Adam's first update is lr * m / (sqrt(v) + eps) with bias-corrected m = g and
    v = g^2: lr * g / (|g| + eps) per entry. The bias correction divides by
    1 - 0.999 computed in float32, whose rounding (~6e-8 of 1) is up to 6e-5 of
    the 1e-3 it yields: rel 1e-4."""
    schedule = optim.step_schedule(0.01, 1, (), 0.1)
    adam = optim.make_optimizer("adam", schedule, weight_decay=0.0)
    assert updates(adam) == pytest.approx(
        {"conv/kernel": -0.01, "conv/bias": -0.01, "norm/scale": -0.01}, rel=1e-4
    )
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'"):
        optim.make_optimizer("adamw", schedule)


def test_the_learning_rate_scales_with_the_global_batch_size():
    config = config_schema.base_config()
    config.optimizer.learning_rate, config.optimizer.base_batch_size = 1e-3, 32
    for batch_size, rate in ((32, 1e-3), (64, 2e-3), (8, 2.5e-4)):
        config.batch_size = batch_size
        assert build.learning_rate(config) == pytest.approx(rate)
    config.optimizer.warmup_steps, config.optimizer.milestones = 4, (10, 20)
    _, schedule = build.optimizer(config)
    # warmup (step + 1) / 4 of the scaled rate, then x0.1 at each milestone
    expected = [2.5e-4 * f for f in (0.25, 0.5, 0.75, 1.0)] + [2.5e-5, 2.5e-6]
    got = [float(schedule(s)) for s in (0, 1, 2, 3, 10, 20)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
