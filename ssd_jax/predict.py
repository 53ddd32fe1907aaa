"""Detects objects in images with a trained checkpoint and draws them.

    python -m ssd_jax.predict --checkpoint runs/shapes/checkpoints --input IMAGE_OR_FOLDER \
        [--output predictions] [--score_threshold 0.5]

For each image it writes ``<output>/<name>.jpg`` with the detections drawn and
``<output>/detections.json`` (boxes in original pixels, class names, scores).
Images of any size are resized to the model's input and the boxes mapped back.
Unreadable files are reported and skipped.
"""

import json
import os

import cv2
import jax
import ml_collections
import numpy as np
from absl import app, flags

from ssd_jax.data.augment import resize
from ssd_jax.data.example import DataError, read_image_rgb
from ssd_jax.evaluate import checkpoint_meta, load_for_inference

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class Detector:
    """A checkpoint ready for inference: ``detector(image_rgb_uint8)`` -> list of
    ``{"box": [x0, y0, x1, y1] (pixels), "class": name, "score": p}``, best first."""

    def __init__(self, checkpoint_dir: str, step: int | None = None):
        meta = checkpoint_meta(checkpoint_dir, step)
        config = ml_collections.ConfigDict(meta["config"])
        self.class_names = tuple(meta["class_names"])
        self._detect, self._state, self.image_size = load_for_inference(
            checkpoint_dir, config, len(self.class_names), step
        )

    def __call__(self, image: np.ndarray, score_threshold: float = 0.5) -> list[dict]:
        height, width = image.shape[:2]
        found = self._detect(self._state, resize(image, self.image_size)[None])
        found = jax.device_get(found)
        scale = np.array([width, height, width, height])
        keep = found.valid[0] & (found.scores[0] >= score_threshold)
        return [
            {
                "box": [round(float(v), 1) for v in box * scale],
                "class": self.class_names[int(label) - 1],
                "score": round(float(score), 4),
            }
            for box, label, score in zip(
                found.boxes_xyxy[0][keep],
                found.classes[0][keep],
                found.scores[0][keep],
                strict=True,
            )
        ]


def draw_detections(
    image: np.ndarray, detections: list[dict], class_names: tuple[str, ...]
) -> np.ndarray:
    """A copy of the RGB ``image`` with each detection's box and "class score" label,
    one distinct colour per class."""
    out = image.copy()
    hues = np.linspace(0, 179, len(class_names), endpoint=False).astype(np.uint8)
    colours = cv2.cvtColor(
        np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 255)], -1)[None],
        cv2.COLOR_HSV2RGB,
    )[0]
    thickness = max(1, round(max(image.shape[:2]) / 300))
    for detection in detections:
        x0, y0, x1, y1 = (round(v) for v in detection["box"])
        colour = tuple(int(c) for c in colours[class_names.index(detection["class"])])
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness)
        label = f"{detection['class']} {detection['score']:.2f}"
        (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, 1)
        top = max(y0 - text_h - 4, 0)
        cv2.rectangle(out, (x0, top), (x0 + text_w + 2, top + text_h + 4), colour, -1)
        cv2.putText(
            out,
            label,
            (x0 + 1, top + text_h + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thickness,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return out


def main(argv: list[str]) -> None:
    del argv
    detector = Detector(FLAGS.checkpoint, FLAGS.step)
    if os.path.isdir(FLAGS.input):
        paths = sorted(
            os.path.join(FLAGS.input, n)
            for n in os.listdir(FLAGS.input)
            if n.lower().endswith(IMAGE_SUFFIXES)
        )
    else:
        paths = [FLAGS.input]
    os.makedirs(FLAGS.output, exist_ok=True)
    results, skipped = {}, []
    for path in paths:
        try:
            image = read_image_rgb(path)
        except DataError as error:
            print(f"skipped: {error}")
            skipped.append(path)
            continue
        detections = detector(image, FLAGS.score_threshold)
        results[path] = detections
        drawn = draw_detections(image, detections, detector.class_names)
        name = os.path.splitext(os.path.basename(path))[0] + ".jpg"
        cv2.imwrite(os.path.join(FLAGS.output, name), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        print(f"{path}: {len(detections)} detections")
    with open(os.path.join(FLAGS.output, "detections.json"), "w") as f:
        json.dump({"detections": results, "skipped": skipped}, f, indent=2)


FLAGS = flags.FLAGS
if __name__ == "__main__":
    flags.DEFINE_string("checkpoint", None, "Checkpoint directory (a workdir's checkpoints/).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("input", None, "An image file or a folder of images.")
    flags.DEFINE_string("output", "predictions", "Output folder.")
    flags.DEFINE_float("score_threshold", 0.5, "Minimum class probability to report.")
    flags.mark_flags_as_required(["checkpoint", "input"])
    app.run(main)
