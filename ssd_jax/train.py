"""Trains SSD: ``python -m ssd_jax.train --config configs/ssd300_voc.py --workdir DIR``.

Overrides: ``--config.batch_size=16 --config.model.batch_norm=True`` (unknown keys
fail). Rerunning the same command on the same workdir resumes from its last
checkpoint. See :func:`train_and_evaluate` for what lands in the workdir.
"""

import json
import math
import os
import signal
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from flax import nnx, traverse_util
from jax.experimental import multihost_utils
from ml_collections import config_flags

from ssd_jax import default_boxes as default_boxes_lib
from ssd_jax import optim, parallel
from ssd_jax.cli import quiet_flags_parser
from ssd_jax.configs import base_config, scaled_learning_rate
from ssd_jax.data import pipeline
from ssd_jax.data.sources import CocoSource, TfdsSource, VocSource
from ssd_jax.data.synthetic import SHAPE_NAMES, SyntheticShapes
from ssd_jax.evaluation import scoring
from ssd_jax.metrics_writer import MetricsWriter, plot_learning_curve
from ssd_jax.models import SSD
from ssd_jax.train_step import (
    StepSettings,
    init_train_state,
    make_detect_fn,
    make_eval_loss,
    make_train_step,
)

BATCH_KEYS = ("image", "boxes", "labels", "mask")  # what the device step needs
EVAL_GT_KEYS = (
    "boxes", "labels", "mask", "difficult", "is_crowd", "is_padding", "height", "width", "image_id"
)  # fmt: skip


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and checkpoint."""


def build_source(data: ml_collections.ConfigDict, class_names: tuple[str, ...] | None):
    """A data source from one ``config.data.train`` / ``config.data.eval`` block."""
    if data.kind == "voc":
        splits = [tuple(entry.rsplit(":", 1)) for entry in data.voc_splits]
        if not splits or any(len(s) != 2 or not all(s) for s in splits):
            raise ValueError(f"voc_splits must be 'root:split' entries, got {data.voc_splits}")
        return VocSource(splits, **({"class_names": class_names} if class_names else {}))
    if data.kind == "coco":
        return CocoSource(data.annotation_file, data.image_dir, class_names)
    if data.kind == "tfds":
        return TfdsSource(data.tfds_name, data.tfds_split, data.data_dir or None, class_names)
    if data.kind == "synthetic":
        num_classes = len(class_names) if class_names else 4
        if class_names and tuple(class_names) != SHAPE_NAMES[:num_classes]:
            raise ValueError(f"synthetic class_names must be a prefix of {SHAPE_NAMES}")
        return SyntheticShapes(
            data.num_images,
            num_classes=num_classes,
            image_size=(data.image_height, data.image_width),
            max_objects=data.max_objects,
            seed=data.seed,
            min_size=data.min_size,
            max_size=data.max_size,
        )
    raise ValueError(f"unknown data kind {data.kind!r}: voc, coco, tfds or synthetic")


def build_model(config: ml_collections.ConfigDict, num_classes: int, seed: int) -> SSD:
    spec = default_boxes_lib.preset(config.model.default_boxes or config.model.architecture)
    return SSD(
        config.model.architecture,
        num_classes,
        boxes_per_location=spec.boxes_per_location,
        batch_norm=config.model.batch_norm,
        width=config.model.width,
        dtype=jnp.dtype(config.model.dtype),
        rngs=nnx.Rngs(seed),
    )


def load_backbone(model: SSD, path: str) -> tuple[tuple, tuple] | None:
    """Loads converted VGG16 weights into ``model.vgg``: an ``.npz`` (from
    ``convert_torch_vgg.py``) whose keys are the trunk's variable paths, e.g.
    ``vgg/conv1_1/conv/kernel`` (HWIO). Returns the input normalization the
    weights expect, ``(mean, std)`` (0-255 RGB), or None if the file records none."""
    weights = dict(np.load(path))
    normalization = None
    if "normalization/mean" in weights:
        mean, std = weights.pop("normalization/mean"), weights.pop("normalization/std")
        normalization = (tuple(map(float, mean)), tuple(map(float, std)))
    trunk = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model.vgg)), sep="/")
    for key, value in weights.items():
        name = key.removeprefix("vgg/")
        if name not in trunk:
            raise ValueError(f"{path}: {key} is not a VGG16 trunk variable")
        if trunk[name].shape != value.shape:
            raise ValueError(
                f"{path}: {key} has shape {value.shape}, the model {trunk[name].shape}"
            )
        trunk[name] = jnp.asarray(value, trunk[name].dtype)
    state = nnx.state(model.vgg)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(trunk, sep="/"))
    nnx.update(model.vgg, state)
    return normalization


def step_settings(config: ml_collections.ConfigDict, default_boxes: jax.Array) -> StepSettings:
    """The device steps' settings from a training config."""
    detection = config.get("detection") or base_config().detection  # older checkpoints: none
    return StepSettings(
        default_boxes,
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
        compute_dtype=jnp.dtype(config.model.dtype),
        iou_threshold=config.loss.iou_threshold,
        neg_pos_ratio=config.loss.neg_pos_ratio,
        alpha=config.loss.alpha,
        score_threshold=detection.score_threshold,
        nms_iou_threshold=detection.nms_iou_threshold,
        top_k_per_class=detection.top_k_per_class,
        max_detections=detection.max_detections,
    )


