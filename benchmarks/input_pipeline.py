"""Input pipeline throughput: VOC-style JPEGs -> decode -> full SSD training
augmentation -> fixed-shape batches, in images per second.

    python -m benchmarks.input_pipeline [--workers 0,1,2] [--sizes 300,512]
        [--voc_root DIR --split trainval] [--output runs/benchmarks/input_pipeline.json]

Without ``--voc_root`` it writes a synthetic VOC-style folder of JPEGs of VOC's
typical size (500x375). Workers 0 means in the calling process; with N worker
processes each prepares batches on one thread, so "per worker" is the N-worker
rate divided by N.
"""

import os
import tempfile
import time

from absl import app, flags

from benchmarks.common import define_output_flag, write_report
from ssd_jax.data import pipeline
from ssd_jax.data.sources import VocSource
from ssd_jax.data.synthetic import SyntheticShapes, write_voc

FLAGS = flags.FLAGS


def measure(source, image_size: int, batch_size: int, num_workers: int, num_batches: int) -> float:
    """Images per second after two warm-up batches."""
    dataset = pipeline.train_dataset(source, image_size=image_size, batch_size=batch_size, seed=0)
    iterator = pipeline.make_iterator(dataset, num_workers=num_workers, prefetch=1)
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return num_batches * batch_size / (time.perf_counter() - start)


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
        rows = []
        print(f"{'size':>5} {'workers':>8} {'images/s':>10} {'per worker':>11}")
        for size in map(int, FLAGS.sizes):
            for workers in map(int, FLAGS.workers):
                rate = measure(source, size, FLAGS.batch_size, workers, FLAGS.batches)
                per_worker = rate / max(workers, 1)
                rows.append(
                    {
                        "size": size,
                        "workers": workers,
                        "images_per_s": rate,
                        "per_worker": per_worker,
                    }
                )
                print(f"{size:>5} {workers:>8} {rate:>10.1f} {per_worker:>11.1f}", flush=True)
    images = f"{len(source)} JPEGs from {FLAGS.voc_root or 'synthetic 500x375'}"
    write_report(FLAGS.output, "input_pipeline", rows, images=images, batch_size=FLAGS.batch_size,
                 cores=os.cpu_count())  # fmt: skip


if __name__ == "__main__":
    flags.DEFINE_string("voc_root", None, "A VOC-style folder (default: synthetic JPEGs).")
    flags.DEFINE_string("split", "trainval", "Its split.")
    flags.DEFINE_integer("num_images", 200, "Synthetic JPEGs to write without --voc_root.")
    flags.DEFINE_list("sizes", ["300", "512"], "Output sizes.")
    flags.DEFINE_list("workers", ["0", "1", "2"], "Worker process counts.")
    flags.DEFINE_integer("batch_size", 32, "Batch size.")
    flags.DEFINE_integer("batches", 10, "Timed batches per measurement.")
    define_output_flag("input_pipeline")
    app.run(main)
