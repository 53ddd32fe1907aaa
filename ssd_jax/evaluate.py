"""Evaluates a trained checkpoint on its eval split (VOC or COCO metric).

    python -m ssd_jax.evaluate --checkpoint runs/shapes/checkpoints [--step N] [--output eval.json]
    python -m ssd_jax.evaluate --checkpoint DIR --config configs/ssd300_voc.py \
        --config.data.eval.voc_splits="('VOC/VOC2007:test',)"

The training configuration travels with the checkpoint (its ``meta`` item) and is
used unless ``--config`` (with its ``--config.*`` overrides) is given, e.g. to
point at the data; the network's description (model, class names, input
normalization, detection settings) always comes from the checkpoint.

Prints the per-class AP table and the summary (VOC07 11-point and all-point mAP),
and writes them as JSON. ``--metric coco`` scores with the COCO metric instead
(the configuration's ``eval_metric`` by default).
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import app, flags
from ml_collections import config_flags

from ssd_jax import default_boxes as default_boxes_lib
from ssd_jax import optim, parallel
from ssd_jax.cli import quiet_flags_parser
from ssd_jax.train import (
    build_model,
    build_source,
    evaluate_detections,
    restore_weights,
    step_settings,
)
from ssd_jax.train_step import init_train_state, make_detect_fn


def checkpoint_meta(checkpoint_dir: str, step: int | None = None) -> dict:
    """What was saved beside the weights: ``config``, ``class_names``, ``mean``,
    ``std``, ``architecture``, ``default_boxes``."""
    manager = ocp.CheckpointManager(os.path.abspath(checkpoint_dir))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise ValueError(f"{checkpoint_dir} holds no checkpoint")
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def checkpoint_config(checkpoint_dir: str, step: int | None = None) -> ml_collections.ConfigDict:
    """The training configuration saved with a checkpoint."""
    return ml_collections.ConfigDict(checkpoint_meta(checkpoint_dir, step)["config"])


def load_for_inference(
    checkpoint_dir: str, config: ml_collections.ConfigDict, num_classes: int, step: int | None
):
    """``(detect, state, image_size)``: the jitted ``detect(state, uint8 images)``
    (network in inference mode, decode, NMS) and the restored, replicated state."""
    spec = default_boxes_lib.preset(config.model.default_boxes or config.model.architecture)
    model = build_model(config, num_classes, config.seed)
    optimizer = optim.make_optimizer("sgd", optim.step_schedule(0.0, 1, (), 1.0))
    graphdef, state = init_train_state(model, optimizer)
    state = restore_weights(checkpoint_dir, state, strict=True, step=step)
    state = jax.device_put(state, parallel.replicated(parallel.make_data_mesh()))
    settings = step_settings(config, jnp.asarray(default_boxes_lib.generate(spec)))
    detect = jax.jit(make_detect_fn(graphdef, settings))
    return detect, state, spec.image_size


def evaluate_checkpoint(
    checkpoint_dir: str, config: ml_collections.ConfigDict, step: int | None = None
) -> dict:
    """``config.eval_metric`` (VOC mAP or COCO AP, with per-class AP) of a checkpoint
    on ``config.data.eval``; see :func:`ssd_jax.evaluation.scoring.score`."""
    class_names = tuple(config.data.class_names) if config.data.class_names else None
    source = build_source(config.data.eval, class_names)
    detect, state, image_size = load_for_inference(
        checkpoint_dir, config, len(source.class_names), step
    )
    mesh = parallel.make_data_mesh()
    return evaluate_detections(detect, state, source, config, image_size, mesh)


def with_checkpoint_model(
    config: ml_collections.ConfigDict, saved: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """``config`` (for its data and metric) with what describes the checkpoint's
    network taken from the checkpoint's own config ``saved``: model, class names,
    input normalization and detection settings."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model = ml_collections.ConfigDict(saved.model.to_dict())
    config.data.class_names = tuple(saved.data.class_names)
    config.data.mean, config.data.std = tuple(saved.data.mean), tuple(saved.data.std)
    if saved.get("detection"):
        config.detection = ml_collections.ConfigDict(saved.detection.to_dict())
    return config


def format_table(result: dict[str, float]) -> str:
    """Per-class AP, then the summary numbers, one per line."""
    per_class = {k.removeprefix("ap/"): v for k, v in result.items() if k.startswith("ap/")}
    summary = {k: v for k, v in result.items() if not k.startswith("ap/")}
    width = max(len(name) for name in [*per_class, *summary, "class"])
    lines = [f"{'class':<{width}}  AP", *(f"{n:<{width}}  {v:.4f}" for n, v in per_class.items())]
    lines += ["-" * (width + 8), *(f"{n:<{width}}  {v:.4f}" for n, v in summary.items())]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    saved = checkpoint_config(FLAGS.checkpoint, FLAGS.step)
    config = with_checkpoint_model(FLAGS.config, saved) if FLAGS.config else saved
    with config.unlocked():
        config.eval_batches = 0  # the whole eval split
        config.eval_metric = FLAGS.metric or config.get("eval_metric", "voc")
    result = evaluate_checkpoint(FLAGS.checkpoint, config, FLAGS.step)
    print(format_table(result))
    with open(FLAGS.output, "w") as f:
        json.dump(result, f, indent=2)


FLAGS = flags.FLAGS
if __name__ == "__main__":
    flags.DEFINE_string("checkpoint", None, "Checkpoint directory (a workdir's checkpoints/).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("output", "eval.json", "Where to write the JSON results.")
    flags.DEFINE_enum("metric", None, ["voc", "coco"], "Metric (default: the config's).")
    config_flags.DEFINE_config_file("config", None, "Configuration (default: the checkpoint's).")
    flags.mark_flags_as_required(["checkpoint"])
    # Orbax logs every save and load at INFO: WARNING unless --verbosity says otherwise.
    app.run(main, flags_parser=quiet_flags_parser)
