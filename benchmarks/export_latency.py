"""Latency of the three ways to run a detector on this machine: the ssd_jax
Detector (jit), its ``jax.export`` artifact and its ONNX model under onnxruntime.

    python -m benchmarks.export_latency [--width 1.0] [--batch_sizes 1,8] [--repeats 5]
        [--output runs/benchmarks/export_latency.json]

SSD300 with 20 classes and random weights (random weights make every box a
candidate: post-processing at its most expensive), uint8 inputs already at
300x300. ONNX needs the onnx extra (Python 3.11).
"""

import logging

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks.common import define_output_flag, time_calls, write_report
from ssd_jax import build, config_schema, inference, steps
from ssd_jax.models import SSD

FLAGS = flags.FLAGS


def make_detector(width: float) -> inference.Detector:
    config = config_schema.base_config()
    config.model.width = width
    model = SSD("ssd300", 20, width=width, rngs=nnx.Rngs(0))
    graphdef, variables = steps.split_model(model)
    return inference.Detector(graphdef, variables, build.step_settings(config),
                              [f"class{k}" for k in range(1, 21)], 300)  # fmt: skip


def measure(detector, exported, session, batch_size: int) -> dict:
    """Median milliseconds of each way to run the detector on one batch."""
    images = np.random.default_rng(0).integers(0, 256, (batch_size, 300, 300, 3), np.uint8)
    calls = {
        "detector_ms": lambda: detector.detect_resized(images),
        "jax_export_ms": lambda: exported.call(images),
        "onnxruntime_ms": lambda: session.run(None, {"in_0": images}),
    }
    row = {"batch": batch_size}
    row.update({name: 1e3 * time_calls(call, FLAGS.repeats) for name, call in calls.items()})
    print(" ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return row


def main(argv: list[str]) -> None:
    del argv
    import onnxruntime

    from ssd_jax.exporters import jax_export, onnx_export

    for name in ("jax2onnx", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    detector = make_detector(FLAGS.width)
    exported, _ = jax_export.export_detector(detector, platforms=("cpu",))
    model = onnx_export.export_onnx(detector)
    session = onnxruntime.InferenceSession(model.SerializeToString())
    rows = [measure(detector, exported, session, int(size)) for size in FLAGS.batch_sizes]
    write_report(FLAGS.output, "export_latency", rows, width=FLAGS.width, jax=jax.__version__,
                 onnxruntime=onnxruntime.__version__)  # fmt: skip


if __name__ == "__main__":
    flags.DEFINE_float("width", 1.0, "Channel width multiplier of SSD300.")
    flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes.")
    flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (median).")
    define_output_flag("export_latency")
    app.run(main)
