"""Detection with a trained checkpoint: :func:`load_detector`, the
:class:`Detector` it returns, :func:`draw_detections`, and the portable export of
a detector with ``jax.export``.

Importing this module loads neither the trainer nor Grain nor TensorBoard.
"""

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ssd_jax import build, checkpoint, parallel, steps
from ssd_jax.data.augment import resize
from ssd_jax.postprocess import Detections
from ssd_jax.visualize import draw_boxes


def restore_network(
    location: checkpoint.Location, config: ml_collections.ConfigDict
) -> tuple[nnx.GraphDef, steps.Variables]:
    """The network that ``config`` describes with the checkpoint's weights."""
    model = build.model(config.model, len(config.data.class_names), config.seed)
    graphdef, variables = steps.split_model(model)
    return graphdef, checkpoint.restore_variables(location, variables, strict=True)


class Detector:
    """A trained network ready for inference.

    ``detector(image)`` maps one RGB uint8 (H, W, 3) image of any size to a list
    of detections, best first: ``{"box": [x0, y0, x1, y1]`` (original pixels),
    ``"label"`` (1..C), ``"class"`` (name), ``"score"`` (class probability)``}``.
    ``detector.detect_batch(images)`` does the same for a sequence of images,
    ``batch_size`` at a time (the last batch padded, so one compilation serves all).
    Build one with :func:`load_detector`.
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        variables: steps.Variables,
        settings: steps.StepSettings,
        class_names: Sequence[str],
        image_size: int,
        batch_size: int = 8,
    ):
        self.graphdef, self.settings = graphdef, settings
        self.variables = jax.device_put(variables, parallel.replicated(parallel.make_data_mesh()))
        self.class_names = tuple(class_names)
        self.image_size = image_size
        self.batch_size = batch_size
        self._detect_step = jax.jit(steps.make_detect_step(graphdef, settings))

    def detect_resized(self, images: np.ndarray) -> Detections:
        """:class:`Detections` (boxes normalized xyxy) of uint8 (B, S, S, 3) RGB
        images already resized to the input size S."""
        return self._detect_step(self.variables, images)

    def __call__(self, image: np.ndarray, score_threshold: float = 0.5) -> list[dict]:
        return self.detect_batch([image], score_threshold, batch_size=1)[0]

    def detect_batch(
        self,
        images: Sequence[np.ndarray],
        score_threshold: float = 0.5,
        batch_size: int | None = None,
    ) -> list[list[dict]]:
        """Detections of each RGB uint8 image (see the class docstring)."""
        batch_size = batch_size or self.batch_size
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            resized = np.zeros((batch_size, self.image_size, self.image_size, 3), np.uint8)
            for k, image in enumerate(chunk):
                if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                    raise ValueError(
                        f"image {start + k}: expected uint8 (H, W, 3) RGB, got "
                        f"{image.dtype} {image.shape}"
                    )
                resized[k] = resize(image, self.image_size)
            found = jax.device_get(self.detect_resized(resized))
            for k, image in enumerate(chunk):
                results.append(self._to_records(found, k, image.shape[:2], score_threshold))
        return results

    def _to_records(self, found: Detections, k: int, size: tuple[int, int], threshold: float):
        height, width = size
        scale = np.array([width, height, width, height])
        keep = found.valid[k] & (found.scores[k] >= threshold)
        return [
            {
                "box": [round(float(v), 1) for v in box * scale],
                "label": int(label),
                "class": self.class_names[int(label) - 1],
                "score": round(float(score), 4),
            }
            for box, label, score in zip(
                found.boxes_xyxy[k][keep],
                found.classes[k][keep],
                found.scores[k][keep],
                strict=True,
            )
        ]


def load_detector(path: str, step: int | None = None, batch_size: int = 8) -> Detector:
    """The :class:`Detector` of a checkpoint (a run directory, its ``checkpoints/``
    folder, a ``convert`` output or one step's folder; the newest step unless
    ``step``). Its class names, input normalization, default boxes and
    post-processing settings travel with the checkpoint."""
    location = checkpoint.locate(path, step)
    config = checkpoint.saved_config(checkpoint.read_meta(location))
    graphdef, variables = restore_network(location, config)
    image_size = build.image_size(config.model)
    settings = build.step_settings(config)
    return Detector(graphdef, variables, settings, config.data.class_names, image_size, batch_size)


def draw_detections(image: np.ndarray, detections: list[dict]) -> np.ndarray:
    """A copy of the RGB uint8 ``image`` with each detection (as returned by
    :class:`Detector`) drawn: its box and a "class score" label, one colour per class."""
    return draw_boxes(
        image,
        np.array([d["box"] for d in detections], np.float64).reshape(-1, 4),
        [d["label"] for d in detections],
        [f"{d['class']} {d['score']:.2f}" for d in detections],
    )


EXPORT_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def export_detector(
    detector: Detector,
    batch_size: int | None = None,
    platforms: Sequence[str] = EXPORT_PLATFORMS,
) -> tuple[jax.export.Exported, dict]:
    """``(exported, info)``: the whole detector (uint8 normalization, network,
    decoding, NMS; the weights inside) as a ``jax.export.Exported`` taking uint8
    (B, S, S, 3) RGB images (B symbolic unless ``batch_size``) and returning a dict
    of :class:`ssd_jax.postprocess.Detections` fields; ``info`` holds
    ``class_names``, the input size ``image_size`` S and the ``platforms``.

    Lowered for every backend in ``platforms`` (any of them, whichever backend
    exports): one artifact exported on a laptop runs on CPUs, NVIDIA and AMD GPUs
    and TPUs; the weights are stored once, so each platform adds ~1 %."""
    # Host copies: the weights become constants of the artifact, not sharded arrays.
    weights = jax.tree.map(np.asarray, jax.device_get(detector.variables))
    detect_step = steps.make_detect_step(detector.graphdef, detector.settings)

    def detect(images: jax.Array) -> dict[str, jax.Array]:
        return detect_step(jax.tree.map(jnp.asarray, weights), images)._asdict()

    size = detector.image_size
    (batch,) = jax.export.symbolic_shape("b") if batch_size is None else (batch_size,)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
    exported = jax.export.export(jax.jit(detect), platforms=tuple(platforms))(images)
    info = {
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,  # loads in this jax and newer ones
        "class_names": list(detector.class_names),
        "image_size": size,
        "input": "uint8 RGB (B, S, S, 3), resized to S x S",
        "output": "boxes_xyxy normalized to [0, 1]; classes 1..C index class_names[c - 1]",
    }
    return exported, info


def save_export(exported: jax.export.Exported, info: dict, path: str) -> None:
    """Writes ``path`` (the serialized artifact) and ``path + ".json"`` (``info``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(exported.serialize())
    with open(path + ".json", "w") as f:
        json.dump(info, f, indent=2)


def load_export(path: str) -> tuple[jax.export.Exported, dict]:
    """The artifact written by :func:`save_export` and its ``info``."""
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    with open(path + ".json") as f:
        return exported, json.load(f)