def checkpoint_meta_of(config, class_names, workdir) -> dict:
    """What a checkpoint needs to be used on its own (evaluation, inference)."""
    return {
        "config": json.loads(config.to_json_best_effort()),
        "class_names": list(class_names),
        "architecture": config.model.architecture,
        "default_boxes": config.model.default_boxes or config.model.architecture,
        "mean": list(config.data.mean),
        "std": list(config.data.std),
        "workdir": workdir,
    }


def restore_weights(path: str, state: dict, strict: bool = False, step: int | None = None) -> dict:
    """Parameters and BN statistics of ``state`` from the checkpoint directory
    ``path`` (its latest step, or ``step``); the optimizer state is left as is.

    With ``strict=False`` (fine-tuning) variables whose shape differs, e.g. the
    confidence heads of a model with another class count, keep their values;
    with ``strict=True`` any missing or mismatched variable is an error.
    """
    manager = ocp.CheckpointManager(
        os.path.abspath(path), item_handlers={"state": ocp.StandardCheckpointHandler()}
    )
    step = manager.latest_step() if step is None else step
    if step is None:
        raise ValueError(f"{path} holds no checkpoint")
    # The checkpoint's own tree, placed on this process's first device: it may
    # have been written on another number of devices or with another optimizer.
    on_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_device),
        manager.item_metadata(step)["state"],
        is_leaf=lambda x: hasattr(x, "shape"),
    )
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
    for part in ("params", "batch_stats"):
        theirs = {}
        for key, value in traverse_util.flatten_dict(restored["state"][part]).items():
            key = key[:-1] if key[-1] == "value" else key  # Orbax keeps the Variable level
            theirs[tuple(map(str, key))] = value
        ours = traverse_util.flatten_dict(nnx.to_pure_dict(state[part]))
        merged = {}
        for key, value in ours.items():
            found = theirs.get(tuple(map(str, key)))
            if found is not None and found.shape == value.shape:
                merged[key] = found
            elif strict:
                got = "missing" if found is None else f"shape {found.shape}"
                raise ValueError(f"{path} step {step}: {'/'.join(map(str, key))} is {got}")
            else:
                merged[key] = value
        nnx.replace_by_pure_dict(state[part], traverse_util.unflatten_dict(merged))
    return state


def _global_batch(local_batch: dict, mesh) -> dict:
    """Process-local NumPy batch -> global arrays sharded over the data mesh."""
    sharding = parallel.batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[key]))
        for key in BATCH_KEYS
    }


def _check_finite(history: list[dict], last_checkpoint: int | None) -> None:
    for record in history:
        if not math.isfinite(record["loss"]):
            where = f"step {last_checkpoint}" if last_checkpoint is not None else "none yet"
            raise NonFiniteLossError(
                f"loss is {record['loss']} at step {record['step']} "
                f"(loc {record['loc']}, conf {record['conf']}); last good checkpoint: {where}. "
                "Lower the learning rate or raise optimizer.warmup_steps."
            )


