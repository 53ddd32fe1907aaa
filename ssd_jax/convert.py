"""Imports PyTorch weights: ImageNet VGG16 backbones and trained SSD detectors.

    python -m ssd_jax.convert --from pytorch_ssd|ssd.pytorch|torchvision \
        --input FILE --output DIR [--class_names a,b,c]

writes ``DIR/checkpoints/0`` in the layout training writes, so
``python -m ssd_jax.evaluate --checkpoint DIR/checkpoints``, ``predict`` and
``--config.init.checkpoint=DIR/checkpoints`` (fine-tuning) accept it. The
backbone converter is ``convert_torch_vgg.py`` at the repository root.

The conversion core is NumPy on a dict of arrays (PyTorch names, OIHW kernels);
torch is needed only to read ``.pth`` files (``.npz`` and ``.safetensors`` work
without it). Output keys are the model's variable paths joined by "/", e.g.
``vgg/conv1_1/conv/kernel`` (HWIO) or ``conf_heads/0/bias``.

Caffe-style weights (ssd.pytorch's ``vgg16_reducedfc.pth`` and detectors) read
BGR images minus (104, 117, 123): their first kernel's input channels are
reversed so that they read RGB, and the normalization becomes mean (123, 117,
104), std 1, recorded with the weights.
"""

import os
from collections.abc import Sequence

import numpy as np

from ssd_jax.data.classes import COCO_CATEGORY_IDS, COCO_CLASSES, VOC_CLASSES
from ssd_jax.data.pipeline import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

VGG_CONVS = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
)  # fmt: skip
# Positions of the 13 convs in torchvision's vgg16.features (vgg16_bn: BN at +1).
TORCHVISION_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCHVISION_VGG16_BN_CONVS = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
# ssd.pytorch's vgg ModuleList (also vgg16_reducedfc.pth): the 13 convs, conv6, conv7.
SSD_PYTORCH_VGG_CONVS = (*TORCHVISION_VGG16_CONVS, 31, 33)
EXTRA_NAMES = {
    "ssd300": ("conv8", "conv9", "conv10", "conv11"),
    "ssd512": ("conv8", "conv9", "conv10", "conv11", "conv12"),
}
CAFFE_MEAN_RGB = (123.0, 117.0, 104.0)  # Caffe's BGR (104, 117, 123), in RGB order
CAFFE_STD_RGB = (1.0, 1.0, 1.0)
IMPORTERS = ("pytorch_ssd", "ssd.pytorch", "torchvision")

Weights = dict[str, np.ndarray]


class ConversionError(ValueError):
    """A weights file does not hold what the chosen converter expects."""


