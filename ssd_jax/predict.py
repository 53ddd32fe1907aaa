"""Detects objects in images or videos with a trained checkpoint and draws them.

    python -m ssd_jax.predict --checkpoint runs/shapes --input PATH \
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
from collections.abc import Iterator

import cv2
import numpy as np
from absl import flags

from ssd_jax.data.example import DataError, read_image_rgb
from ssd_jax.inference import Detector, draw_detections, load_detector

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FLAGS = flags.FLAGS


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


def predict_video(detector: Detector, path: str, output: str, threshold: float) -> dict:
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


def predict_image(detector: Detector, path: str, output: str, threshold: float) -> list[dict]:
    """Writes ``output``/<name>.jpg with the detections of the image ``path`` drawn;
    returns them."""
    image = read_image_rgb(path, exif_orientation=True)  # photos upright, as viewers show them
    detections = detector(image, threshold)
    name = os.path.splitext(os.path.basename(path))[0] + ".jpg"
    drawn = cv2.cvtColor(draw_detections(image, detections), cv2.COLOR_RGB2BGR)
    cv2.imwrite(os.path.join(output, name), drawn)
    return detections


def list_inputs(path: str) -> list[str]:
    """``path`` itself, or the images and videos of the folder ``path``, sorted."""
    if not os.path.isdir(path):
        return [path]
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(suffixes))


def predict(detector: Detector, input_path: str, output: str, threshold: float) -> dict:
    """Runs :func:`predict_image` / :func:`predict_video` on every input, skipping
    unreadable files; writes and returns ``{"detections", "skipped"}``."""
    os.makedirs(output, exist_ok=True)
    results, skipped = {}, []
    for path in list_inputs(input_path):
        try:
            if path.lower().endswith(VIDEO_SUFFIXES):
                found = predict_video(detector, path, output, threshold)
                results.update(found)
                print(f"{path}: {len(found)} frames, {sum(map(len, found.values()))} detections")
            else:
                results[path] = predict_image(detector, path, output, threshold)
                print(f"{path}: {len(results[path])} detections")
        except DataError as error:
            print(f"skipped: {error}")
            skipped.append(path)
    report = {"detections": results, "skipped": skipped}
    with open(os.path.join(output, "detections.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def main(argv: list[str]) -> None:
    del argv
    detector = load_detector(FLAGS.checkpoint, FLAGS.step)
    predict(detector, FLAGS.input, FLAGS.output, FLAGS.score_threshold)


if __name__ == "__main__":
    from ssd_jax import cli

    cli.define_checkpoint_flags()
    flags.DEFINE_string("input", None, "An image, a folder of images or a video file.")
    flags.DEFINE_string("output", "predictions", "Output folder.")
    flags.DEFINE_float("score_threshold", 0.5, "Minimum class probability to report.")
    flags.mark_flags_as_required(["input"])
    cli.run(main)
