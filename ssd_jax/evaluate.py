"""Evaluates a trained checkpoint on its eval split with the VOC metric.

    python -m ssd_jax.evaluate --checkpoint runs/shapes/checkpoints [--step N] [--output eval.json]
    python -m ssd_jax.evaluate --checkpoint DIR --config configs/ssd300_voc.py \
        --config.data.eval.voc_splits="('VOC/VOC2007:test',)"

The training configuration travels with the checkpoint (its ``meta`` item) and is
used unless ``--config`` (with its ``--config.*`` overrides) is given, e.g. to
point at the data. Prints the per-class AP table and the VOC07 11-point mAP, and
writes them as JSON.
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
from ssd_jax.train import build_model, build_source, evaluate_map, restore_weights, step_settings
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
    """VOC mAP and per-class AP of a checkpoint on ``config.data.eval``."""
    class_names = tuple(config.data.class_names) if config.data.class_names else None
    source = build_source(config.data.eval, class_names)
    detect, state, image_size = load_for_inference(
        checkpoint_dir, config, len(source.class_names), step
    )
    mesh = parallel.make_data_mesh()
    return evaluate_map(detect, state, source, config, image_size, mesh)


def main(argv: list[str]) -> None:
    del argv
    config = FLAGS.config or checkpoint_config(FLAGS.checkpoint, FLAGS.step)
    with config.unlocked():
        config.eval_batches = 0  # the whole eval split
    result = evaluate_checkpoint(FLAGS.checkpoint, config, FLAGS.step)
    width = max(len(name) for name in result)
    for name, value in result.items():
        print(f"{name.removeprefix('ap/'):<{width}} {value:.4f}")
    with open(FLAGS.output, "w") as f:
        json.dump(result, f, indent=2)


FLAGS = flags.FLAGS
if __name__ == "__main__":
    flags.DEFINE_string("checkpoint", None, "Checkpoint directory (a workdir's checkpoints/).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("output", "eval.json", "Where to write the JSON results.")
    config_flags.DEFINE_config_file("config", None, "Configuration (default: the checkpoint's).")
    flags.mark_flags_as_required(["checkpoint"])
    app.run(main)
