"""Downloads and prepares the standard datasets with TensorFlow Datasets.

    python -m ssd_jax.data.prepare voc/2007 voc/2012 coco/2017 [--data_dir D] [--manual_dir M]

The counterpart of pytorch_SSD's ``get_dataset.py``. Datasets are written in the
array_record format that :class:`ssd_jax.data.sources.TfdsSource` reads without
TensorFlow. ``--manual_dir`` points TFDS at archives you already downloaded.
Preparing needs TensorFlow: ``pip install -e ".[prepare]"``.
"""

import argparse
import os
import sys

SUPPORTED = ("voc/2007", "voc/2012", "coco/2017")
EXTRA_HINT = 'pip install -e ".[prepare]" (the ssd_jax[prepare] extra, which adds TensorFlow)'


def prepare(names: list[str], data_dir: str, manual_dir: str | None = None) -> None:
    """Downloads and prepares each dataset in ``names`` under ``data_dir``."""
    unknown = [name for name in names if name not in SUPPORTED]
    if unknown:
        raise SystemExit(f"cannot prepare {unknown}: supported datasets are {list(SUPPORTED)}")
    try:
        import tensorflow  # noqa: F401  (TFDS's VOC and COCO builders use it)
    except ImportError:
        raise SystemExit(f"preparing {', '.join(names)} needs TensorFlow: {EXTRA_HINT}") from None
    import tensorflow_datasets as tfds

    for name in names:
        builder = tfds.builder(name, data_dir=data_dir)
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        builder.download_and_prepare(file_format="array_record", download_config=config)
        print(f"prepared {name} in {data_dir}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", help=f"any of {', '.join(SUPPORTED)}")
    parser.add_argument(
        "--data_dir", default=os.path.expanduser("~/tensorflow_datasets"), help="TFDS data dir"
    )
    parser.add_argument("--manual_dir", default=None, help="folder of already downloaded archives")
    args = parser.parse_args(argv)
    prepare(args.datasets, args.data_dir, args.manual_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
