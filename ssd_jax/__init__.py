"""ssd_jax: the SSD object detector (Liu et al. 2016) in JAX and Flax NNX.

Conventions used throughout:

* Boxes are normalized to [0, 1]. Ground truth and detections are ``xyxy``;
  default boxes are ``cxcywh``.
* Class 0 is background; object classes are 1..C.
* Box math, encoding, matching, loss and NMS are pure ``jax.numpy`` functions
  written per image, batched with ``jax.vmap``, with static shapes (ground truth
  padded to ``max_boxes`` with a boolean mask) and computed in float32.
* Images are NHWC; they travel to the device as uint8 and are normalized there.
"""

import importlib.metadata
import os

__version__ = "0.2.0"


def _release(package: str) -> tuple[int, ...]:
    """``package``'s installed version as numbers (``0.12.0.1`` -> (0, 12, 0, 1))."""
    numbers = []
    for part in importlib.metadata.version(package).split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def _check_jax_and_flax() -> None:
    """Flax 0.12.8 and 0.12.9 use ``jax.experimental.hijax.HiPrimitive``, which jax
    0.11.2 renamed (flax issue #5596): with such a pair, ``import flax`` fails with
    an AttributeError that does not say why. Checked before flax is imported, from
    the installed versions alone."""
    try:
        jax_version, flax_version = _release("jax"), _release("flax")
    except importlib.metadata.PackageNotFoundError:
        return  # not installed as a distribution (a source tree): nothing to compare
    if jax_version >= (0, 11, 2) and flax_version < (0, 12, 10):
        raise ImportError(
            f"flax {importlib.metadata.version('flax')} does not work with jax "
            f"{importlib.metadata.version('jax')} (flax >= 0.12.10 is needed from jax "
            "0.11.2 on): pip install -U 'flax>=0.12.10'"
        )


# XLA:CPU's YNNPACK "reduce" fusion (a max pool fused with the convolutions and
# ReLUs around it) returns NaN in bfloat16 on jax 0.12 (reproduction:
# docs/upstream/xla_cpu_ynn_bf16_nan.py); left out, everything else stays fused.
# The flag is read when the CPU backend starts, so it is set at import, unless the
# user set it already. It only concerns the CPU backend; jax 0.10 knows it too.
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def _avoid_xla_cpu_bf16_pooling_bug() -> None:
    """Turn off the YNNPACK reduce fusion in ``XLA_FLAGS`` unless the user chose one."""
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FUSION_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FUSION_FLAG}=-reduce".strip()


_check_jax_and_flax()
_avoid_xla_cpu_bf16_pooling_bug()
