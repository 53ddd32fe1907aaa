"""Detection with a trained checkpoint: :func:`load_detector`, the
:class:`Detector` it returns and :func:`draw_detections` (exporting a detector:
:mod:`ssd_jax.exporters`).

Importing this module loads neither the trainer nor Grain nor TensorBoard.
"""

from collections.abc import Sequence

import jax
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
