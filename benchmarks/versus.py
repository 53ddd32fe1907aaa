"""Head-to-head timing of our jitted steps against a PyTorch contender in one
process (``ssdlite_speed``, ``nvidia_speed``): compiled calls, interleaved
rounds, the median round, and the flags that set them."""

import time
from collections.abc import Callable

import jax
from absl import flags

from ssd_jax import build, optim, steps

FLAGS = flags.FLAGS


def define_timing_flags(repeats: int, iterations: int, warmup: int) -> None:
    """``--repeats``, ``--iterations``, ``--warmup`` and ``--interleave`` of
    :func:`median_seconds`, with these defaults."""
    flags.DEFINE_integer("repeats", repeats, "Timed rounds per measurement (median reported).")
    flags.DEFINE_integer("iterations", iterations, "Calls of each contender per round.")
    flags.DEFINE_integer("warmup", warmup, "Untimed calls of each contender before the rounds.")
    flags.DEFINE_bool("interleave", True, "Rounds of all contenders in turn (else one by one).")


def compile_seconds(fn, *args) -> tuple[Callable, float]:
    """``jax.jit(fn)`` compiled for ``args``, and the seconds compiling took."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def our_train_call(
    config, num_classes: int, batch: dict, learning_rate: float, weight_decay: float
) -> tuple[Callable[[], object], float]:
    """Our compiled train step (SGD, momentum 0.9, constant ``learning_rate``) as a
    call on ``batch`` that carries its state and returns the loss, and the seconds
    compiling took."""
    schedule = optim.step_schedule(learning_rate, 1, (), 0.1)
    optimizer = optim.make_optimizer("sgd", schedule, 0.9, weight_decay)
    graphdef, variables = steps.split_model(build.model(config.model, num_classes, seed=0))
    state = steps.init_train_state(variables, optimizer)
    step, compile_s = compile_seconds(
        steps.make_train_step(graphdef, optimizer, schedule, build.step_settings(config)),
        state,
        batch,
    )
    carry = {"state": state}

    def ours():
        carry["state"], metrics = step(carry["state"], batch)
        return metrics["loss"]

    return ours, compile_s


def median_seconds(calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median seconds per call of each ``calls[name]()`` (results blocked on):
    ``--warmup`` untimed calls each, then ``--repeats`` rounds of ``--iterations``
    calls, of every contender in turn within each round (``--interleave``) or
    all of one contender's rounds before the next's."""
    times = {name: [] for name in calls}

    def round_of(name):
        start = time.perf_counter()
        for _ in range(FLAGS.iterations):
            out = calls[name]()
        jax.block_until_ready(out)
        times[name].append((time.perf_counter() - start) / FLAGS.iterations)

    for name, call in calls.items():
        for _ in range(FLAGS.warmup):
            jax.block_until_ready(call())
        if not FLAGS.interleave:
            for _ in range(FLAGS.repeats):
                round_of(name)
    if FLAGS.interleave:
        for _ in range(FLAGS.repeats):
            for name in calls:
                round_of(name)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def timing_settings() -> dict:
    """How :func:`median_seconds` timed, for the report."""
    return {
        "repeats": FLAGS.repeats,
        "iterations": FLAGS.iterations,
        "warmup": FLAGS.warmup,
        "statistic": "median round, seconds per call",
        "interleaved": FLAGS.interleave,
    }
