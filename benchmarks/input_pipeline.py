"""Input pipeline throughput: VOC-style JPEGs -> decode -> full SSD training
augmentation -> fixed-shape batches, in images per second.

    python -m benchmarks.input_pipeline [--workers 0,1,2] [--sizes 300,512]
        [--augment_on host,device] [--max_side 512]
        [--voc_root DIR --split trainval] [--output runs/benchmarks/input_pipeline.json]

``--augment_on device`` measures the host's part of device-side augmentation
(decode, fit into ``--max_side``, pad), the same for every output size. Before
the pipelines it times one image's steps in this process (ms): JPEG decoding,
OpenCV's half-size decoding (IMREAD_REDUCED_COLOR_2), copying an already
decoded image (a cache), the decode transform and the full host augmentation.

Without ``--voc_root`` it writes a synthetic VOC-style folder of JPEGs of VOC's
typical size (500x375). Workers 0 means in the calling process; with N worker
processes each prepares batches on one thread, so "per worker" is the N-worker
rate divided by N.
"""

import os
import tempfile
import time

import cv2
import numpy as np
from absl import app, flags

from benchmarks.common import define_output_flag, write_report
from ssd_jax.data import pipeline
from ssd_jax.data.sources import VocSource
from ssd_jax.data.synthetic import SyntheticShapes, write_voc

FLAGS = flags.FLAGS


def per_image_ms(source, image_size: int, max_side: int, repeats: int = 3) -> dict:
    """Milliseconds per image of each host step, best of ``repeats`` passes over
    the source's JPEGs (one thread)."""
    files = [source.image_file(i) for i in range(len(source))]
    raw = [np.fromfile(f, np.uint8) for f in files]
    images = [cv2.imdecode(r, cv2.IMREAD_COLOR) for r in raw]
    examples = [source[i] for i in range(len(source))]
    decode = pipeline.DecodeTransform(max_side, pipeline.DEFAULT_MAX_BOXES)
    augment = pipeline.TrainTransform(image_size, pipeline.DEFAULT_MAX_BOXES)
    rng = np.random.default_rng(0)
    steps = {
        "jpeg_decode": lambda i: cv2.imdecode(raw[i], cv2.IMREAD_COLOR),
        "jpeg_decode_half_size": lambda i: cv2.imdecode(raw[i], cv2.IMREAD_REDUCED_COLOR_2),
        "cached_copy": lambda i: images[i].copy(),
        "decode_transform": lambda i: decode.map(examples[i]),
        "host_augmentation": lambda i: augment.random_map(examples[i], rng),
    }
    cv2.setNumThreads(1)
    result = {}
    for name, step in steps.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(len(files)):
                step(i)
            best = min(best, (time.perf_counter() - start) / len(files))
        result[name] = 1000 * best
    return result


def measure(
    source,
    image_size: int,
    batch_size: int,
    num_workers: int,
    num_batches: int,
    augment_on: str = "host",
    max_side: int = 512,
) -> float:
    """Images per second after two warm-up batches."""
    dataset = pipeline.train_dataset(
        source,
        image_size=image_size,
        batch_size=batch_size,
        seed=0,
        augment_on=augment_on,
        max_side=max_side,
    )
    iterator = pipeline.make_iterator(dataset, num_workers=num_workers, prefetch=1)
    try:
        for _ in range(2):
            next(iterator)
        start = time.perf_counter()
        for _ in range(num_batches):
            next(iterator)
        return num_batches * batch_size / (time.perf_counter() - start)
    finally:
        iterator.close()  # its threads stop before the JPEG folder is deleted


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        root = FLAGS.voc_root
        if root is None:
            root = os.path.join(tmp, "VOC")
            shapes = SyntheticShapes(FLAGS.num_images, num_classes=8, image_size=(375, 500), seed=0)
            write_voc(root, {FLAGS.split: shapes})
        classes = None if FLAGS.voc_root else SyntheticShapes(1, num_classes=8).class_names
        source = VocSource([(root, FLAGS.split)], **({"class_names": classes} if classes else {}))
        steps_ms = per_image_ms(source, int(FLAGS.sizes[0]), FLAGS.max_side)
        for name, ms in steps_ms.items():
            print(f"{name:>22}: {ms:.2f} ms per image", flush=True)
        rows = []
        print(f"{'place':>7} {'size':>5} {'workers':>8} {'images/s':>10} {'per worker':>11}")
        for place in FLAGS.augment_on:
            sizes = FLAGS.sizes if place == "host" else FLAGS.sizes[:1]  # host part: any size
            for size in map(int, sizes):
                for workers in map(int, FLAGS.workers):
                    rate = measure(source, size, FLAGS.batch_size, workers, FLAGS.batches,
                                   place, FLAGS.max_side)  # fmt: skip
                    per_worker = rate / max(workers, 1)
                    rows.append({"augment_on": place, "size": size, "workers": workers,
                                 "images_per_s": rate, "per_worker": per_worker})  # fmt: skip
                    print(f"{place:>7} {size:>5} {workers:>8} {rate:>10.1f} {per_worker:>11.1f}",
                          flush=True)  # fmt: skip
    images = f"{len(source)} JPEGs from {FLAGS.voc_root or 'synthetic 500x375'}"
    write_report(FLAGS.output, "input_pipeline", rows, images=images, batch_size=FLAGS.batch_size,
                 cores=os.cpu_count(), max_side=FLAGS.max_side, per_image_ms=steps_ms)  # fmt: skip


if __name__ == "__main__":
    flags.DEFINE_string("voc_root", None, "A VOC-style folder (default: synthetic JPEGs).")
    flags.DEFINE_string("split", "trainval", "Its split.")
    flags.DEFINE_integer("num_images", 200, "Synthetic JPEGs to write without --voc_root.")
    flags.DEFINE_list("sizes", ["300", "512"], "Output sizes.")
    flags.DEFINE_list("workers", ["0", "1", "2"], "Worker process counts.")
    flags.DEFINE_list("augment_on", ["host", "device"], "host: full augmentation; device: "
                      "the host's part of device augmentation (decode, fit, pad).")  # fmt: skip
    flags.DEFINE_integer("max_side", 512, "Decoded images fit in max_side x max_side (device).")
    flags.DEFINE_integer("batch_size", 32, "Batch size.")
    flags.DEFINE_integer("batches", 10, "Timed batches per measurement.")
    define_output_flag("input_pipeline")
    app.run(main)