def read_state_dict(path: str) -> Weights:
    """A PyTorch state dict (``.pth``/``.pt``, needs torch), ``.safetensors`` or
    ``.npz`` file as float32/int NumPy arrays. A checkpoint wrapping the weights
    in ``"state_dict"`` or ``"model"`` is unwrapped; DataParallel's ``module.``
    prefixes are removed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file {path}")
    if path.endswith(".npz"):
        weights = dict(np.load(path))
    elif path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        weights = load_file(path)
    else:
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                f"reading {path} needs PyTorch (pip install torch); .npz and .safetensors "
                "files do not"
            ) from error
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
                loaded = loaded[key]
        weights = {k: v.detach().cpu().numpy() for k, v in loaded.items() if hasattr(v, "numpy")}
    return {key.removeprefix("module."): np.asarray(value) for key, value in weights.items()}


def _take(weights: Weights, key: str, shape_rank: int | None = None) -> np.ndarray:
    if key not in weights:
        raise ConversionError(f"missing {key!r} (the file has e.g. {sorted(weights)[:5]})")
    value = weights[key]
    if shape_rank is not None and value.ndim != shape_rank:
        raise ConversionError(f"{key} has shape {value.shape}, expected rank {shape_rank}")
    return np.asarray(value, np.float32)


def conv(weights: Weights, prefix: str, name: str) -> Weights:
    """``{name}/kernel`` (HWIO) and ``{name}/bias`` from PyTorch ``{prefix}.weight``
    (OIHW) and ``{prefix}.bias``."""
    kernel = _take(weights, f"{prefix}.weight", 4).transpose(2, 3, 1, 0)
    return {f"{name}/kernel": kernel, f"{name}/bias": _take(weights, f"{prefix}.bias", 1)}


def batch_norm(weights: Weights, prefix: str, name: str) -> Weights:
    """Flax BatchNorm ``scale``, ``bias``, ``mean``, ``var`` from a PyTorch one."""
    return {
        f"{name}/scale": _take(weights, f"{prefix}.weight", 1),
        f"{name}/bias": _take(weights, f"{prefix}.bias", 1),
        f"{name}/mean": _take(weights, f"{prefix}.running_mean", 1),
        f"{name}/var": _take(weights, f"{prefix}.running_var", 1),
    }


def identity_batch_norm(name: str, channels: int, epsilon: float = 1e-5) -> Weights:
    """A BatchNorm that passes its input through in inference mode, for a layer the
    source model has without BN (``var = 1 - epsilon``, so ``sqrt(var + eps) = 1``)."""
    return {
        f"{name}/scale": np.ones(channels, np.float32),
        f"{name}/bias": np.zeros(channels, np.float32),
        f"{name}/mean": np.zeros(channels, np.float32),
        f"{name}/var": np.full(channels, 1.0 - epsilon, np.float32),
    }


def reduce_fc(
    fc6_weight: np.ndarray, fc6_bias: np.ndarray, fc7_weight: np.ndarray, fc7_bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """VGG16's fc6 (4096, 25088) and fc7 (4096, 4096) as the paper's conv6 (1024,
    512, 3, 3; used with dilation 6) and conv7 (1024, 1024, 1, 1), OIHW: fc6 viewed
    as (4096, 512, 7, 7) keeps every 4th output channel and every 3rd kernel
    position (0, 3, 6); fc7 keeps every 4th row and column."""
    if fc6_weight.shape != (4096, 512 * 7 * 7) or fc7_weight.shape != (4096, 4096):
        raise ConversionError(
            f"fc6 {fc6_weight.shape} / fc7 {fc7_weight.shape} are not VGG16's (4096, 25088) / "
            "(4096, 4096)"
        )
    conv6 = fc6_weight.reshape(4096, 512, 7, 7)[::4, :, ::3, ::3]
    conv7 = fc7_weight[::4, ::4].reshape(1024, 1024, 1, 1)
    return conv6, fc6_bias[::4], conv7, fc7_bias[::4]


def _bgr_to_rgb_input(weights: Weights, first_kernel: str) -> None:
    """Makes a kernel trained on BGR input read RGB (HWIO input axis reversed)."""
    weights[first_kernel] = np.ascontiguousarray(weights[first_kernel][:, :, ::-1, :])


def vgg16_backbone(weights: Weights) -> tuple[Weights, dict]:
    """Trunk weights (``vgg/...`` keys) and their input normalization from
    torchvision ``vgg16`` / ``vgg16_bn`` (fc6/fc7 reduced by :func:`reduce_fc`) or
    ssd.pytorch's ``vgg16_reducedfc`` (Caffe style). Returns ``(weights, info)``,
    ``info = {"source", "batch_norm", "mean", "std"}``."""
    out: Weights = {}
    if "classifier.0.weight" in weights:
        bn = "features.1.running_mean" in weights
        positions = TORCHVISION_VGG16_BN_CONVS if bn else TORCHVISION_VGG16_CONVS
        for name, k in zip(VGG_CONVS, positions, strict=True):
            out |= conv(weights, f"features.{k}", f"vgg/{name}/conv")
            if bn:
                out |= batch_norm(weights, f"features.{k + 1}", f"vgg/{name}/bn")
        conv6, bias6, conv7, bias7 = reduce_fc(
            _take(weights, "classifier.0.weight"),
            _take(weights, "classifier.0.bias"),
            _take(weights, "classifier.3.weight"),
            _take(weights, "classifier.3.bias"),
        )
        fc = {"classifier.6.weight": conv6, "classifier.6.bias": bias6}
        fc |= {"classifier.7.weight": conv7, "classifier.7.bias": bias7}
        out |= conv(fc, "classifier.6", "vgg/conv6/conv")
        out |= conv(fc, "classifier.7", "vgg/conv7/conv")
        source = "torchvision vgg16_bn" if bn else "torchvision vgg16"
        return out, {"source": source, "batch_norm": bn, "mean": IMAGENET_MEAN_RGB,
                     "std": IMAGENET_STD_RGB}  # fmt: skip
    if "31.weight" in weights:
        for name, k in zip((*VGG_CONVS, "conv6", "conv7"), SSD_PYTORCH_VGG_CONVS, strict=True):
            out |= conv(weights, str(k), f"vgg/{name}/conv")
        _bgr_to_rgb_input(out, "vgg/conv1_1/conv/kernel")
        return out, {"source": "vgg16_reducedfc (caffe)", "batch_norm": False,
                     "mean": CAFFE_MEAN_RGB, "std": CAFFE_STD_RGB}  # fmt: skip
    raise ConversionError(
        "not a VGG16 state dict: expected torchvision keys (features.N, classifier.N) or "
        f"vgg16_reducedfc keys (0.weight ... 33.weight); got e.g. {sorted(weights)[:5]}"
    )


def normalization_arrays(info: dict) -> Weights:
    """The ``normalization/mean`` and ``normalization/std`` entries (0-255 RGB) that
    record, inside a backbone ``.npz``, the input normalization its weights expect."""
    return {
        "normalization/mean": np.asarray(info["mean"], np.float32),
        "normalization/std": np.asarray(info["std"], np.float32),
    }


def _heads(
    weights: Weights, loc_prefix: str, conf_prefix: str, first: int, num_maps: int,
    background_last: bool = False,
) -> tuple[Weights, int, tuple[int, ...]]:  # fmt: skip
    """Loc/conf heads ``{prefix}{first + k}`` -> ``loc_heads/k``, ``conf_heads/k``;
    returns the weights, C (object classes) and boxes per location."""
    out: Weights = {}
    boxes_per_location = tuple(
        _take(weights, f"{loc_prefix}{first + k}.weight", 4).shape[0] // 4 for k in range(num_maps)
    )
    conf_out = _take(weights, f"{conf_prefix}{first}.weight", 4).shape[0]
    num_classes = conf_out // boxes_per_location[0] - 1
    for k in range(num_maps):
        out |= conv(weights, f"{loc_prefix}{first + k}", f"loc_heads/{k}")
        head = conv(weights, f"{conf_prefix}{first + k}", f"conf_heads/{k}")
        if background_last:  # logit order per slot: C objects, background -> background first
            kernel, bias = head[f"conf_heads/{k}/kernel"], head[f"conf_heads/{k}/bias"]
            slots = boxes_per_location[k]
            kernel = np.roll(kernel.reshape(*kernel.shape[:3], slots, num_classes + 1), 1, -1)
            bias = np.roll(bias.reshape(slots, num_classes + 1), 1, -1)
            head = {f"conf_heads/{k}/kernel": kernel.reshape(*kernel.shape[:3], -1),
                    f"conf_heads/{k}/bias": bias.reshape(-1)}  # fmt: skip
        out |= head
    return out, num_classes, boxes_per_location


def _default_class_names(num_classes: int) -> tuple[str, ...]:
    if num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    if num_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    return tuple(f"class_{k}" for k in range(1, num_classes + 1))


def from_pytorch_ssd(weights: Weights) -> tuple[Weights, dict]:
    """jjjkkkjjj/pytorch_SSD SSD300/SSD512 (with or without BN): ImageNet-normalized
    RGB input, the pytorch_SSD default boxes, background-last logits (permuted)."""
    architecture = "ssd512" if any("RL12_1" in key for key in weights) else "ssd300"
    bn = any(key.startswith("feature_layers.convBnRL") for key in weights)
    out: Weights = {}
    layers = [(f"vgg/{n}", n.removeprefix("conv")) for n in (*VGG_CONVS, "conv6", "conv7")]
    for extra in EXTRA_NAMES[architecture]:
        layers += [(f"{extra}_{i}", f"{extra.removeprefix('conv')}_{i}") for i in (1, 2)]
    for ours, number in layers:
        with_bn = f"feature_layers.convBnRL{number}"
        if f"{with_bn}.conv.weight" in weights:
            out |= conv(weights, f"{with_bn}.conv", f"{ours}/conv")
            out |= batch_norm(weights, f"{with_bn}.bn", f"{ours}/bn")
        else:
            out |= conv(weights, f"feature_layers.convRL{number}.conv", f"{ours}/conv")
            if bn:  # pytorch_SSD leaves conv11_2 without BN; ours has one: make it identity
                channels = out[f"{ours}/conv/bias"].shape[0]
                out |= identity_batch_norm(f"{ours}/bn", channels)
    out["vgg/conv4_3_norm/scale"] = _take(weights, "addon_layers.addon_1.scales", 1)
    num_maps = 2 + len(EXTRA_NAMES[architecture])
    heads, num_classes, boxes_per_location = _heads(
        weights, "localization_layers.conv_loc_", "confidence_layers.conv_conf_", 1, num_maps,
        background_last=True,
    )  # fmt: skip
    out |= heads
    info = {"architecture": architecture, "batch_norm": bn, "num_classes": num_classes,
            "default_boxes": f"{architecture}_pytorch_ssd",
            "boxes_per_location": boxes_per_location,
            "mean": IMAGENET_MEAN_RGB, "std": IMAGENET_STD_RGB}  # fmt: skip
    return out, info


def from_ssd_pytorch(weights: Weights) -> tuple[Weights, dict]:
    """amdegroot/ssd.pytorch SSD300 (``vgg.N``, ``L2Norm.weight``, ``extras.N``,
    ``loc.N``, ``conf.N``): Caffe-style BGR input (converted to RGB), background
    first, the paper's boxes with cxcywh clipping (VOC or, for 80 classes, COCO sizes)."""
    out: Weights = {}
    for name, k in zip((*VGG_CONVS, "conv6", "conv7"), SSD_PYTORCH_VGG_CONVS, strict=True):
        out |= conv(weights, f"vgg.{k}", f"vgg/{name}/conv")
    _bgr_to_rgb_input(out, "vgg/conv1_1/conv/kernel")
    out["vgg/conv4_3_norm/scale"] = _take(weights, "L2Norm.weight", 1)
    if "extras.8.weight" in weights:
        raise ConversionError("ssd.pytorch SSD512 is not supported (its extras have no standard)")
    for k, extra in enumerate(EXTRA_NAMES["ssd300"]):
        out |= conv(weights, f"extras.{2 * k}", f"{extra}_1/conv")
        out |= conv(weights, f"extras.{2 * k + 1}", f"{extra}_2/conv")
    heads, num_classes, boxes_per_location = _heads(weights, "loc.", "conf.", 0, 6)
    out |= heads
    coco = num_classes == len(COCO_CLASSES)
    preset = "ssd300_ssd_pytorch_coco" if coco else "ssd300_ssd_pytorch"
    info = {"architecture": "ssd300", "batch_norm": False, "num_classes": num_classes,
            "default_boxes": preset, "boxes_per_location": boxes_per_location,
            "mean": CAFFE_MEAN_RGB, "std": CAFFE_STD_RGB}  # fmt: skip
    return out, info


