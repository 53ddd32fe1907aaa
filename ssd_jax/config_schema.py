"""The configuration schema: every key the commands read, with its default.

Config files in ``configs/`` start from :func:`base_config` and change values;
the returned ConfigDict is locked, so a misspelt key (in a file or in a
``--config.key=value`` override) fails loudly instead of being ignored.
:mod:`ssd_jax.build` turns a configuration into objects.
"""

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from ssd_jax.data.formats import FORMATS, missing_keys
from ssd_jax.data.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from ssd_jax.default_boxes import PRESETS
from ssd_jax.errors import UserError
from ssd_jax.evaluation.scoring import METRICS
from ssd_jax.losses import NORMALIZATIONS
from ssd_jax.models.backbones import BACKBONES
from ssd_jax.optim import SCHEDULES, WEIGHT_DECAY_ON

AUGMENT_PLACES = ("auto", "host", "device")
ON_TRAIN_CHANGE = ("refuse", "restart_epoch")


def data_config(kind: str = "voc") -> ml_collections.ConfigDict:
    """Where one split's examples come from: ``kind`` names a format of
    :data:`ssd_jax.data.formats.FORMATS`, and the block holds every format's keys
    with their defaults (``voc``: ``voc_splits``, "root:split" entries; ``coco``:
    ``annotation_file``, ``image_dir``; ``yolo``: ``yolo_data``, a data.yaml, and
    ``yolo_split``, its ``train``, ``val`` or ``test``; ``tfds``: ``tfds_name``,
    ``tfds_split``, ``data_dir``; ``synthetic``: ``num_images``, ``seed``,
    ``image_height``, ``image_width``, ``max_objects``, ``min_size``, ``max_size``).
    """
    keys = {"kind": kind}
    for data_format in FORMATS.values():
        keys |= data_format.keys
    return ml_collections.ConfigDict(keys)


