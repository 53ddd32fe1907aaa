"""Exports a checkpoint's whole detector (uint8 input normalization, network,
decoding, NMS), with the weights inside, as a ``jax.export`` artifact that runs
with JAX alone, or as an ONNX model (``--format onnx``) for onnxruntime.

    python -m ssd_jax.export --checkpoint runs/shapes --output detector.jaxexport
    python -m ssd_jax.export --checkpoint runs/shapes --format onnx --output detector.onnx

writes the file and ``<output>.json`` (class names, input size, and for
``jax.export`` the platforms and the jax version). To run them::

    import jax, numpy as np
    with open("detector.jaxexport", "rb") as f:
        detector = jax.export.deserialize(bytearray(f.read()))
    found = detector.call(images)  # uint8 (B, S, S, 3) RGB, already resized to S
    # found: {"boxes_xyxy": (B, K, 4) normalized, "scores": (B, K), "classes": (B, K)
    #         1..C, "valid": (B, K) bool, "num_detections": (B,)}

    import onnxruntime
    session = onnxruntime.InferenceSession("detector.onnx")
    boxes_xyxy, scores, classes, valid, num_detections = session.run(None, {"in_0": images})

The batch dimension is symbolic (any B) unless ``--batch_size`` fixes it (jax
only). The jax artifact is lowered for every platform in ``--platforms``
(default: cpu, cuda, rocm, tpu), whatever machine exports it: exported on a
laptop, it runs on a GPU server. ``jax.export`` artifacts load in the jax version
that wrote them and in newer ones (within jax's compatibility window; an older
jax may refuse them). ONNX export needs the ``onnx`` extra (Python 3.11).
"""

import logging
import os

from absl import flags

from ssd_jax import checkpoint, cli
from ssd_jax.errors import UserError
from ssd_jax.inference import EXPORT_PLATFORMS, export_detector, load_detector, save_export

FLAGS = flags.FLAGS


def _check_flags() -> None:
    """The jax-only flags, before anything is loaded."""
    if FLAGS.format == "onnx":
        given = [f"--{n}" for n in ("batch_size", "platforms") if FLAGS[n].present]
        if given:
            raise UserError(f"{' and '.join(given)}: only for --format jax (ONNX models "
                            "take any batch size and run wherever onnxruntime does)")  # fmt: skip
        return
    if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
        raise UserError(f"--batch_size {FLAGS.batch_size}: give 1 or more, or leave it out (any)")
    unknown = [name for name in FLAGS.platforms if name not in EXPORT_PLATFORMS]
    repeated = len(set(FLAGS.platforms)) < len(FLAGS.platforms)
    if unknown or repeated or not FLAGS.platforms:
        raise UserError(
            f"--platforms {','.join(FLAGS.platforms)}: give one or more of "
            f"{','.join(EXPORT_PLATFORMS)}, each once (jax's names; 'gpu' is cuda or rocm)"
        )


def main(argv: list[str]) -> None:
    del argv
    output = FLAGS.output or f"detector.{'onnx' if FLAGS.format == 'onnx' else 'jaxexport'}"
    _check_flags()
    checkpoint.locate(FLAGS.checkpoint, FLAGS.step)  # a wrong one creates no output folder
    cli.prepare_output_file(output)
    if FLAGS.format == "onnx":
        from ssd_jax import onnx_export

        onnx_export.require_onnx()  # before the checkpoint is read
        for name in ("jax2onnx", "onnx_ir"):  # their conversion notes are not for users
            logging.getLogger(name).setLevel(logging.ERROR)
        model, info = onnx_export.export_onnx(load_detector(FLAGS.checkpoint, FLAGS.step))
        onnx_export.save_onnx(model, info, output)
        target = f"onnxruntime, opset {model.opset_import[0].version}"
    else:
        detector = load_detector(FLAGS.checkpoint, FLAGS.step)
        exported, info = export_detector(detector, FLAGS.batch_size, FLAGS.platforms)
        save_export(exported, info, output)
        target = ", ".join(info["platforms"])
    size = os.path.getsize(output) / 1e6
    print(f"wrote {output} ({size:.1f} MB, for {target}) and its .json")


if __name__ == "__main__":
    cli.define_checkpoint_flags()
    flags.adopt_module_key_flags(cli)  # --checkpoint and --step in --help
    flags.DEFINE_enum("format", "jax", ["jax", "onnx"], "jax.export artifact or ONNX model.")
    flags.DEFINE_string("output", None, "Where to write (default detector.jaxexport / .onnx).")
    flags.DEFINE_integer("batch_size", None, "Fixed batch size (default: symbolic, any).")
    flags.DEFINE_list("platforms", list(EXPORT_PLATFORMS), "Backends to lower for (jax).")
    cli.run(main)