def from_torchvision(weights: Weights) -> tuple[Weights, dict]:
    """torchvision ``ssd300_vgg16``: its default boxes (scales 0.07 ... 1.05, steps
    8 ... 300), its 91-logit COCO layout (label k = COCO category id k; unused ids
    get placeholder names), input normalization (RGB minus (123, 117, 104)) and
    post-processing (400 candidates per class)."""
    out: Weights = {}
    for name, k in zip(VGG_CONVS[:10], TORCHVISION_VGG16_CONVS[:10], strict=True):
        out |= conv(weights, f"backbone.features.{k}", f"vgg/{name}/conv")
    for name, k in zip(VGG_CONVS[10:], (1, 3, 5), strict=True):
        out |= conv(weights, f"backbone.extra.0.{k}", f"vgg/{name}/conv")
    out |= conv(weights, "backbone.extra.0.7.1", "vgg/conv6/conv")
    out |= conv(weights, "backbone.extra.0.7.3", "vgg/conv7/conv")
    out["vgg/conv4_3_norm/scale"] = _take(weights, "backbone.scale_weight", 1)
    for k, extra in enumerate(EXTRA_NAMES["ssd300"], start=1):
        out |= conv(weights, f"backbone.extra.{k}.0", f"{extra}_1/conv")
        out |= conv(weights, f"backbone.extra.{k}.2", f"{extra}_2/conv")
    heads, num_classes, boxes_per_location = _heads(
        weights, "head.regression_head.module_list.", "head.classification_head.module_list.",
        0, 6,
    )  # fmt: skip
    out |= heads
    name_of = dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True))
    class_names = tuple(name_of.get(k, f"unused_{k}") for k in range(1, num_classes + 1))
    info = {"architecture": "ssd300", "batch_norm": False, "num_classes": num_classes,
            "default_boxes": "ssd300_torchvision", "boxes_per_location": boxes_per_location,
            "mean": CAFFE_MEAN_RGB, "std": CAFFE_STD_RGB, "class_names": class_names,
            "top_k_per_class": 400}  # fmt: skip
    return out, info