def base_config() -> ml_collections.ConfigDict:
    """SSD300 on VOC07+12 with the paper's training settings."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.backbone = "vgg16"  # a key of ssd_jax.models.backbones.BACKBONES
    config.model.architecture = "ssd300"  # the backbone's: "ssd300" or "ssd512" for vgg16
    config.model.default_boxes = ""  # default-box preset; "" = the architecture's paper preset
    config.model.batch_norm = False
    config.model.width = 1.0  # channel multiplier; < 1 only for tests and demos
    config.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16"

    config.data = ml_collections.ConfigDict()
    config.data.train = data_config("voc")
    config.data.eval = data_config("voc")
    config.data.class_names = ml_collections.config_dict.placeholder(
        tuple
    )  # None (also --config.data.class_names=None): the dataset's list
    config.data.keep_difficult = False  # keep VOC "difficult" objects as training targets
    config.data.keep_crowd = False  # keep COCO crowd boxes as training targets
    config.data.augment = True  # False: resize only (the reference's no-augmentation switch)
    # the steps of the augmentation (host and device alike): False skips the photometric
    # distortion, the zoom-out (torchvision's "ssdlite" policy: only min-IoU crop and flip)
    config.data.photometric = True
    config.data.zoom_out = True
    # where the augmentation runs: "host" (Grain workers), "device" (in the train step;
    # the host only decodes) or "auto" (device on GPU/TPU, host on CPU: measured fastest)
    config.data.augment_on = "auto"
    config.data.decode_max_side = 512  # device augmentation: decoded images fit in S x S
    config.data.max_boxes = 100
    config.data.num_workers = 4
    config.data.max_unreadable_images = 100  # training stops past this many (distinct)
    # a resume whose training split has other example ids than the checkpoint's:
    # "refuse" (naming the change) or "restart_epoch" (a new pass over the new list)
    config.data.on_train_change = "refuse"
    config.data.mean = IMAGENET_MEAN_RGB  # input normalization, 0-255 RGB
    config.data.std = IMAGENET_STD_RGB

    config.batch_size = 32  # global, over all devices and hosts
    config.num_steps = 120_000

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"  # or "adam"
    config.optimizer.learning_rate = 1e-3  # for base_batch_size; scaled linearly with batch_size
    config.optimizer.base_batch_size = 32
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    # which parameters decay, a key of ssd_jax.optim.WEIGHT_DECAY_ON: "kernels" (conv
    # kernels, as Caffe's SSD), "all" (torch SGD's) or "all_but_norm" (no BatchNorm/L2Norm)
    config.optimizer.weight_decay_on = "kernels"
    config.optimizer.warmup_steps = 500  # linear warmup factor min(1, (step + 1) / warmup_steps)
    # a key of ssd_jax.optim.SCHEDULES: "step" (x gamma at each of the milestones) or
    # "cosine" (from the rate to 0 at num_steps; milestones and gamma unused)
    config.optimizer.schedule = "step"
    config.optimizer.milestones = (80_000, 100_000)
    config.optimizer.gamma = 0.1
    config.optimizer.grad_clip_norm = 0.0  # 0 = off

    config.loss = ml_collections.ConfigDict()
    config.loss.alpha = 1.0
    config.loss.neg_pos_ratio = 3.0
    config.loss.match_iou_threshold = 0.5  # a default box is positive from this IoU
    # divide by the positives of the "batch" (the paper) or of each "image", then
    # average over the images (NVIDIA's SSD300 v1.1): ssd_jax.losses.NORMALIZATIONS
    config.loss.normalization = "batch"

    config.detection = ml_collections.ConfigDict()  # inference post-processing (the paper's)
    config.detection.score_threshold = 0.01
    config.detection.nms_iou_threshold = 0.45
    config.detection.top_k_per_class = 200
    config.detection.max_detections = 200
    # clip decoded boxes to the image before NMS (torchvision), not after (Caffe SSD)
    config.detection.clip_before_nms = False

    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = ""  # full ssd_jax checkpoint dir to start from (fine-tuning)
    config.init.backbone = ""  # converted VGG16 weights (.npz) for the trunk

    config.log_every = 50
    config.checkpoint_every = 5_000
    config.keep_checkpoints = 3
    config.eval_every = 5_000
    config.eval_batches = 0  # 0 = the whole eval split
    config.eval_metric = "voc"  # a key of evaluation.scoring.METRICS: "voc" or "coco"
    config.distributed = False  # call jax.distributed.initialize() (multi-host)
    # multi-process: a process that sends JAX's coordination service no heartbeat for
    # this long is taken for lost, and the others stop (see ssd_jax.supervisor)
    config.heartbeat_timeout_s = 100

    # a NaN or infinite loss, gradient or parameter: "stop" (naming the last good
    # checkpoint) or "rollback" (back to it, past the batches up to the bad step, at
    # learning_rate_factor times the rate; at most max_times, then stop)
    config.on_nonfinite = "stop"
    config.rollback = ml_collections.ConfigDict()
    config.rollback.max_times = 3
    config.rollback.learning_rate_factor = 0.5
    return config


class ConfigError(UserError, ValueError):
    """Configuration values that cannot work; the message names every bad key."""


def _rules(config: ml_collections.ConfigDict) -> list[tuple[str, bool, str]]:
    """``(key, holds, what it must be)`` for every value with a constraint."""
    opt, loss, detection = config.optimizer, config.loss, config.detection
    return [
        ("num_steps", config.num_steps >= 1, "at least 1"),
        ("batch_size", config.batch_size >= 1, "at least 1"),
        ("log_every", config.log_every >= 1, "at least 1"),
        ("checkpoint_every", config.checkpoint_every >= 1, "at least 1"),
        ("eval_every", config.eval_every >= 0, "0 (no evaluation) or more"),
        ("eval_batches", config.eval_batches >= 0, "0 (the whole split) or more"),
        ("keep_checkpoints", config.keep_checkpoints >= 1, "at least 1"),
        ("eval_metric", config.eval_metric in METRICS, f"one of {', '.join(METRICS)}"),
        ("on_nonfinite", config.on_nonfinite in ("stop", "rollback"), "'stop' or 'rollback'"),
        ("rollback.max_times", config.rollback.max_times >= 1, "at least 1"),
        ("rollback.learning_rate_factor", 0 < config.rollback.learning_rate_factor <= 1,
         "in (0, 1]"),
        ("model.backbone", config.model.backbone in BACKBONES, str(tuple(BACKBONES))),
        ("model.architecture", config.model.architecture in _architectures(config.model),
         str(_architectures(config.model))),
        ("model.default_boxes", config.model.default_boxes in ("", *_box_presets(config.model)),
         _box_presets_what(config.model)),
        ("model.dtype", config.model.dtype in ("float32", "bfloat16"), "'float32' or 'bfloat16'"),
        ("model.width", config.model.width > 0, "positive"),
        ("data.train.kind", config.data.train.kind in FORMATS, str(tuple(FORMATS))),
        ("data.eval.kind", config.data.eval.kind in FORMATS, str(tuple(FORMATS))),
        *_format_rules(config),
        ("data.max_boxes", config.data.max_boxes >= 1, "at least 1"),
        ("data.augment_on", config.data.augment_on in AUGMENT_PLACES, str(AUGMENT_PLACES)),
        ("data.decode_max_side", config.data.decode_max_side >= 16, "at least 16"),
        ("data.num_workers", config.data.num_workers >= 0, "0 (in process) or more"),
        ("data.max_unreadable_images", config.data.max_unreadable_images >= 0, "0 or more"),
        ("data.on_train_change", config.data.on_train_change in ON_TRAIN_CHANGE,
         str(ON_TRAIN_CHANGE)),
        ("heartbeat_timeout_s", config.heartbeat_timeout_s >= 1, "at least 1"),
        ("optimizer.name", opt.name in ("sgd", "adam"), "'sgd' or 'adam'"),
        ("optimizer.learning_rate", opt.learning_rate > 0, "positive"),
        ("optimizer.schedule", opt.schedule in SCHEDULES, str(tuple(SCHEDULES))),
        ("optimizer.warmup_steps", opt.warmup_steps >= 0, "0 or more"),
        ("optimizer.gamma", opt.gamma > 0, "positive"),
        ("optimizer.momentum", 0 <= opt.momentum < 1, "in [0, 1)"),
        ("optimizer.weight_decay", opt.weight_decay >= 0, "0 or more"),
        ("optimizer.weight_decay_on", opt.weight_decay_on in WEIGHT_DECAY_ON,
         str(tuple(WEIGHT_DECAY_ON))),
        ("optimizer.grad_clip_norm", opt.grad_clip_norm >= 0, "0 (off) or more"),
        ("loss.match_iou_threshold", 0 < loss.match_iou_threshold <= 1, "in (0, 1]"),
        ("loss.neg_pos_ratio", loss.neg_pos_ratio > 0, "positive"),
        ("loss.alpha", loss.alpha >= 0, "0 or more"),
        ("loss.normalization", loss.normalization in NORMALIZATIONS, str(NORMALIZATIONS)),
        ("detection.score_threshold", 0 <= detection.score_threshold < 1, "in [0, 1)"),
        ("detection.nms_iou_threshold", 0 < detection.nms_iou_threshold <= 1, "in (0, 1]"),
        ("detection.top_k_per_class", detection.top_k_per_class >= 1, "at least 1"),
        ("detection.max_detections", detection.max_detections >= 1, "at least 1"),
    ]  # fmt: skip


def _architectures(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The architectures of ``model.backbone`` (all backbones' when it is unknown)."""
    if model.backbone in BACKBONES:
        return tuple(BACKBONES[model.backbone].extras)
    return tuple(dict.fromkeys(a for b in BACKBONES.values() for a in b.extras))


