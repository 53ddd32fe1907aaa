"""XLA:CPU bug report draft: a bfloat16 conv/ReLU/max-pool stack returns NaN under jit.

jax/jaxlib 0.12.0.1 (Python 3.13, x86-64 CPU): the jitted function below returns
a different number of NaNs from run to run (thousands of 180,000 values; the
eager result is finite, largest value ~143). With
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce`` (YNNPACK's "reduce"
fusion off) the jitted result equals the eager one exactly; jax 0.10.2 gives no
NaN with or without the flag (without it, its fused bf16 program rounds
differently from the eager one, hence "equal False" there, by up to 0.57).
Dropping either pool or the last convolution makes the NaNs go away; the
optimized HLO puts ``reduce-window`` (max pool) inside ``__ynn_fusion`` custom
fusions with the convolutions around it. Nondeterministic NaNs suggest a read of
uninitialized memory in that fusion.

ssd_jax sets the flag at import (``ssd_jax/__init__.py``). Not yet filed: the
machine this was found on has no internet; file it at github.com/openxla/xla.

    python docs/upstream/xla_cpu_ynn_bf16_nan.py
"""

import jax
import jax.numpy as jnp
import numpy as np

LAYERS = [(3, 8), "pool", (8, 16), "pool", (16, 32), (32, 32)]  # (in, out) channels


def make_weights(rng: np.random.Generator) -> list:
    return [
        None if layer == "pool" else rng.normal(size=(3, 3, *layer)).astype(np.float32) * 0.3
        for layer in LAYERS
    ]


def trunk(x: jax.Array, weights: list) -> jax.Array:
    """(1, 300, 300, 3) float32 -> (1, 75, 75, 32) float32, computed in bfloat16."""
    for layer, kernel in zip(LAYERS, weights, strict=True):
        if layer == "pool":
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        else:
            x = jax.lax.conv_general_dilated(
                x.astype(jnp.bfloat16),
                jnp.asarray(kernel, jnp.bfloat16),
                (1, 1),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            x = jax.nn.relu(x)
    return x.astype(jnp.float32)


def main() -> None:
    rng = np.random.default_rng(0)
    weights = make_weights(rng)  # closed over: constants in the compiled program
    x = rng.normal(size=(1, 300, 300, 3)).astype(np.float32)
    jitted = np.asarray(jax.jit(lambda x: trunk(x, weights))(x))
    with jax.disable_jit():
        eager = np.asarray(trunk(x, weights))
    jitted_nans, eager_nans = int(np.isnan(jitted).sum()), int(np.isnan(eager).sum())
    print(
        f"jax {jax.__version__}: jit NaNs {jitted_nans} of {jitted.size}, "
        f"eager NaNs {eager_nans}, equal {np.array_equal(jitted, eager)}"
    )


if __name__ == "__main__":
    main()
