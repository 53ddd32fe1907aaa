"""Detects objects in images or videos with a trained checkpoint and draws them.

    python -m ssd_jax.predict --checkpoint runs/shapes/checkpoints --input PATH \
        [--output predictions] [--score_threshold 0.5]

``PATH`` is an image, a folder of images or a video file. Each image gives
``<output>/<name>.jpg`` with the detections drawn; a video gives
``<output>/<name>.mp4``. ``<output>/detections.json`` lists the detections (boxes
in original pixels, class names, scores) per image, or per ``<video>#<frame>``.
Inputs of any size are resized to the model's input and the boxes mapped back.
Unreadable files are reported and skipped.
"""

import json
import os
from collections.abc import Iterator, Sequence

import cv2
import jax
import ml_collections
import numpy as np
from absl import app, flags

from ssd_jax.cli import quiet_flags_parser
from ssd_jax.data.augment import resize
from ssd_jax.data.example import DataError, read_image_rgb
from ssd_jax.evaluate import checkpoint_meta, load_for_inference
from ssd_jax.visualize import draw_boxes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class Detector:
    """A checkpoint ready for inference (its config, class names and input
    normalization come from the checkpoint).

    ``detector(image)`` maps one RGB uint8 (H, W, 3) image of any size to a list
    of detections, best first: ``{"box": [x0, y0, x1, y1]`` (original pixels),
    ``"label"`` (1..C), ``"class"`` (name), ``"score"`` (class probability)``}``.
    ``detector.detect_batch(images)`` does the same for a sequence of images,
    ``batch_size`` at a time (the last batch padded, so one compilation serves all).
    """

    def __init__(self, checkpoint_dir: str, step: int | None = None, batch_size: int = 8):
        meta = checkpoint_meta(checkpoint_dir, step)
        config = ml_collections.ConfigDict(meta["config"])
        self.class_names = tuple(meta["class_names"])
        self.batch_size = batch_size
        self._detect, self._state, self.image_size = load_for_inference(
            checkpoint_dir, config, len(self.class_names), step
        )

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
            found = jax.device_get(self._detect(self._state, resized))
            for k, image in enumerate(chunk):
                results.append(self._to_records(found, k, image.shape[:2], score_threshold))
        return results

    def _to_records(self, found, k: int, size: tuple[int, int], score_threshold: float):
        height, width = size
        scale = np.array([width, height, width, height])
        keep = found.valid[k] & (found.scores[k] >= score_threshold)
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


def draw_detections(image: np.ndarray, detections: list[dict]) -> np.ndarray:
    """A copy of the RGB uint8 ``image`` with each detection (as returned by
    :class:`Detector`) drawn: its box and a "class score" label, one colour per class."""
    return draw_boxes(
        image,
        np.array([d["box"] for d in detections], np.float64).reshape(-1, 4),
        [d["label"] for d in detections],
        [f"{d['class']} {d['score']:.2f}" for d in detections],
    )


def read_video_frames(path: str) -> Iterator[tuple[np.ndarray, float]]:
    """``(frame RGB uint8, frames per second)`` of a video file; :class:`DataError`
    if it cannot be opened or holds no frame."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DataError(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), fps
    finally:
        capture.release()
    if count == 0:
        raise DataError(f"no readable frame in video {path}")


def _predict_video(detector: Detector, path: str, output: str, threshold: float) -> dict:
    """Annotates every frame of ``path`` into ``output``/<name>.mp4; returns the
    detections keyed ``<path>#<frame>``."""
    name = os.path.splitext(os.path.basename(path))[0] + ".mp4"
    results, writer, frames = {}, None, []

    def flush():
        for frame, found in zip(frames, detector.detect_batch(frames, threshold), strict=True):
            results[f"{path}#{len(results)}"] = found
            writer.write(cv2.cvtColor(draw_detections(frame, found), cv2.COLOR_RGB2BGR))
        frames.clear()

    try:
        for frame, fps in read_video_frames(path):
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                writer = cv2.VideoWriter(os.path.join(output, name), fourcc, fps, size)
            frames.append(frame)
            if len(frames) == detector.batch_size:
                flush()
        if frames:
            flush()
    finally:
        if writer is not None:
            writer.release()
    return results


def _inputs(path: str) -> list[str]:
    if not os.path.isdir(path):
        return [path]
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(suffixes))


def main(argv: list[str]) -> None:
    del argv
    detector = Detector(FLAGS.checkpoint, FLAGS.step)
    os.makedirs(FLAGS.output, exist_ok=True)
    results, skipped = {}, []
    for path in _inputs(FLAGS.input):
        try:
            if path.lower().endswith(VIDEO_SUFFIXES):
                found = _predict_video(detector, path, FLAGS.output, FLAGS.score_threshold)
                results.update(found)
                print(f"{path}: {len(found)} frames, {sum(map(len, found.values()))} detections")
                continue
            image = read_image_rgb(path)
        except DataError as error:
            print(f"skipped: {error}")
            skipped.append(path)
            continue
        detections = detector(image, FLAGS.score_threshold)
        results[path] = detections
        name = os.path.splitext(os.path.basename(path))[0] + ".jpg"
        drawn = cv2.cvtColor(draw_detections(image, detections), cv2.COLOR_RGB2BGR)
        cv2.imwrite(os.path.join(FLAGS.output, name), drawn)
        print(f"{path}: {len(detections)} detections")
    with open(os.path.join(FLAGS.output, "detections.json"), "w") as f:
        json.dump({"detections": results, "skipped": skipped}, f, indent=2)


FLAGS = flags.FLAGS
if __name__ == "__main__":
    flags.DEFINE_string("checkpoint", None, "Checkpoint directory (a workdir's checkpoints/).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("input", None, "An image, a folder of images or a video file.")
    flags.DEFINE_string("output", "predictions", "Output folder.")
    flags.DEFINE_float("score_threshold", 0.5, "Minimum class probability to report.")
    flags.mark_flags_as_required(["checkpoint", "input"])
    # Orbax logs every save and load at INFO: WARNING unless --verbosity says otherwise.
    app.run(main, flags_parser=quiet_flags_parser)
