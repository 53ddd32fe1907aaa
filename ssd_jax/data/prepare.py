"""Downloads and prepares the standard datasets with TensorFlow Datasets.

    python -m ssd_jax.data.prepare voc/2007 voc/2012 coco/2017 [--data_dir D] [--manual_dir M]

The counterpart of pytorch_SSD's ``get_dataset.py``. Datasets are written in the
array_record format that :class:`ssd_jax.data.sources.TfdsSource` reads without
TensorFlow. ``--manual_dir`` points TFDS at archives you already downloaded.
Preparing needs TensorFlow: ``pip install -e ".[prepare]"``.
"""

import os

from absl import flags

from ssd_jax.errors import UserError

SUPPORTED = ("voc/2007", "voc/2012", "coco/2017")
EXTRA_HINT = 'pip install -e ".[prepare]" (the ssd_jax[prepare] extra, which adds TensorFlow)'
FLAGS = flags.FLAGS


def prepare(names: list[str], data_dir: str, manual_dir: str | None = None) -> None:
    """Downloads and prepares each dataset in ``names`` under ``data_dir``."""
    unknown = [name for name in names if name not in SUPPORTED]
    if not names or unknown:
        raise UserError(f"cannot prepare {unknown or names}: give any of {list(SUPPORTED)}")
    try:
        import tensorflow  # noqa: F401  (TFDS's VOC and COCO builders use it)
    except ImportError:
        raise UserError(f"preparing {', '.join(names)} needs TensorFlow: {EXTRA_HINT}") from None
    import tensorflow_datasets as tfds

    for name in names:
        builder = tfds.builder(name, data_dir=data_dir)
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        builder.download_and_prepare(file_format="array_record", download_config=config)
        print(f"prepared {name} in {data_dir}")


def main(argv: list[str]) -> None:
    prepare(argv[1:], os.path.expanduser(FLAGS.data_dir), FLAGS.manual_dir)


if __name__ == "__main__":
    from ssd_jax import cli

    flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory.")
    flags.DEFINE_string("manual_dir", None, "Folder of already downloaded archives.")
    cli.run(main)
