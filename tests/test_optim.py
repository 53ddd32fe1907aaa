"""The optimizer that `build.optimizer` makes from a configuration, step by step
against hand-computed updates: SGD with momentum, weight decay on conv kernels
only, gradient clipping, Adam, and the learning rate scaled with the batch."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssd_jax import build, config_schema, optim
from ssd_jax.models import SSD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def test_the_cosine_schedule_warms_up_then_halves_at_the_middle_and_ends_at_zero():
    """build.optimizer with ``schedule = "cosine"``: the batch-scaled rate 0.2
    (0.1 at batch 32, run at 64) times the warmup (step + 1) / 4 and
    (1 + cos(pi * step / 100)) / 2, hand-computed from cos(pi / 100) = 0.9995066,
    cos(3 pi / 100) = 0.9955620 and cos(3 pi / 4) = -0.7071068 (7 digits: rtol 1e-6
    is float32's rounding and theirs)."""
    config = config_schema.base_config()
    config.batch_size, config.optimizer.learning_rate = 64, 0.1
    config.optimizer.schedule, config.optimizer.warmup_steps = "cosine", 4
    config.num_steps = 100
    config.optimizer.milestones = (10, 20)  # unused by the cosine schedule
    _, schedule = build.optimizer(config)
    steps = (0, 1, 3, 50, 75, 100, 130)
    expected = [
        0.2 * 0.25,  # warmup, cosine still 1
        0.2 * 0.5 * (1 + 0.9995066) / 2,
        0.2 * (1 + 0.9955620) / 2,  # warmup over: cos(3 pi / 100) = 0.9955620
        0.1,  # half the rate at the middle
        0.2 * (1 - 0.7071068) / 2,
        0.0,
        0.0,  # stays at 0 past num_steps
    ]
    got = [float(schedule(s)) for s in steps]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def decayed_paths(model, weight_decay_on: str) -> set[str]:
    """The parameters of ``model`` that SGD (rate 1, no momentum, weight decay 1)
    changes when every gradient is 0 and every parameter 1: those it decays."""
    params = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    sgd = optim.make_optimizer("sgd", optim.step_schedule(1.0, 1, (), 0.1), momentum=0.0,
                               weight_decay=1.0, weight_decay_on=weight_decay_on)  # fmt: skip
    update, _ = sgd.update(jax.tree.map(jnp.zeros_like, params), sgd.init(params), params)
    flat = nnx.to_flat_state(update)
    changed = {"/".join(map(str, path)): np.asarray(v[...]) for path, v in flat}
    for path, value in changed.items():  # -1 where decayed, 0 elsewhere
        assert np.all(value == -1) or np.all(value == 0), path
    return {path for path, value in changed.items() if np.all(value == -1)}


TINY_MODELS = {
    "ssdlite": lambda: SSD("ssdlite320", 3, backbone="mobilenet_v3_large", width=1 / 8,
                           rngs=nnx.Rngs(0)),
    "vgg_bn": lambda: SSD("ssd300", 3, width=1 / 16, batch_norm=True, rngs=nnx.Rngs(0)),
}  # fmt: skip


@pytest.mark.parametrize("model_name", sorted(TINY_MODELS))
def test_weight_decay_applies_to_the_parameters_weight_decay_on_names(model_name):
    """Each ``weight_decay_on`` against a list made from the parameter names:
    kernels: the ``kernel`` leaves; all: every one; all_but_norm: all but those
    of BatchNorm (``bn``) and VGG's conv4_3 L2Norm scale."""
    model = TINY_MODELS[model_name]()
    every = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    kernels = {p for p in every if p.endswith("/kernel")}
    norm = {p for p in every if "/bn/" in p or p.startswith("vgg/conv4_3_norm/")}
    assert kernels and norm and kernels.isdisjoint(norm)
    assert {p for p in every - kernels - norm if p.endswith("/bias")}  # conv biases
    if model_name == "vgg_bn":
        assert "vgg/conv4_3_norm/scale" in norm
    assert decayed_paths(model, "kernels") == kernels
    assert decayed_paths(model, "all") == every
    assert decayed_paths(model, "all_but_norm") == every - norm
    with pytest.raises(ValueError, match="unknown weight_decay_on 'biases'; expected one of "
                                         "kernels, all, all_but_norm"):  # fmt: skip
        optim.make_optimizer("sgd", optim.step_schedule(1.0, 1, (), 0.1), weight_decay_on="biases")


def test_a_new_weight_decay_choice_is_one_entry_in_the_table(monkeypatch):
    """The configuration's rule and message read optim.WEIGHT_DECAY_ON."""
    config = config_schema.load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    config.optimizer.weight_decay_on = "none"
    with pytest.raises(config_schema.ConfigError) as error:
        config_schema.validate(config)
    assert str(error.value).splitlines()[1:] == [
        "  optimizer.weight_decay_on = 'none': must be ('kernels', 'all', 'all_but_norm')"
    ]
    monkeypatch.setitem(optim.WEIGHT_DECAY_ON, "none", ("nothing", lambda names, p: False))
    config_schema.validate(config)
    model = TINY_MODELS["ssdlite"]()
    assert decayed_paths(model, "none") == set()


@pytest.mark.parametrize("weight_decay_on", ["kernels", "all"])
def test_build_gives_the_optimizer_the_configured_weight_decay_on(weight_decay_on):
    config = config_schema.base_config()
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1.0, 1  # rate 1 at batch 32
    config.optimizer.momentum, config.optimizer.weight_decay = 0.0, 0.1
    config.optimizer.weight_decay_on = weight_decay_on
    sgd, _ = build.optimizer(config)
    every = weight_decay_on == "all"  # -(g + 0.1 * p): p = 2, 2, 20
    bias, scale = (-0.7, -2.5) if every else (-0.5, -0.5)
    assert updates(sgd) == pytest.approx(
        {"conv/kernel": -0.7, "conv/bias": bias, "norm/scale": scale}
    )
