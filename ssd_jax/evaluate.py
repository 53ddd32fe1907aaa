r"""Evaluates a checkpoint on an eval split (VOC or COCO metric).

    python -m ssd_jax.evaluate --checkpoint runs/shapes [--step N] [--output eval.json]
    python -m ssd_jax.evaluate --checkpoint DIR --config configs/ssd300_voc.py \
        --config.data.eval.voc_splits="('VOC/VOC2007:test',)"

The training configuration travels with the checkpoint and is used unless
``--config`` (with its ``--config.*`` overrides) is given, e.g. to point at the
data; the network's description (model, class names, input normalization,
detection settings) always comes from the checkpoint.

Prints the per-class AP table, the summary (VOC07 11-point and all-point mAP, or
the COCO numbers with ``--metric coco``) and the eval loss, and writes them as JSON;
``<output stem>_pr.png`` shows each class's precision-recall curve and
``<output stem>_examples.jpg`` the four best and four worst images (ground truth
beside the detections with score >= 0.5).
"""

import json
import os

import jax
from absl import flags

from ssd_jax import checkpoint, cli
from ssd_jax.evaluator import evaluate_checkpoint, format_table, write_figures

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    checkpoint.locate(FLAGS.checkpoint, FLAGS.step)  # a wrong one creates no output folder
    cli.prepare_output_file(FLAGS.output)  # before the evaluation, not after it
    stem = os.path.splitext(FLAGS.output)[0]
    curves_png, examples_jpg = stem + "_pr.png", stem + "_examples.jpg"
    evaluation = evaluate_checkpoint(FLAGS.checkpoint, FLAGS.step, FLAGS.config, FLAGS.metric)
    if jax.process_index() == 0:
        write_figures(evaluation, curves_png, examples_jpg)
    print(format_table(evaluation.metrics))
    with open(FLAGS.output, "w") as f:
        json.dump(evaluation.metrics, f, indent=2)
    print(f"wrote {FLAGS.output}, {curves_png} (precision-recall curves) and {examples_jpg} "
          "(the best and worst images)")  # fmt: skip


if __name__ == "__main__":
    from ml_collections import config_flags

    cli.define_checkpoint_flags()
    flags.adopt_module_key_flags(cli)  # --checkpoint and --step in --help
    flags.DEFINE_string("output", "eval.json", "Where to write the JSON results.")
    from ssd_jax.evaluation.scoring import METRICS

    flags.DEFINE_enum("metric", None, list(METRICS), "Metric (default: the config's).")
    config_flags.DEFINE_config_file("config", None, "Configuration (default: the checkpoint's).")
    cli.run(main)