def import_detector(kind: str, weights: Weights) -> tuple[Weights, dict]:
    """Dispatches to the importer ``kind`` (one of :data:`IMPORTERS`)."""
    importers = {"pytorch_ssd": from_pytorch_ssd, "ssd.pytorch": from_ssd_pytorch,
                 "torchvision": from_torchvision}  # fmt: skip
    if kind not in importers:
        raise ValueError(f"unknown source {kind!r}: one of {IMPORTERS}")
    converted, info = importers[kind](weights)
    info.setdefault("class_names", _default_class_names(info["num_classes"]))
    return converted, info


def detector_config(info: dict, class_names: Sequence[str] | None = None):
    """A training config (``configs.base_config``) describing an imported detector."""
    from ssd_jax.configs import base_config

    config = base_config()
    config.model.architecture = info["architecture"]
    config.model.batch_norm = info["batch_norm"]
    config.model.default_boxes = info["default_boxes"]
    config.data.class_names = tuple(class_names or info["class_names"])
    config.data.mean, config.data.std = tuple(info["mean"]), tuple(info["std"])
    config.detection.top_k_per_class = info.get("top_k_per_class", 200)
    if len(config.data.class_names) != info["num_classes"]:
        raise ConversionError(
            f"{len(config.data.class_names)} class names for a {info['num_classes']}-class model"
        )
    return config


