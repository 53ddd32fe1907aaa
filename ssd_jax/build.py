"""Turns a configuration (:mod:`ssd_jax.config_schema`) into the objects a run
needs: default boxes, data sources, the model, the optimizer and its schedule,
and the settings of the device steps. Everything below this module takes
explicit arguments, never a configuration.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from ssd_jax import default_boxes, optim
from ssd_jax.data import device_augment, formats
from ssd_jax.models import SSD
from ssd_jax.steps import StepSettings


def default_box_spec(model_config: ml_collections.ConfigDict) -> default_boxes.DefaultBoxSpec:
    """The default-box preset of ``config.model``: ``default_boxes``, or the
    architecture's paper layout when that is empty."""
    return default_boxes.preset(model_config.default_boxes or model_config.architecture)


def image_size(model_config: ml_collections.ConfigDict) -> int:
    """The side of the network's square input, in pixels (its default-box preset's)."""
    return default_box_spec(model_config).image_size


def class_names(data_config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """``data.class_names``, or None for the dataset's own list: unset, ``()`` or
    ``(None,)`` (what ``--config.data.class_names=None`` gives)."""
    names = data_config.class_names
    if not names or all(name is None for name in names):
        return None
    return tuple(names)


def train_dataset(
    config: ml_collections.ConfigDict, source, shard_index: int = 0, shard_count: int = 1
):
    """Shard ``shard_index`` of ``shard_count`` of ``source`` as augmented,
    fixed-shape training batches of ``batch_size // shard_count`` images (a Grain
    ``MapDataset``: :func:`ssd_jax.data.pipeline.train_dataset`). A zoomed-out
    image's canvas takes the input normalization's mean, on the host as on the
    device (:func:`device_augmentation`); ``data.photometric`` and
    ``data.zoom_out`` switch those two steps on both."""
    from ssd_jax.data import pipeline  # here: inference loads no Grain

    return pipeline.train_dataset(
        source,
        image_size=image_size(config.model),
        batch_size=config.batch_size // shard_count,
        seed=config.seed,
        max_boxes=config.data.max_boxes,
        fill_rgb=tuple(config.data.mean),
        keep_difficult=config.data.keep_difficult,
        keep_crowd=config.data.keep_crowd,
        augment=config.data.augment,
        photometric=config.data.photometric,
        zoom_out=config.data.zoom_out,
        augment_on=augment_on(config.data),
        max_side=config.data.decode_max_side,
        shard_index=shard_index,
        shard_count=shard_count,
    )


def source(data_config: ml_collections.ConfigDict, class_names: tuple[str, ...] | None):
    """The data source (:class:`~ssd_jax.data.formats.Source`) of one
    ``config.data.train`` / ``config.data.eval`` block, by its ``kind``
    (:data:`~ssd_jax.data.formats.FORMATS`); ``class_names`` None means the
    dataset's own list."""
    return formats.open_source(data_config, class_names)


def model(model_config: ml_collections.ConfigDict, num_classes: int, seed: int) -> SSD:
    """The SSD of ``config.model`` for ``num_classes`` object classes, with
    weights initialized from ``seed``."""
    return SSD(
        model_config.architecture,
        num_classes,
        backbone=model_config.backbone,
        boxes_per_location=default_box_spec(model_config).boxes_per_location,
        batch_norm=model_config.batch_norm,
        width=model_config.width,
        dtype=jnp.dtype(model_config.dtype),
        rngs=nnx.Rngs(seed),
    )


def learning_rate(config: ml_collections.ConfigDict) -> float:
    """``optimizer.learning_rate`` scaled linearly with the global batch size."""
    return config.optimizer.learning_rate * config.batch_size / config.optimizer.base_batch_size


def optimizer(
    config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(optimizer, schedule)`` of ``config.optimizer``: the ``schedule`` of
    :data:`ssd_jax.optim.SCHEDULES` (warmup, then step or cosine decay) of the
    batch-scaled rate, weight decay on the parameters that ``weight_decay_on``
    names (:data:`ssd_jax.optim.WEIGHT_DECAY_ON`), optional gradient clipping."""
    opt = config.optimizer
    schedule = optim.make_schedule(
        opt.schedule,
        learning_rate(config),
        warmup_steps=opt.warmup_steps,
        num_steps=config.num_steps,
        milestones=opt.milestones,
        gamma=opt.gamma,
    )
    transform = optim.make_optimizer(
        opt.name,
        schedule,
        opt.momentum,
        opt.weight_decay,
        opt.grad_clip_norm or None,
        weight_decay_on=opt.weight_decay_on,
    )
    return transform, schedule


def step_settings(config: ml_collections.ConfigDict) -> StepSettings:
    """The device steps' settings: the default boxes of ``config.model``, the input
    normalization of ``config.data``, ``config.loss`` and ``config.detection``."""
    detection = config.detection
    return StepSettings(
        jnp.asarray(default_boxes.generate(default_box_spec(config.model))),
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
        compute_dtype=jnp.dtype(config.model.dtype),
        match_iou_threshold=config.loss.match_iou_threshold,
        neg_pos_ratio=config.loss.neg_pos_ratio,
        alpha=config.loss.alpha,
        loss_normalization=config.loss.normalization,
        score_threshold=detection.score_threshold,
        nms_iou_threshold=detection.nms_iou_threshold,
        top_k_per_class=detection.top_k_per_class,
        max_detections=detection.max_detections,
        clip_before_nms=detection.clip_before_nms,
    )


def augment_on(data_config: ml_collections.ConfigDict) -> str:
    """Where training augmentation runs: ``"host"`` or ``"device"`` (``"auto"``:
    the device on accelerators; on CPU the host, whose worker processes run beside
    the step instead of adding to it)."""
    if data_config.augment_on != "auto":
        return data_config.augment_on
    return "host" if jax.default_backend() == "cpu" else "device"


def device_augmentation(
    config: ml_collections.ConfigDict,
) -> Callable[[jax.Array, dict], dict] | None:
    """``augment(step, batch) -> batch`` for the train step when augmentation runs
    on the device (:func:`ssd_jax.data.device_augment.augment_step`), else None."""
    if not config.data.augment or augment_on(config.data) != "device":
        return None
    return functools.partial(
        device_augment.augment_step,
        seed=config.seed,
        size=image_size(config.model),
        fill_rgb=tuple(config.data.mean),
        photometric=config.data.photometric,
        zoom_out=config.data.zoom_out,
    )
