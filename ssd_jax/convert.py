r"""Imports a trained PyTorch SSD detector as an ssd_jax checkpoint.

    python -m ssd_jax.convert --from NAME --input FILE --output DIR [--class_names a,b,c]

``NAME`` is a key of :data:`ssd_jax.importers.detectors.IMPORTERS`; ``--help``
lists them.

writes ``DIR/checkpoints/0`` in the layout training writes, so ``evaluate``,
``predict``, ``export`` (``--checkpoint DIR``) and fine-tuning
(``--config.init.checkpoint=DIR``) accept it. The weights may be ``.pth`` (needs
torch), ``.safetensors`` or ``.npz``; see :mod:`ssd_jax.importers.detectors`. The
backbone converter is ``convert_torch_backbone.py`` at the repository root.
"""

from absl import flags

from ssd_jax.importers.detectors import IMPORTERS, convert_detector

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    kind = FLAGS["from"].value
    class_names = FLAGS.class_names.split(",") if FLAGS.class_names else None
    location, info = convert_detector(kind, FLAGS.input, FLAGS.output, class_names)
    print(f"{kind} {info['architecture']} on {info.get('backbone', 'vgg16')} "
          f"({info['num_classes']} classes, default boxes {info['default_boxes']}) -> "
          f"{location.directory}")  # fmt: skip


if __name__ == "__main__":
    from ssd_jax import cli

    flags.DEFINE_enum("from", None, list(IMPORTERS), "Which detector the weights come from.")
    flags.DEFINE_string("input", None, "State dict file (.pth, .safetensors or .npz).")
    flags.DEFINE_string("output", None, "Output directory (checkpoints go to OUTPUT/checkpoints).")
    flags.DEFINE_string("class_names", "", "Comma-separated class names (default: by count).")
    flags.mark_flags_as_required(["from", "input", "output"])
    cli.run(main)
