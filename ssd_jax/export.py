"""Exports a checkpoint's whole detector (uint8 input normalization, network,
decoding, NMS), with the weights inside, as a ``jax.export`` artifact that runs
with JAX alone, or as an ONNX model (``--format onnx``) for onnxruntime.

    python -m ssd_jax.export --checkpoint runs/shapes --output detector.jaxexport
    python -m ssd_jax.export --checkpoint runs/shapes --format onnx --output detector.onnx

writes the file and ``<output>.json`` (class names, input size, and for
``jax.export`` the platforms and the jax version); the formats are the table
:data:`ssd_jax.exporters.EXPORTERS`. To run them::

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

import os

from absl import flags

from ssd_jax import checkpoint, cli
from ssd_jax.errors import UserError
from ssd_jax.exporters import EXPORTERS, export
from ssd_jax.exporters.jax_export import PLATFORMS
from ssd_jax.inference import load_detector

FLAGS = flags.FLAGS
OPTION_FLAGS = sorted({name for exporter in EXPORTERS.values() for name in exporter.options})


def _options() -> dict:
    """The chosen format's options from the flags, checked before anything is
    loaded; a flag of another format is an error."""
    exporter = EXPORTERS[FLAGS.format]
    foreign = [n for n in OPTION_FLAGS if FLAGS[n].present and n not in exporter.options]
    if foreign:
        takers = [name for name, e in EXPORTERS.items() if foreign[0] in e.options]
        raise UserError(f"{' and '.join('--' + n for n in foreign)}: only for --format "
                        f"{' or '.join(takers)}, not for --format {FLAGS.format} "
                        f"({exporter.what})")  # fmt: skip
    options = {name: FLAGS[name].value for name in exporter.options}
    if exporter.check:
        exporter.check(**options)
    return options


def main(argv: list[str]) -> None:
    del argv
    exporter = EXPORTERS[FLAGS.format]
    output = FLAGS.output or f"detector{exporter.suffix}"
    options = _options()
    checkpoint.locate(FLAGS.checkpoint, FLAGS.step)  # a wrong one creates no output folder
    cli.prepare_output_file(output)
    if exporter.require:
        exporter.require()  # before the checkpoint is read
    info = export(load_detector(FLAGS.checkpoint, FLAGS.step), FLAGS.format, output, **options)
    size = os.path.getsize(output) / 1e6
    print(f"wrote {output} ({size:.1f} MB, for {info['runs_on']}) and its .json")


if __name__ == "__main__":
    cli.define_checkpoint_flags()
    flags.adopt_module_key_flags(cli)  # --checkpoint and --step in --help
    flags.DEFINE_enum("format", "jax", list(EXPORTERS),
                      "; ".join(f"{name}: {e.what}" for name, e in EXPORTERS.items()))  # fmt: skip
    flags.DEFINE_string("output", None, "Where to write (default detector.<format's suffix>).")
    flags.DEFINE_integer("batch_size", None, "Fixed batch size (default: symbolic, any).")
    flags.DEFINE_list("platforms", list(PLATFORMS), "Backends to lower for.")
    cli.run(main)
