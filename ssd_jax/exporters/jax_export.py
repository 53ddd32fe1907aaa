"""A detector as a ``jax.export`` artifact: the whole detector (uint8 input
normalization, network, decoding, NMS) with the weights inside, runnable with JAX
alone on every platform it was lowered for.

    import jax
    with open("detector.jaxexport", "rb") as f:
        detector = jax.export.deserialize(bytearray(f.read()))
    found = detector.call(images)  # uint8 (B, S, S, 3) RGB, already resized to S
    # found: {"boxes_xyxy": (B, K, 4) normalized, "scores": (B, K), "classes": (B, K)
    #         1..C, "valid": (B, K) bool, "num_detections": (B,)}
"""

import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import steps
from ssd_jax.errors import UserError
from ssd_jax.inference import Detector

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def check_options(batch_size: int | None = None, platforms: Sequence[str] = PLATFORMS) -> None:
    """A :class:`UserError` for options :func:`export_detector` cannot take."""
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch_size {batch_size}: give 1 or more, or leave it out (any)")
    unknown = [name for name in platforms if name not in PLATFORMS]
    if unknown or len(set(platforms)) < len(platforms) or not platforms:
        raise UserError(
            f"--platforms {','.join(platforms)}: give one or more of "
            f"{','.join(PLATFORMS)}, each once (jax's names; 'gpu' is cuda or rocm)"
        )


def export_detector(
    detector: Detector,
    batch_size: int | None = None,
    platforms: Sequence[str] = PLATFORMS,
) -> tuple[jax.export.Exported, dict]:
    """``(exported, info)``: the whole detector as a ``jax.export.Exported`` taking
    uint8 (B, S, S, 3) RGB images (B symbolic unless ``batch_size``) and returning
    a dict of :class:`ssd_jax.postprocess.Detections` fields; ``info`` holds the
    ``platforms`` and the ``jax_version`` (the rest of the sidecar:
    :func:`ssd_jax.exporters.describe`).

    Lowered for every backend in ``platforms`` (any of them, whichever backend
    exports): one artifact exported on a laptop runs on CPUs, NVIDIA and AMD GPUs
    and TPUs; the weights are stored once, so each platform adds ~1 %."""
    # Host copies: the weights become constants of the artifact, not sharded arrays.
    weights = jax.tree.map(np.asarray, jax.device_get(detector.variables))
    detect_step = steps.make_detect_step(detector.graphdef, detector.settings)

    def detect(images: jax.Array) -> dict[str, jax.Array]:
        return detect_step(jax.tree.map(jnp.asarray, weights), images)._asdict()

    size = detector.image_size
    (batch,) = jax.export.symbolic_shape("b") if batch_size is None else (batch_size,)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
    exported = jax.export.export(jax.jit(detect), platforms=tuple(platforms))(images)
    info = {
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,  # loads in this jax and newer ones
        "runs_on": ", ".join(exported.platforms),
    }
    return exported, info


def to_bytes(detector: Detector, batch_size=None, platforms=PLATFORMS) -> tuple[bytes, dict]:
    """The serialized artifact of :func:`export_detector` and its ``info``."""
    exported, info = export_detector(detector, batch_size, platforms)
    return exported.serialize(), info


def load_export(path: str) -> tuple[jax.export.Exported, dict]:
    """The artifact at ``path`` (written by ``python -m ssd_jax.export`` or
    :func:`ssd_jax.exporters.export`) and its sidecar ``path + ".json"``."""
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    with open(path + ".json") as f:
        return exported, json.load(f)
