"""Converts ImageNet weights to an ssd_jax backbone (``.npz``).

    python convert_torch_backbone.py --input vgg16-397923af.pth --output weights/vgg16_ssd
    python -m ssd_jax.train --config configs/ssd300_voc.py --workdir runs/ssd300_voc \\
        --config.init.backbone=weights/vgg16_ssd.npz

Accepts torchvision ``vgg16`` (fc6/fc7 subsampled to the paper's conv6/conv7),
``vgg16_bn`` (for ``--config.model.batch_norm=True``), ssd.pytorch's
``vgg16_reducedfc.pth`` (Caffe-style: BGR minus (104, 117, 123), converted to
RGB), torchvision ``mobilenet_v3_large`` (for ``--config.model.backbone=
mobilenet_v3_large``, e.g. ``configs/ssdlite320_voc.py``) and torchvision
``resnet18`` ... ``resnet152`` (stem and stages 1-3, for ``--config.model.backbone=
resnet50`` etc., e.g. ``configs/ssd300_resnet50_coco.py``), as ``.pth`` (needs
torch), ``.safetensors`` or ``.npz``. The input
normalization the weights expect is stored with them (``normalization/mean``,
``normalization/std``, 0-255 RGB) and training and inference use it.
"""

import os

import numpy as np
from absl import flags

from ssd_jax.importers.backbone import record_arrays, trunk_weights
from ssd_jax.importers.common import read_state_dict

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    converted, info = trunk_weights(read_state_dict(FLAGS.input))
    output = FLAGS.output if FLAGS.output.endswith(".npz") else FLAGS.output + ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.savez(output, **converted, **record_arrays(info))
    print(f"{info['source']}: {len(converted)} arrays -> {output} "
          f"(backbone={info['backbone']}, batch_norm={info['batch_norm']}, mean={info['mean']}, "
          f"std={info['std']})")  # fmt: skip


if __name__ == "__main__":
    from ssd_jax import cli

    flags.DEFINE_string(
        "input", None, "ImageNet VGG16, MobileNetV3 or ResNet weights (.pth/.safetensors/.npz)."
    )
    flags.DEFINE_string("output", None, "Output path (.npz is added).")
    flags.mark_flags_as_required(["input", "output"])
    cli.run(main)