def _progress(
    step: int, num_steps: int, record: dict, images_per_s: float, start_step: int, start: float
):
    done = step - start_step
    eta = (time.time() - start) / max(done, 1) * (num_steps - step)
    width = 24
    filled = int(width * step / num_steps)
    print(
        f"[{'#' * filled}{'.' * (width - filled)}] {step}/{num_steps} "
        f"loss {record['loss']:.3f} (loc {record['loc']:.3f} conf {record['conf']:.3f}) "
        f"lr {record['learning_rate']:.2e} {images_per_s:.1f} img/s ETA {eta / 60:.1f} min",
        flush=True,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per ``config``, writing to ``workdir``:

    - ``checkpoints/<step>/`` (Orbax): parameters, BN statistics, optimizer state,
      step, data-iterator state and ``meta`` (config, class names, normalization);
    - ``metrics.jsonl`` and ``tensorboard/`` (train loss / loc / conf, learning rate,
      images/s every ``log_every`` steps; eval loss every ``eval_every``);
    - ``learning_curve.png`` at the end.

    Resumes from the newest checkpoint in ``workdir`` if there is one; otherwise
    starts from ``init.checkpoint``, else ``init.backbone``, else random weights.
    Returns the final train state (replicated arrays).
    """
    workdir = os.path.abspath(workdir)
    if config.distributed:
        jax.distributed.initialize()
    mesh = parallel.make_data_mesh()
    process_count, process_index = jax.process_count(), jax.process_index()
    if config.batch_size % jax.device_count():
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by the {jax.device_count()} devices"
        )

    class_names = tuple(config.data.class_names) if config.data.class_names else None
    train_source = build_source(config.data.train, class_names)
    class_names = tuple(train_source.class_names)
    if process_index == 0:  # every process reads the same annotations: one report
        print(train_source.skipped.report("train data"), flush=True)
    spec = default_boxes_lib.preset(config.model.default_boxes or config.model.architecture)
    default_boxes = jnp.asarray(default_boxes_lib.generate(spec))
    image_size = spec.image_size

    model = build_model(config, len(class_names), config.seed)
    if config.init.backbone and not config.init.checkpoint:
        normalization = load_backbone(model, config.init.backbone)
        if normalization is not None:  # the backbone's input convention wins
            config = ml_collections.ConfigDict(config.to_dict())  # the caller's stays as it is
            config.data.mean, config.data.std = normalization
            print(f"input normalization of {config.init.backbone}: mean {normalization[0]} "
                  f"std {normalization[1]}", flush=True)  # fmt: skip
    schedule = optim.step_schedule(
        scaled_learning_rate(config),
        config.optimizer.warmup_steps,
        config.optimizer.milestones,
        config.optimizer.gamma,
    )
    optimizer = optim.make_optimizer(
        config.optimizer.name,
        schedule,
        config.optimizer.momentum,
        config.optimizer.weight_decay,
        config.optimizer.grad_clip_norm or None,
    )
    graphdef, state = init_train_state(model, optimizer)
    settings = step_settings(config, default_boxes)
    train_step = jax.jit(make_train_step(graphdef, optimizer, schedule, settings), donate_argnums=0)
    eval_loss = jax.jit(make_eval_loss(graphdef, settings))
    detect_fn = jax.jit(make_detect_fn(graphdef, settings))

    dataset = pipeline.train_dataset(
        train_source,
        image_size=image_size,
        batch_size=config.batch_size // process_count,
        seed=config.seed,
        max_boxes=config.data.max_boxes,
        keep_difficult=config.data.keep_difficult,
        keep_crowd=config.data.keep_crowd,
        augment=config.data.augment,
        shard_index=process_index,
        shard_count=process_count,
    )
    iterator = pipeline.make_iterator(dataset, num_workers=config.data.num_workers)

    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
    )
    meta = checkpoint_meta_of(config, class_names, workdir)
    latest = manager.latest_step()
    if latest is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(
            latest,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=grain.checkpoint.CheckpointRestore(iterator),
            ),
        )
        state = restored["state"]
        print(f"resumed from {workdir} at step {latest}", flush=True)
    elif config.init.checkpoint:
        state = restore_weights(config.init.checkpoint, state)
    state = jax.device_put(state, parallel.replicated(mesh))

    def save(step: int) -> None:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(iterator),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    eval_source = None
    if config.eval_every:
        eval_source = build_source(config.data.eval, class_names)

    writer = MetricsWriter(workdir) if process_index == 0 else None
    try:  # also on errors and SIGTERM (see main): Grain workers must not outlive us
        start_step = int(jax.device_get(state["step"]))
        last_checkpoint = latest
        pending: list[dict] = []
        truncated = 0  # objects beyond data.max_boxes dropped from this window's images
        window_start, start = time.time(), time.time()
        for step in range(start_step + 1, config.num_steps + 1):
            last = step == config.num_steps
            local_batch = next(iterator)
            truncated += int(local_batch["num_truncated"].sum())
            state, metrics = train_step(state, _global_batch(local_batch, mesh))
            pending.append(metrics)

            if step % config.log_every == 0 or last:
                history = jax.device_get(pending)  # the only host sync of the loop
                for offset, record in enumerate(history):
                    record["step"] = step - len(history) + 1 + offset
                _check_finite(history, last_checkpoint)
                images_per_s = len(history) * config.batch_size / (time.time() - window_start)
                summary = {
                    k: float(np.mean([r[k] for r in history])) for k in history[-1] if k != "step"
                }
                summary["learning_rate"] = float(history[-1]["learning_rate"])
                summary["images_per_s"] = images_per_s
                summary["truncated_objects"] = truncated
                if writer:
                    writer.write(step, summary)
                    _progress(step, config.num_steps, summary, images_per_s, start_step, start)
                pending, truncated, window_start = [], 0, time.time()

            if step % config.checkpoint_every == 0 or last:
                save(step)
                last_checkpoint = step

            if eval_source is not None and (step % config.eval_every == 0 or last):
                result = evaluate_loss(eval_loss, state, eval_source, config, image_size, mesh)
                result.update(
                    evaluate_detections(detect_fn, state, eval_source, config, image_size, mesh)
                )
                if writer:
                    writer.write(step, result, prefix="eval")
                    name, value = scoring.headline(result)
                    loss = result["loss"]
                    print(f"eval at step {step}: loss {loss:.3f} {name} {value:.4f}", flush=True)

    finally:
        manager.wait_until_finished()  # a checkpoint being written is completed
        if hasattr(iterator, "close"):  # stops Grain's worker processes
            iterator.close()
        if writer:
            writer.close()
    if writer:
        plot_learning_curve(writer.jsonl_path, os.path.join(workdir, "learning_curve.png"))
    return state


def _eval_batches(source, config, image_size: int):
    dataset = pipeline.eval_dataset(
        source,
        image_size=image_size,
        batch_size=config.batch_size // jax.process_count(),
        max_boxes=config.data.max_boxes,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    for index, batch in enumerate(pipeline.make_iterator(dataset)):
        if config.eval_batches and index >= config.eval_batches:
            return
        yield batch


def evaluate_loss(eval_loss, state, source, config, image_size: int, mesh) -> dict:
    """Mean loss over the eval split (or its first ``eval_batches`` batches)."""
    totals = [
        eval_loss(state, _global_batch(batch, mesh))
        for batch in _eval_batches(source, config, image_size)
    ]
    totals = jax.device_get(totals)
    return {k: float(np.mean([t[k] for t in totals])) for k in totals[0]}


def evaluate_detections(detect_fn, state, source, config, image_size: int, mesh) -> dict:
    """``config.eval_metric`` ("voc" or "coco") over the eval split, or its first
    ``eval_batches`` batches; detections of all processes are gathered."""
    ground_truth, detections = [], []
    for batch in _eval_batches(source, config, image_size):
        found = detect_fn(state, _global_batch(batch, mesh)["image"])
        local = {k: np.asarray(batch[k]) for k in EVAL_GT_KEYS}
        gathered = multihost_utils.process_allgather({"found": found, "gt": local}, tiled=True)
        gts, dets = scoring.batch_records(gathered["gt"], gathered["found"])
        ground_truth += gts
        detections += dets
    return scoring.score(
        ground_truth,
        detections,
        source.class_names,
        config.eval_metric,
        category_ids=getattr(source, "category_ids", None),
        coco_annotation_file=getattr(source, "annotation_file", None),
    )


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (``kill``, schedulers, preemption) unwinds the stack like Ctrl-C
    instead of ending the process on the spot, so ``train_and_evaluate``'s cleanup
    runs: its checkpoint write completes and Grain's worker processes stop."""

    def stop(signum: int, frame) -> None:
        del frame
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _exit_cleanly_on_sigterm()
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, benchmarks) defines none.
    config_flags.DEFINE_config_file(
        "config", None, "Training configuration file.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go (resumed if present).")
    flags.mark_flags_as_required(["config", "workdir"])
    # Orbax logs every save and load at INFO: WARNING unless --verbosity says otherwise.
    app.run(main, flags_parser=quiet_flags_parser)
