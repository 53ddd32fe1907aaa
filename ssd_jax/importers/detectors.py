"""Trained SSD detectors of the PyTorch ports as ssd_jax variables and the
configuration that describes them: jjjkkkjjj/pytorch_SSD, amdegroot/ssd.pytorch,
torchvision ``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large``, NVIDIA's
SSD300 v1.1 (DeepLearningExamples, ResNet trunks)."""

import os
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from flax import nnx, traverse_util

from ssd_jax import build, checkpoint, steps
from ssd_jax.config_schema import base_config
from ssd_jax.data.classes import COCO_CATEGORY_IDS, COCO_CLASSES, UNUSED_PREFIX, VOC_CLASSES
from ssd_jax.data.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from ssd_jax.importers import mobilenet, resnet
from ssd_jax.importers.backbone import (
    CAFFE_MEAN_RGB,
    CAFFE_STD_RGB,
    SSD_PYTORCH_VGG_CONVS,
    TORCHVISION_VGG16_CONVS,
    VGG_CONVS,
    bgr_to_rgb_input,
)
from ssd_jax.importers.common import (
    SIGNATURES,
    ConversionError,
    Weights,
    batch_norm,
    conv,
    identity_batch_norm,
    read_state_dict,
    take,
)

EXTRA_NAMES = {
    "ssd300": ("conv8", "conv9", "conv10", "conv11"),
    "ssd512": ("conv8", "conv9", "conv10", "conv11", "conv12"),
}


def _heads(
    weights: Weights, loc_prefix: str, conf_prefix: str, first: int, num_maps: int,
    background_last: bool = False,
) -> tuple[Weights, int, tuple[int, ...]]:  # fmt: skip
    """Loc/conf heads ``{prefix}{first + k}`` -> ``loc_heads/k``, ``conf_heads/k``;
    returns the weights, C (object classes) and boxes per location."""
    out: Weights = {}
    boxes_per_location = tuple(
        take(weights, f"{loc_prefix}{first + k}.weight", 4).shape[0] // 4 for k in range(num_maps)
    )
    conf_out = take(weights, f"{conf_prefix}{first}.weight", 4).shape[0]
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
    out["vgg/conv4_3_norm/scale"] = take(weights, "addon_layers.addon_1.scales", 1)
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
    bgr_to_rgb_input(out, "vgg/conv1_1/conv/kernel")
    out["vgg/conv4_3_norm/scale"] = take(weights, "L2Norm.weight", 1)
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
    out["vgg/conv4_3_norm/scale"] = take(weights, "backbone.scale_weight", 1)
    for k, extra in enumerate(EXTRA_NAMES["ssd300"], start=1):
        out |= conv(weights, f"backbone.extra.{k}.0", f"{extra}_1/conv")
        out |= conv(weights, f"backbone.extra.{k}.2", f"{extra}_2/conv")
    heads, num_classes, boxes_per_location = _heads(
        weights, "head.regression_head.module_list.", "head.classification_head.module_list.",
        0, 6,
    )  # fmt: skip
    out |= heads
    info = {"architecture": "ssd300", "batch_norm": False, "num_classes": num_classes,
            "default_boxes": "ssd300_torchvision", "boxes_per_location": boxes_per_location,
            "mean": CAFFE_MEAN_RGB, "std": CAFFE_STD_RGB,
            "class_names": _torchvision_coco_names(num_classes),
            "detection": {"top_k_per_class": 400, "clip_before_nms": True}}  # fmt: skip
    return out, info


def _torchvision_coco_names(num_classes: int) -> tuple[str, ...]:
    """torchvision's COCO labels: label k is COCO category id k; the ids COCO
    leaves unused get placeholder names."""
    name_of = dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True))
    return tuple(name_of.get(k, f"{UNUSED_PREFIX}{k}") for k in range(1, num_classes + 1))