def assign_weights(model, converted: Weights) -> None:
    """Sets every variable of the NNX ``model`` from ``converted`` ("/"-joined
    paths); a missing, extra or mis-shaped variable is a :class:`ConversionError`."""
    from flax import nnx, traverse_util

    state = nnx.state(model)
    paths = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    ours = {"/".join(map(str, path)): value for path, value in paths.items()}
    missing = sorted(set(ours) - set(converted))
    extra = sorted(set(converted) - set(ours))
    if missing or extra:
        raise ConversionError(f"variables missing: {missing[:8]}; not in the model: {extra[:8]}")
    for key, value in converted.items():
        if value.shape != ours[key].shape:
            raise ConversionError(f"{key}: converted {value.shape}, model {ours[key].shape}")
    pure = {path: converted["/".join(map(str, path))] for path in paths}
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(pure))
    nnx.update(model, state)


def write_checkpoint(converted: Weights, config, output_dir: str) -> str:
    """Saves ``converted`` weights as step 0 of ``output_dir/checkpoints`` (the
    training layout: state, meta). Every model variable must be present with its
    shape; anything left over is an error. Returns the checkpoints directory."""
    import jax
    import orbax.checkpoint as ocp

    from ssd_jax import optim
    from ssd_jax.train import build_model, checkpoint_meta_of
    from ssd_jax.train_step import init_train_state

    class_names = tuple(config.data.class_names)
    model = build_model(config, len(class_names), config.seed)
    assign_weights(model, converted)
    optimizer = optim.make_optimizer("sgd", optim.step_schedule(0.0, 1, (), 1.0))
    _, train_state = init_train_state(model, optimizer)
    checkpoints = os.path.join(os.path.abspath(output_dir), "checkpoints")
    manager = ocp.CheckpointManager(checkpoints, options=ocp.CheckpointManagerOptions(create=True))
    meta = checkpoint_meta_of(config, class_names, os.path.abspath(output_dir))
    manager.save(
        0,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(jax.device_get(train_state)), meta=ocp.args.JsonSave(meta)
        ),
    )
    manager.wait_until_finished()
    return checkpoints


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    FLAGS = flags.FLAGS
    converted, info = import_detector(FLAGS["from"].value, read_state_dict(FLAGS.input))
    names = FLAGS.class_names.split(",") if FLAGS.class_names else None
    config = detector_config(info, names)
    checkpoints = write_checkpoint(converted, config, FLAGS.output)
    print(f"{FLAGS['from'].value} {info['architecture']} ({info['num_classes']} classes, "
          f"default boxes {info['default_boxes']}) -> {checkpoints}")  # fmt: skip


if __name__ == "__main__":
    from absl import app, flags

    from ssd_jax.cli import quiet_flags_parser

    flags.DEFINE_enum("from", None, list(IMPORTERS), "Which PyTorch SSD the weights come from.")
    flags.DEFINE_string("input", None, "State dict file (.pth, .safetensors or .npz).")
    flags.DEFINE_string("output", None, "Output directory (checkpoints go to OUTPUT/checkpoints).")
    flags.DEFINE_string("class_names", "", "Comma-separated class names (default: by count).")
    flags.mark_flags_as_required(["from", "input", "output"])
    # Orbax logs every save and load at INFO: WARNING unless --verbosity says otherwise.
    app.run(main, flags_parser=quiet_flags_parser)
