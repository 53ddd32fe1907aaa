"""Exports a checkpoint's whole detector (uint8 input normalization, network,
decoding, NMS) with ``jax.export``: a serialized StableHLO artifact with the
weights inside, which runs without ssd_jax or Flax.

    python -m ssd_jax.export --checkpoint runs/shapes/checkpoints --output detector.jaxexport

writes ``detector.jaxexport`` and ``detector.jaxexport.json`` (class names, input
size). To run it, only JAX is needed::

    import jax, numpy as np
    with open("detector.jaxexport", "rb") as f:
        detector = jax.export.deserialize(bytearray(f.read()))
    found = detector.call(images)  # uint8 (B, S, S, 3) RGB, already resized to S
    # found: {"boxes_xyxy": (B, K, 4) normalized, "scores": (B, K), "classes": (B, K)
    #         1..C, "valid": (B, K) bool, "num_detections": (B,)}

The batch dimension is symbolic (any B) unless ``--batch_size`` fixes it.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from ssd_jax.cli import quiet_flags_parser
from ssd_jax.evaluate import checkpoint_meta, load_for_inference


def export_detector(
    checkpoint_dir: str, step: int | None = None, batch_size: int | None = None
) -> tuple[jax.export.Exported, dict]:
    """``(exported, info)``: the detector of a checkpoint as a ``jax.export.Exported``
    taking uint8 (B, S, S, 3) RGB images (B symbolic unless ``batch_size``) and
    returning a dict of :class:`ssd_jax.postprocess.Detections` fields; ``info``
    holds ``class_names`` and ``image_size`` S."""
    meta = checkpoint_meta(checkpoint_dir, step)
    config = ml_collections.ConfigDict(meta["config"])
    detect, state, image_size = load_for_inference(
        checkpoint_dir, config, len(meta["class_names"]), step
    )
    # Host copies: the weights become constants of the artifact, not sharded arrays.
    weights = jax.tree.map(np.asarray, jax.device_get(state))

    def detector(images: jax.Array) -> dict[str, jax.Array]:
        return detect(jax.tree.map(jnp.asarray, weights), images)._asdict()

    (batch,) = jax.export.symbolic_shape("b") if batch_size is None else (batch_size,)
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.uint8)
    exported = jax.export.export(jax.jit(detector))(images)
    info = {
        "class_names": list(meta["class_names"]),
        "image_size": image_size,
        "input": "uint8 RGB (B, S, S, 3), resized to S x S",
        "output": "boxes_xyxy normalized to [0, 1]; classes 1..C index class_names[c - 1]",
    }
    return exported, info


def save(exported: jax.export.Exported, info: dict, path: str) -> None:
    """Writes ``path`` (the serialized artifact) and ``path + ".json"`` (``info``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(exported.serialize())
    with open(path + ".json", "w") as f:
        json.dump(info, f, indent=2)


def load(path: str) -> tuple[jax.export.Exported, dict]:
    """The artifact written by :func:`save` and its ``info``."""
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    with open(path + ".json") as f:
        return exported, json.load(f)


def main(argv: list[str]) -> None:
    del argv
    exported, info = export_detector(FLAGS.checkpoint, FLAGS.step, FLAGS.batch_size)
    save(exported, info, FLAGS.output)
    print(f"wrote {FLAGS.output} ({os.path.getsize(FLAGS.output) / 1e6:.1f} MB) and its .json")


FLAGS = flags.FLAGS
if __name__ == "__main__":
    flags.DEFINE_string("checkpoint", None, "Checkpoint directory (a workdir's checkpoints/).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("output", "detector.jaxexport", "Where to write the artifact.")
    flags.DEFINE_integer("batch_size", None, "Fixed batch size (default: symbolic, any).")
    flags.mark_flags_as_required(["checkpoint"])
    # Orbax logs every save and load at INFO: WARNING unless --verbosity says otherwise.
    app.run(main, flags_parser=quiet_flags_parser)
