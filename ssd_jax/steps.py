"""The device steps of SSD: train, evaluate and detect.

Each ``make_*`` function returns a pure function, not yet jitted, that the caller
jit-compiles over the data mesh: ``train_step(state, batch, learning_rate_scale)
-> (state, metrics)``, ``eval_step(variables, batch) -> (losses, detections)`` and
``detect_step(variables, images) -> detections``. The train step holds everything that
touches the batch on the device: uint8 -> normalized images, the network,
matching (vmap), the multibox loss, gradients and the optax update. The eval
step runs the network once per batch for both the loss and the detections. The
detect step is inference: the network with BatchNorm on its running statistics,
decoding and NMS.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ssd_jax import postprocess
from ssd_jax.data.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from ssd_jax.losses import multibox_loss
from ssd_jax.matching import match_batch
from ssd_jax.postprocess import Detections

Variables = dict[str, Any]
"""``{"params", "batch_stats"}``: the model's nnx.Param and nnx.BatchStat states,
all a trained network needs."""

TrainState = dict[str, Any]
""":data:`Variables` plus ``"opt_state"`` (the optax state) and ``"step"`` (int32)."""


def normalize_images(
    images: jax.Array, mean: Sequence[float], std: Sequence[float], dtype: jnp.dtype
) -> jax.Array:
    """uint8 (B, H, W, 3) RGB -> ``(x - mean) / std`` in ``dtype`` (computed in float32)."""
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, Variables]:
    """The model's graph and its :data:`Variables`."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, {"params": params, "batch_stats": batch_stats}


def init_train_state(variables: Variables, optimizer: optax.GradientTransformation) -> TrainState:
    """A :data:`TrainState` at step 0 for ``variables``."""
    return {
        **variables,
        "opt_state": optimizer.init(variables["params"]),
        "step": jnp.zeros((), jnp.int32),
    }


class StepSettings(NamedTuple):
    """What the device steps need besides the model: default boxes (A, 4) cxcywh,
    input normalization (0-255 RGB mean/std), compute dtype, loss settings and
    detection post-processing settings (see :func:`ssd_jax.postprocess.detect`)."""

    default_boxes_cxcywh: jax.Array
    mean: Sequence[float] = IMAGENET_MEAN_RGB
    std: Sequence[float] = IMAGENET_STD_RGB
    compute_dtype: jnp.dtype = jnp.float32
    match_iou_threshold: float = 0.5
    neg_pos_ratio: float = 3.0
    alpha: float = 1.0
    loss_normalization: str = "batch"
    score_threshold: float = 0.01
    nms_iou_threshold: float = 0.45
    top_k_per_class: int = 200
    max_detections: int = 200
    clip_before_nms: bool = False

    def network_input(self, images: jax.Array) -> jax.Array:
        return normalize_images(images, self.mean, self.std, self.compute_dtype)


def _loss(
    loc: jax.Array, conf: jax.Array, batch: dict, settings: StepSettings
) -> tuple[jax.Array, dict]:
    """Multibox loss of head outputs (B, A, 4), (B, A, C + 1) against the batch's
    padded ground truth (``boxes`` (B, M, 4) xyxy, ``labels``, ``mask`` (B, M))."""
    default_boxes = jnp.asarray(settings.default_boxes_cxcywh, jnp.float32)
    labels, deltas = match_batch(
        batch["boxes"], batch["labels"], batch["mask"], default_boxes, settings.match_iou_threshold
    )
    return multibox_loss(
        loc, conf, labels, deltas, settings.neg_pos_ratio, settings.alpha,
        settings.loss_normalization,
    )  # fmt: skip


def _detect(loc: jax.Array, conf: jax.Array, settings: StepSettings) -> Detections:
    return postprocess.detect(
        loc,
        conf,
        jnp.asarray(settings.default_boxes_cxcywh),
        score_threshold=settings.score_threshold,
        nms_iou_threshold=settings.nms_iou_threshold,
        top_k_per_class=settings.top_k_per_class,
        max_detections=settings.max_detections,
        clip_before_nms=settings.clip_before_nms,
    )


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    settings: StepSettings,
    augment: Callable[[jax.Array, dict], dict] | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``train_step(state, batch, learning_rate_scale=1.0) -> (state, metrics)``,
    not yet jitted.

    ``batch`` holds ``image`` uint8 (B, S, S, 3), ``boxes`` (B, M, 4), ``labels`` and
    ``mask`` (B, M). ``augment(step, batch) -> batch``, if given, runs first (device
    augmentation: :func:`ssd_jax.data.device_augment.augment_step`).
    ``learning_rate_scale`` (a float32 scalar) multiplies the schedule's rate
    (after rollbacks: :mod:`ssd_jax.divergence`). ``metrics``: loss, loc, conf,
    num_pos, learning_rate, grad_norm.
    """

    def train_step(
        state: TrainState, batch: dict, learning_rate_scale: jax.Array | float = 1.0
    ) -> tuple[TrainState, dict]:
        if augment is not None:
            batch = augment(state["step"], batch)

        def loss_fn(params):
            # copy: fresh Variables at this trace level, which BatchNorm may update
            model = nnx.merge(graphdef, params, state["batch_stats"], copy=True)
            loc, conf = model(settings.network_input(batch["image"]))
            loss, parts = _loss(loc, conf, batch, settings)
            return loss, (parts, nnx.state(model, nnx.BatchStat))

        (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"]
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        # the rate multiplies the optimizer's last transformation: scaling the updates
        # is scaling the rate (momentum and weight decay come before it)
        updates = jax.tree.map(lambda u: u * learning_rate_scale, updates)
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "batch_stats": batch_stats,
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        metrics = {
            "loss": loss,
            **parts,
            "learning_rate": schedule(state["step"]) * learning_rate_scale,
            "grad_norm": optax.tree.norm(grads),
        }
        return new_state, metrics

    return train_step


def inference_model(graphdef: nnx.GraphDef, variables: Variables) -> nnx.Module:
    """The model with BatchNorm on its running statistics."""
    model = nnx.merge(graphdef, variables["params"], variables["batch_stats"], copy=True)
    model.eval()
    return model


def make_eval_step(
    graphdef: nnx.GraphDef, settings: StepSettings
) -> Callable[[Variables, dict], tuple[dict, Detections]]:
    """``eval_step(variables, batch) -> (losses, detections)``: one inference-mode
    forward pass (BatchNorm on running statistics) gives both the loss parts
    (``loss``, ``loc``, ``conf``, ``num_pos``) and the batch's :class:`Detections`."""

    def eval_step(variables: Variables, batch: dict) -> tuple[dict, Detections]:
        model = inference_model(graphdef, variables)
        loc, conf = model(settings.network_input(batch["image"]))
        loss, parts = _loss(loc, conf, batch, settings)
        return {"loss": loss, **parts}, _detect(loc, conf, settings)

    return eval_step


def make_detect_step(
    graphdef: nnx.GraphDef, settings: StepSettings
) -> Callable[[Variables, jax.Array], Detections]:
    """``detect_step(variables, images) -> Detections`` for uint8 (B, S, S, 3) RGB
    images: the network in inference mode, then :func:`ssd_jax.postprocess.detect`."""

    def detect_step(variables: Variables, images: jax.Array) -> Detections:
        loc, conf = inference_model(graphdef, variables)(settings.network_input(images))
        return _detect(loc, conf, settings)

    return detect_step
