"""Exports a checkpoint's whole detector (uint8 input normalization, network,
decoding, NMS) with ``jax.export``: a serialized StableHLO artifact with the
weights inside, which runs without ssd_jax or Flax.

    python -m ssd_jax.export --checkpoint runs/shapes --output detector.jaxexport

writes ``detector.jaxexport`` and ``detector.jaxexport.json`` (class names, input
size). To run it, only JAX is needed::

    import jax, numpy as np
    with open("detector.jaxexport", "rb") as f:
        detector = jax.export.deserialize(bytearray(f.read()))
    found = detector.call(images)  # uint8 (B, S, S, 3) RGB, already resized to S
    # found: {"boxes_xyxy": (B, K, 4) normalized, "scores": (B, K), "classes": (B, K)
    #         1..C, "valid": (B, K) bool, "num_detections": (B,)}

The batch dimension is symbolic (any B) unless ``--batch_size`` fixes it. The
artifact is lowered for every platform in ``--platforms`` (default: cpu, cuda,
rocm, tpu), whatever machine exports it: exported on a laptop, it runs on a GPU
server. ``jax.export`` artifacts load in the jax version that wrote them and in
newer ones (within jax's compatibility window; an older jax may refuse them).
"""

import os

from absl import flags

from ssd_jax.errors import UserError
from ssd_jax.inference import EXPORT_PLATFORMS, export_detector, load_detector, save_export

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    unknown = [name for name in FLAGS.platforms if name not in EXPORT_PLATFORMS]
    if unknown or not FLAGS.platforms:
        raise UserError(
            f"--platforms {','.join(FLAGS.platforms)}: give one or more of "
            f"{','.join(EXPORT_PLATFORMS)} (jax's names; 'gpu' is cuda or rocm)"
        )
    detector = load_detector(FLAGS.checkpoint, FLAGS.step)
    exported, info = export_detector(detector, FLAGS.batch_size, FLAGS.platforms)
    save_export(exported, info, FLAGS.output)
    size = os.path.getsize(FLAGS.output) / 1e6
    print(f"wrote {FLAGS.output} ({size:.1f} MB, for {', '.join(info['platforms'])}) and its .json")


if __name__ == "__main__":
    from ssd_jax import cli

    cli.define_checkpoint_flags()
    flags.DEFINE_string("output", "detector.jaxexport", "Where to write the artifact.")
    flags.DEFINE_integer("batch_size", None, "Fixed batch size (default: symbolic, any).")
    flags.DEFINE_list("platforms", list(EXPORT_PLATFORMS), "Backends to lower for.")
    cli.run(main)
