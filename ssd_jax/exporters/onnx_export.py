"""The whole detector as an ONNX model, for onnxruntime, TensorRT and the like.

The model takes uint8 (B, S, S, 3) RGB images (B dynamic) and returns what
:class:`ssd_jax.postprocess.Detections` holds: ``boxes_xyxy`` (B, K, 4)
normalized, ``scores`` (B, K), ``classes`` (B, K) in 1..C, ``valid`` (B, K) and
``num_detections`` (B,). It is three graphs joined into one:

1. ``candidates`` (jax2onnx): normalization, network, softmax and box decoding,
   then the ``top_k_per_class`` best boxes of each class: (B * C, T, 4) boxes
   and (B * C, 1, T) scores, each (image, class) pair a "batch" of its own.
2. ONNX's ``NonMaxSuppression`` on them (score > threshold, IoU > threshold
   suppresses), which gives the kept (pair, 0, box) indices.
3. ``select`` (jax2onnx): the ``max_detections`` best kept boxes of each image.

This is :func:`ssd_jax.postprocess.detect` step for step; only greedy NMS runs
as ONNX's operator, because jax2onnx's loops do not run under onnxruntime.
Two jax2onnx limits are worked around here: the network is traced to a jaxpr
first (jax2onnx's own Flax Conv rule fails on Flax 0.12's padding lists), and
max pools, which it emits as 4-d pooling that onnxruntime cannot run, are
rewritten as 2-d ``MaxPool`` in NCHW.

Needs the ``onnx`` extra (``pip install -e ".[onnx]"``: jax2onnx 0.13, which
supports jax up to 0.10, so Python 3.11's stack).
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import postprocess, steps
from ssd_jax.box_coding import decode
from ssd_jax.errors import UserError
from ssd_jax.inference import Detector
from ssd_jax.models import conv

OUTPUT_NAMES = ("boxes_xyxy", "scores", "classes", "valid", "num_detections")


def require_onnx():
    """``(jax2onnx, onnx)``, or a :class:`UserError` naming the extra."""
    try:
        import jax2onnx
        import onnx
    except ImportError as error:
        raise UserError(
            f"ONNX export needs {error.name}: pip install -e '.[onnx]' (Python 3.11: "
            "jax2onnx does not support jax 0.11+ yet)"
        ) from None
    return jax2onnx, onnx


def _candidates_fn(detector: Detector):
    """uint8 (B, S, S, 3) -> boxes (B * C, T, 4) xyxy (clipped only with
    ``clip_before_nms``), scores (B * C, 1, T)."""
    settings, graphdef = detector.settings, detector.graphdef
    weights = jax.tree.map(np.asarray, jax.device_get(detector.variables))
    default_boxes = np.asarray(settings.default_boxes_cxcywh, np.float32)
    top_k = min(settings.top_k_per_class, len(default_boxes))

    def candidates(images: jax.Array) -> tuple[jax.Array, jax.Array]:
        model = steps.inference_model(graphdef, jax.tree.map(jnp.asarray, weights))
        loc, conf = model(settings.network_input(images))
        probs = jax.nn.softmax(conf.astype(jnp.float32), axis=-1)[..., 1:]  # (B, A, C)
        boxes = decode(loc, default_boxes)  # (B, A, 4)
        if settings.clip_before_nms:
            boxes = jnp.clip(boxes, 0.0, 1.0)
        scores, index = jax.lax.top_k(jnp.swapaxes(probs, 1, 2), top_k)  # (B, C, T)
        picked = jnp.take_along_axis(boxes[:, None], index[..., None], axis=2)  # (B, C, T, 4)
        return picked.reshape(-1, top_k, 4), scores.reshape(-1, 1, top_k)

    return candidates, top_k


def _select_fn(num_classes: int, top_k: int, max_detections: int):
    """(boxes (B * C, T, 4), scores (B * C, 1, T), kept (N, 3) int32) -> detections."""

    def select(boxes, scores, kept):
        flat_scores = scores.reshape(-1)  # (B * C * T), (image, class, rank) order
        is_kept = jnp.zeros(flat_scores.shape, bool).at[kept[:, 0] * top_k + kept[:, 2]].set(True)
        per_image = jnp.where(is_kept, flat_scores, -jnp.inf).reshape(-1, num_classes * top_k)
        flat_boxes = boxes.reshape(per_image.shape[0], num_classes * top_k, 4)
        classes = jnp.repeat(jnp.arange(1, num_classes + 1, dtype=jnp.int32), top_k)
        best = jax.vmap(postprocess.best_detections, in_axes=(0, 0, None, None))
        return tuple(best(per_image, flat_boxes, classes, max_detections))

    return select


def _to_onnx(fn, specs, name: str):
    """jax2onnx of ``fn`` traced to a jaxpr first (see the module docstring)."""
    jax2onnx, _ = require_onnx()
    from jax.extend.core import jaxpr_as_fun

    with conv.lax_convolutions():  # ONNX has no per-platform choice
        closed = jax.make_jaxpr(fn)(*specs)
    return jax2onnx.to_onnx(jaxpr_as_fun(closed), list(specs), model_name=name)


def _two_d_max_pools(model):
    """jax2onnx writes an NHWC max pool as a 4-d MaxPool over (1, 1, B, H, W, C);
    onnxruntime pools at most 3-d. Each becomes Squeeze, NCHW 2-d MaxPool, back."""
    _, onnx = require_onnx()
    helper, nodes = onnx.helper, []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "MaxPool" or len(attrs["kernel_shape"]) != 4:
            nodes.append(node)
            continue
        kernel, strides = attrs["kernel_shape"], attrs["strides"]
        pads = attrs.get("pads", [0] * 8)  # begins of the 4 dims, then ends
        assert (
            kernel[::3] == strides[::3] == [1, 1] and pads[0] == pads[3] == pads[4] == pads[7] == 0
        )
        x, name = node.input[0], node.name
        model.graph.initializer.append(
            helper.make_tensor(f"{name}_axes", onnx.TensorProto.INT64, [2], [0, 1])
        )
        nodes += [
            helper.make_node("Squeeze", [x, f"{name}_axes"], [f"{name}_bhwc"]),
            helper.make_node("Transpose", [f"{name}_bhwc"], [f"{name}_bchw"], perm=[0, 3, 1, 2]),
            helper.make_node(
                "MaxPool",
                [f"{name}_bchw"],
                [f"{name}_pooled"],
                kernel_shape=kernel[1:3],
                strides=strides[1:3],
                pads=[pads[1], pads[2], pads[5], pads[6]],
            ),
            helper.make_node("Transpose", [f"{name}_pooled"], [f"{name}_nhwc"], perm=[0, 2, 3, 1]),
            helper.make_node("Unsqueeze", [f"{name}_nhwc", f"{name}_axes"], [node.output[0]]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def export_onnx(detector: Detector):
    """The detector as an ``onnx.ModelProto`` (see the module docstring)."""
    _, onnx = require_onnx()
    helper, settings = onnx.helper, detector.settings
    num_classes, size = len(detector.class_names), detector.image_size
    (batch,) = jax.export.symbolic_shape("B")
    candidates, top_k = _candidates_fn(detector)
    first = _two_d_max_pools(
        _to_onnx(candidates, [jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)], "ssd")
    )
    (images, kept) = jax.export.symbolic_shape("B, N")
    pairs = images * num_classes
    second = _to_onnx(
        _select_fn(num_classes, top_k, settings.max_detections),
        [jax.ShapeDtypeStruct((pairs, top_k, 4), jnp.float32),
         jax.ShapeDtypeStruct((pairs, 1, top_k), jnp.float32),
         jax.ShapeDtypeStruct((kept, 3), jnp.int32)],
        "select",
    )  # fmt: skip
    second = onnx.compose.add_prefix(second, "select/")
    boxes, scores = (output.name for output in first.graph.output)
    constants = [
        helper.make_tensor("nms/top_k", onnx.TensorProto.INT64, [1], [top_k]),
        helper.make_tensor("nms/iou", onnx.TensorProto.FLOAT, [1], [settings.nms_iou_threshold]),
        helper.make_tensor("nms/score", onnx.TensorProto.FLOAT, [1], [settings.score_threshold]),
    ]
    select_inputs = [value.name for value in second.graph.input]
    nodes = [
        *first.graph.node,
        helper.make_node(
            "NonMaxSuppression", [boxes, scores, "nms/top_k", "nms/iou", "nms/score"], ["nms/kept"]
        ),
        helper.make_node("Identity", [boxes], [select_inputs[0]]),
        helper.make_node("Identity", [scores], [select_inputs[1]]),
        helper.make_node("Cast", ["nms/kept"], [select_inputs[2]], to=onnx.TensorProto.INT32),
        *second.graph.node,
        *(
            helper.make_node("Identity", [value.name], [name])
            for value, name in zip(second.graph.output, OUTPUT_NAMES, strict=True)
        ),
    ]
    outputs = []
    for value, name in zip(second.graph.output, OUTPUT_NAMES, strict=True):
        output = onnx.ValueInfoProto()
        output.CopyFrom(value)
        output.name = name
        outputs.append(output)
    graph = helper.make_graph(
        nodes, "ssd_detector", list(first.graph.input), outputs,
        initializer=[*first.graph.initializer, *constants, *second.graph.initializer],
    )  # fmt: skip
    model = helper.make_model(
        graph,
        opset_imports=list(first.opset_import),
        functions=[*first.functions, *second.functions],
        producer_name="ssd_jax",
    )
    model.ir_version = first.ir_version
    onnx.checker.check_model(model)
    return model


def to_bytes(detector: Detector) -> tuple[bytes, dict]:
    """The serialized model of :func:`export_onnx` and its ``info`` (the opset)."""
    for name in ("jax2onnx", "onnx_ir"):  # their conversion notes are not for users
        logging.getLogger(name).setLevel(logging.ERROR)
    model = export_onnx(detector)
    opset = model.opset_import[0].version
    return model.SerializeToString(), {"opset": opset, "runs_on": f"onnxruntime, opset {opset}"}