def from_torchvision_ssdlite(weights: Weights) -> tuple[Weights, dict]:
    """torchvision ``ssdlite320_mobilenet_v3_large``: its MobileNetV3-Large trunk
    (the halved tail of its COCO release, or the full one when it was built on
    ImageNet weights), SSDlite extras and depthwise heads, the ``ssdlite320``
    default boxes, its 91-logit COCO layout, input normalization ((x / 255 - 0.5)
    / 0.5) and post-processing (score > 0.001, NMS at 0.55 on boxes clipped to
    the image, 300 candidates per class, 300 detections)."""
    if not any(key.startswith("backbone.features.0.") for key in weights):
        raise ConversionError(
            "not a torchvision ssdlite320_mobilenet_v3_large state dict (no "
            f"backbone.features.0.*; the file has e.g. {sorted(weights)[:3]}); torchvision's "
            "ImageNet mobilenet_v3_large is a backbone: convert it with convert_torch_backbone.py"
        )
    trunk_weights = mobilenet.ssdlite_trunk_names(weights)
    out = mobilenet.trunk(trunk_weights)
    for k in range(4):
        for n, layer in enumerate(("reduce", "depthwise", "expand")):
            out |= mobilenet.conv_bn(weights, f"backbone.extra.{k}.{n}", f"extra{k + 1}/{layer}")
    boxes_per_location, num_logits = [], set()
    for ours, theirs in (("loc_heads", "regression_head"), ("conf_heads", "classification_head")):
        for k in range(6):
            prefix = f"head.{theirs}.module_list.{k}"
            out |= mobilenet.conv_bn(weights, f"{prefix}.0", f"{ours}/{k}/depthwise")
            out |= conv(weights, f"{prefix}.1", f"{ours}/{k}/pointwise")
            if ours == "loc_heads":
                boxes_per_location.append(out[f"{ours}/{k}/pointwise/bias"].shape[0] // 4)
            else:
                num_logits.add(out[f"{ours}/{k}/pointwise/bias"].shape[0] // boxes_per_location[k])
    if len(num_logits) != 1:
        raise ConversionError(f"the classification heads disagree on the class count: {num_logits}")
    num_classes = num_logits.pop() - 1
    reduced = mobilenet.reduced_tail(trunk_weights)
    info = {"backbone": "mobilenet_v3_large_reduced_tail" if reduced else "mobilenet_v3_large",
            "architecture": "ssdlite320", "batch_norm": True, "num_classes": num_classes,
            "default_boxes": "ssdlite320", "boxes_per_location": tuple(boxes_per_location),
            "mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5),
            "class_names": _torchvision_coco_names(num_classes), "width": 1.0,
            "detection": {"score_threshold": 0.001, "nms_iou_threshold": 0.55,
                          "top_k_per_class": 300, "max_detections": 300,
                          "clip_before_nms": True}}  # fmt: skip
    return out, info


def _slot_major(kernel: np.ndarray, bias: np.ndarray, groups: int) -> tuple[np.ndarray, ...]:
    """A head whose output channels are ordered (value, slot), ``groups`` values
    (4 offsets or C + 1 logits) per slot, reordered to ours: (slot, value)."""
    slots = bias.shape[0] // groups
    kernel = kernel.reshape(*kernel.shape[:3], groups, slots).swapaxes(-1, -2)
    bias = bias.reshape(groups, slots).T
    return kernel.reshape(*kernel.shape[:3], -1), bias.reshape(-1)


def from_nvidia_ssd(weights: Weights) -> tuple[Weights, dict]:
    """NVIDIA's SSD300 v1.1 (DeepLearningExamples PyTorch/Detection/SSD, torch.hub
    ``nvidia_ssd``): a torchvision ResNet trunk cut after its third stage (depth
    read from the blocks), five extra blocks with BatchNorm, 3x3 heads whose
    outputs are ordered value-major (reordered here), the ``ssd300_nvidia``
    default boxes, ImageNet input normalization, NVIDIA's loss normalization (per
    image) and post-processing (score > 0.05, 200 per class, NMS at 0.45, 200
    detections). 81 logits: NVIDIA's labels 1 ... 80 are the COCO categories in
    id order."""
    if not any(key.startswith(resnet.NVIDIA_TRUNK) for key in weights):
        hint = (
            "; torchvision's ImageNet ResNets are backbones: convert them with "
            "convert_torch_backbone.py"
            if resnet.is_resnet(weights)
            else ""
        )
        raise ConversionError(
            f"not an NVIDIA SSD300 state dict (no {resnet.NVIDIA_TRUNK}*; the file has e.g. "
            f"{sorted(weights)[:3]}){hint}"
        )
    trunk_weights = resnet.nvidia_trunk_names(weights)
    depth = resnet.depth(trunk_weights)
    out = resnet.trunk(trunk_weights)
    for k in range(5):
        prefix = f"additional_blocks.{k}"
        out |= resnet.conv_bn(weights, f"{prefix}.0", f"{prefix}.1", f"extra{k + 1}_1")
        out |= resnet.conv_bn(weights, f"{prefix}.3", f"{prefix}.4", f"extra{k + 1}_2")
    boxes_per_location, num_logits = [], set()
    for k in range(6):
        slots = take(weights, f"loc.{k}.bias", 1).shape[0] // 4
        logits = take(weights, f"conf.{k}.bias", 1).shape[0] // slots
        boxes_per_location.append(slots)
        num_logits.add(logits)
        for ours, theirs, values in (("loc_heads", "loc", 4), ("conf_heads", "conf", logits)):
            head = conv(weights, f"{theirs}.{k}", "head")
            kernel, bias = _slot_major(head["head/kernel"], head["head/bias"], values)
            out |= {f"{ours}/{k}/kernel": kernel, f"{ours}/{k}/bias": bias}
    if len(num_logits) != 1:
        raise ConversionError(f"the confidence heads disagree on the class count: {num_logits}")
    info = {"backbone": f"resnet{depth}", "architecture": "ssd300", "batch_norm": True,
            "num_classes": num_logits.pop() - 1, "default_boxes": "ssd300_nvidia",
            "boxes_per_location": tuple(boxes_per_location),
            "mean": IMAGENET_MEAN_RGB, "std": IMAGENET_STD_RGB,
            "width": out["resnet/stem/conv/kernel"].shape[-1] / 64,
            "loss": {"normalization": "image"},
            "detection": {"score_threshold": 0.05, "nms_iou_threshold": 0.45,
                          "top_k_per_class": 200, "max_detections": 200}}  # fmt: skip
    return out, info


# The detectors ``python -m ssd_jax.convert --from NAME`` imports: each maps a
# state dict (flat names -> NumPy arrays) to our variables ("/"-joined paths) and
# an ``info`` dict (architecture, batch_norm, num_classes, default_boxes, mean,
# std; optionally backbone, width, class_names and ``detection``, the
# post-processing settings that differ from ours). The flag's choices and the
# messages come from this table.
IMPORTERS: dict[str, Callable[[Weights], tuple[Weights, dict]]] = {
    "pytorch_ssd": from_pytorch_ssd,
    "ssd.pytorch": from_ssd_pytorch,
    "torchvision": from_torchvision,
    "torchvision_ssdlite": from_torchvision_ssdlite,
    "nvidia_ssd": from_nvidia_ssd,
}


def import_detector(kind: str, weights: Weights) -> tuple[Weights, dict]:
    """Our variables and the ``info`` of the ``kind`` detector (a key of
    :data:`IMPORTERS`) in the state dict ``weights``."""
    if kind not in IMPORTERS:
        raise ValueError(f"unknown source {kind!r}: one of {', '.join(IMPORTERS)}")
    for other, (key, what) in SIGNATURES.items():
        if key in weights and SIGNATURES[kind][0] not in weights:
            raise ConversionError(f"this is {what}, not a {kind} detector: use --from {other}")
    converted, info = IMPORTERS[kind](weights)
    info.setdefault("class_names", _default_class_names(info["num_classes"]))
    if "width" not in info:  # VGG16: 64 channels in conv1_1 at width 1
        info["width"] = converted["vgg/conv1_1/conv/kernel"].shape[-1] / 64
    return converted, info


def detector_config(
    info: dict, class_names: Sequence[str] | None = None
) -> ml_collections.ConfigDict:
    """The configuration (:func:`ssd_jax.config_schema.base_config`) describing an
    imported detector: backbone, architecture, default boxes, classes, input
    normalization and post-processing."""
    config = base_config()
    config.model.backbone = info.get("backbone", "vgg16")
    config.model.architecture = info["architecture"]
    config.model.batch_norm = info["batch_norm"]
    config.model.default_boxes = info["default_boxes"]
    config.model.width = info.get("width", 1.0)
    config.data.class_names = tuple(class_names or info["class_names"])
    config.data.mean, config.data.std = tuple(info["mean"]), tuple(info["std"])
    config.detection.update(info.get("detection", {}))
    config.loss.update(info.get("loss", {}))
    if len(config.data.class_names) != info["num_classes"]:
        raise ConversionError(
            f"{len(config.data.class_names)} class names for a {info['num_classes']}-class model"
        )
    return config


def assign_weights(model: nnx.Module, converted: Weights) -> None:
    """Sets every variable of the NNX ``model`` from ``converted`` ("/"-joined
    paths); a missing, extra or mis-shaped variable is a :class:`ConversionError`."""
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


def convert_detector(
    kind: str, weights_path: str, output_dir: str, class_names: Sequence[str] | None = None
) -> tuple[checkpoint.Location, dict]:
    """Imports the ``kind`` detector (one of :data:`IMPORTERS`) in ``weights_path``
    and writes it as an ssd_jax checkpoint in ``output_dir`` (the layout training
    writes). Returns where it went and the importer's ``info``."""
    converted, info = import_detector(kind, read_state_dict(weights_path))
    config = detector_config(info, class_names)
    model = build.model(config.model, len(config.data.class_names), config.seed)
    assign_weights(model, converted)
    _, variables = steps.split_model(model)
    meta = checkpoint.meta_for(config, config.data.class_names, os.path.abspath(output_dir))
    return checkpoint.write_detector(output_dir, variables, meta), info