def _box_presets(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The default-box presets with the maps and input size of ``model.architecture``
    (every preset when the architecture is unknown)."""
    layout = PRESETS.get(model.architecture)
    if layout is None:
        return tuple(sorted(PRESETS))
    shape = (layout.image_size, layout.feature_map_sizes)
    return tuple(
        name for name, spec in sorted(PRESETS.items())
        if (spec.image_size, spec.feature_map_sizes) == shape
    )  # fmt: skip


def _box_presets_what(model: ml_collections.ConfigDict) -> str:
    if model.architecture not in PRESETS:
        return f"'' or one of {list(_box_presets(model))}"
    return f"'' or a preset of the {model.architecture} layout: {', '.join(_box_presets(model))}"


def _format_rules(config: ml_collections.ConfigDict) -> list[tuple[str, bool, str]]:
    """A rule for each key that a split's format reads and that is not set."""
    return [
        (f"data.{split}.{key}", False,
         f"set: data.{split}.kind = {config.data[split].kind!r} reads "
         f"{FORMATS[config.data[split].kind].what}")
        for split in ("train", "eval")
        for key in missing_keys(config.data[split])
    ]  # fmt: skip


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`ConfigError` naming every key whose value cannot work, before
    anything is built or compiled."""
    wrong = [
        f"{key} = {_lookup(config, key)!r}: must be {what}"
        for key, holds, what in _rules(config)
        if not holds
    ]
    if wrong:
        raise ConfigError("the configuration cannot work:\n  " + "\n  ".join(wrong))


def _lookup(config: ml_collections.ConfigDict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, as ``--config`` loads it (for notebooks
    and other Python callers)."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path).removesuffix(".py"), path)
    if spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"no config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# Keys renamed since checkpoints were first written (old dotted path -> new), so
# that the configuration saved with an older checkpoint still reads.
RENAMED_KEYS = {"loss.iou_threshold": "loss.match_iou_threshold"}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def from_saved(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A configuration saved as JSON (with a checkpoint) on today's schema: keys
    renamed since are renamed, keys added since take their defaults, keys no
    longer in the schema are dropped. Returns a locked ConfigDict."""
    config = base_config()
    for path, value in _flatten(saved).items():
        *parents, name = RENAMED_KEYS.get(path, path).split(".")
        node = config
        for parent in parents:
            node = node.get(parent)
            if not isinstance(node, ml_collections.ConfigDict):
                break
        else:
            if name in node:
                node[name] = value
    config.lock()
    return config


def with_network_of(
    config: ml_collections.ConfigDict, saved: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """A copy of ``config`` (for its data and metric) with what describes a
    checkpoint's network taken from the checkpoint's configuration ``saved``:
    the model, class names, input normalization and detection settings."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model = ml_collections.ConfigDict(saved.model.to_dict())
    config.detection = ml_collections.ConfigDict(saved.detection.to_dict())
    config.data.class_names = tuple(saved.data.class_names)
    config.data.mean, config.data.std = tuple(saved.data.mean), tuple(saved.data.std)
    return config
