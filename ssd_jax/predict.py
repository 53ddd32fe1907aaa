r"""Detects objects in images or videos with a trained checkpoint and draws them.

    python -m ssd_jax.predict --checkpoint runs/shapes --input PATH \
        [--output predictions] [--score_threshold 0.5]

``PATH`` is an image, a folder of images or a video file. Each image gives
``<output>/<stem>.jpg`` with the detections drawn (``<stem>_<suffix>.jpg`` where
inputs share a stem); a video gives ``<output>/<stem>.mp4``.
``<output>/detections.json`` lists the detections (boxes in original pixels,
class names, scores) per image, or per ``<video>#<frame>``. Inputs of any size
are resized to the model's input and the boxes mapped back; photos are turned
upright by their EXIF orientation. Unreadable files are reported and skipped
(none readable: exit status 1; a missing input, a file that is not an
image or video, or a folder without any: one line before the model loads).
The output folder must not be the inputs' folder and must be writable (checked
before the first image); a failed write stops the command, keeping
``detections.json`` of what was done.
"""

import collections
import json
import os
import sys
import tempfile
from collections.abc import Iterator

import cv2
import numpy as np
from absl import flags

from ssd_jax.data.example import DataError, read_image_rgb
from ssd_jax.errors import UserError
from ssd_jax.inference import Detector, draw_detections, load_detector
from ssd_jax.progress import Progress

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


def predict_video(detector: Detector, path: str, output_file: str, threshold: float) -> dict:
    """Annotates every frame of the video ``path`` into ``output_file`` (mp4);
    returns the detections keyed ``<path>#<frame>``."""
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
                writer = cv2.VideoWriter(output_file, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
                if not writer.isOpened():
                    raise UserError(f"cannot write the video {output_file}")
            frames.append(frame)
            if len(frames) == detector.batch_size:
                flush()
        if frames:
            flush()
    finally:
        if writer is not None:
            writer.release()
    return results


def predict_image(detector: Detector, path: str, output_file: str, threshold: float) -> list[dict]:
    """Writes ``output_file`` (jpg), the image ``path`` with its detections drawn;
    returns them."""
    image = read_image_rgb(path, exif_orientation=True)  # photos upright, as viewers show them
    detections = detector(image, threshold)
    drawn = cv2.cvtColor(draw_detections(image, detections), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(output_file, drawn):
        raise UserError(f"cannot write {output_file}")
    return detections


def list_inputs(path: str) -> list[str]:
    """``path`` itself, or the images and videos of the folder ``path``, sorted;
    :class:`UserError` if there is none."""
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    if not os.path.exists(path):
        raise UserError(f"--input {path} does not exist")
    if not os.path.isdir(path):
        if not path.lower().endswith(suffixes):
            raise UserError(f"--input {path} is not an image or video ({', '.join(suffixes)})")
        return [path]
    paths = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(suffixes))
    if not paths:
        raise UserError(f"{path} holds no image or video ({', '.join(suffixes)})")
    return paths


def output_names(paths: list[str]) -> dict[str, str]:
    """The file each input becomes: ``<stem>.jpg`` (videos ``<stem>.mp4``), or
    ``<stem>_<suffix>.jpg`` where inputs share a stem (``a.jpg``, ``a.png``)."""

    def name(path: str, keep_suffix: bool) -> str:
        stem, suffix = os.path.splitext(os.path.basename(path))
        stem = f"{stem}_{suffix.lstrip('.')}" if keep_suffix else stem
        return stem + (".mp4" if suffix.lower() in VIDEO_SUFFIXES else ".jpg")

    plain = collections.Counter(name(path, False) for path in paths)
    return {path: name(path, plain[name(path, False)] > 1) for path in paths}


def prepare_output(input_path: str, output: str) -> None:
    """Creates the output folder and checks that it can be written and is not
    the inputs' own folder (annotated copies would replace or join the inputs)."""
    inputs_folder = input_path if os.path.isdir(input_path) else os.path.dirname(input_path)
    if os.path.realpath(output) == os.path.realpath(inputs_folder or "."):
        raise UserError(f"--output {output} is the folder of the inputs: give another folder")
    try:
        os.makedirs(output, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as error:
        raise UserError(f"cannot write to the output folder {output}: {error}") from None


def predict(detector: Detector, input_path: str, output: str, threshold: float) -> dict:
    """Runs :func:`predict_image` / :func:`predict_video` on every input, skipping
    unreadable files; writes ``detections.json`` (also when a write fails midway:
    what was done is kept) and returns ``{"detections", "skipped"}``."""
    prepare_output(input_path, output)
    paths = list_inputs(input_path)
    names = output_names(paths)
    report = {"detections": {}, "skipped": []}
    progress = Progress(len(paths), "predict", "file", line_every=len(paths) + 1, stream=sys.stdout)
    try:
        for index, path in enumerate(paths, 1):
            output_file = os.path.join(output, names[path])
            try:
                if path.lower().endswith(VIDEO_SUFFIXES):
                    found = predict_video(detector, path, output_file, threshold)
                    report["detections"].update(found)
                    count = sum(map(len, found.values()))
                    message = f"{len(found)} frames, {_count(count)} -> {output_file}"
                else:
                    found = predict_image(detector, path, output_file, threshold)
                    report["detections"][path] = found
                    message = f"{_count(len(found))} -> {output_file}"
                progress.write(f"[{index}/{len(paths)}] {path}: {message}")
            except DataError as error:
                progress.write(f"[{index}/{len(paths)}] skipped: {error}")
                report["skipped"].append(path)
            progress.update()
    finally:
        progress.close()
        with open(os.path.join(output, "detections.json"), "w") as f:
            json.dump(report, f, indent=2)
    if len(report["skipped"]) == len(paths):
        raise UserError(f"none of the {len(paths)} inputs could be read (see above)")
    print(f"wrote {os.path.join(output, 'detections.json')}", flush=True)
    return report


def _count(detections: int) -> str:
    return f"{detections} detection{'' if detections == 1 else 's'}"


def main(argv: list[str]) -> None:
    del argv
    if not 0 <= FLAGS.score_threshold <= 1:
        raise UserError(f"--score_threshold {FLAGS.score_threshold}: a probability, in [0, 1]")
    list_inputs(FLAGS.input)  # no input is an error before the model loads
    detector = load_detector(FLAGS.checkpoint, FLAGS.step)
    predict(detector, FLAGS.input, FLAGS.output, FLAGS.score_threshold)


if __name__ == "__main__":
    from ssd_jax import cli

    cli.define_checkpoint_flags()
    flags.adopt_module_key_flags(cli)  # --checkpoint and --step in --help
    flags.DEFINE_string("input", None, "An image, a folder of images or a video file.")
    flags.DEFINE_string("output", "predictions", "Output folder.")
    flags.DEFINE_float("score_threshold", 0.5, "Minimum class probability to report.")
    flags.mark_flags_as_required(["input"])
    cli.run(main)
