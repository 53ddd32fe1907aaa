"""Input pipeline throughput: VOC-style JPEGs -> decode -> full SSD training
augmentation -> fixed-shape batches, in images per second.

    python -m ssd_jax.benchmarks.input_pipeline [--workers 0 1 2] [--sizes 300 512]
        [--voc_root DIR --split trainval] [--output input_pipeline.json]

Without ``--voc_root`` it writes a synthetic VOC-style folder of JPEGs of VOC's
typical size (500x375). Workers 0 means in the calling process; with N worker
processes each prepares batches on one thread, so "per worker" is the N-worker
rate divided by N.
"""

import argparse
import json
import os
import platform
import tempfile
import time

from ssd_jax.data import pipeline
from ssd_jax.data.sources import VocSource
from ssd_jax.data.synthetic import SyntheticShapes, write_voc


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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voc_root", default=None)
    parser.add_argument("--split", default="trainval")
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--output", default="input_pipeline.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.voc_root
        if root is None:
            root = os.path.join(tmp, "VOC")
            shapes = SyntheticShapes(args.num_images, num_classes=8, image_size=(375, 500), seed=0)
            write_voc(root, {args.split: shapes})
        classes = None if args.voc_root else SyntheticShapes(1, num_classes=8).class_names
        source = VocSource([(root, args.split)], **({"class_names": classes} if classes else {}))
        rows = []
        print(f"{'size':>5} {'workers':>8} {'images/s':>10} {'per worker':>11}")
        for size in args.sizes:
            for workers in args.workers:
                rate = measure(source, size, args.batch_size, workers, args.batches)
                per_worker = rate / max(workers, 1)
                rows.append(
                    {
                        "size": size,
                        "workers": workers,
                        "images_per_s": rate,
                        "per_worker": per_worker,
                    }
                )
                print(f"{size:>5} {workers:>8} {rate:>10.1f} {per_worker:>11.1f}")
    result = {
        "benchmark": "input_pipeline",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "images": f"{len(source)} JPEGs from {args.voc_root or 'synthetic 500x375'}",
        "batch_size": args.batch_size,
        "results": rows,
    }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
