"""SSD300 on PASCAL VOC: trains on VOC2007+2012 trainval, evaluates on VOC2007 test.

    python -m ssd_jax.train --config configs/ssd300_voc.py --workdir runs/ssd300_voc \
        --config.data.train.voc_splits="('VOC/VOC2007:trainval','VOC/VOC2012:trainval')" \
        --config.data.eval.voc_splits="('VOCdevkit/VOC2007:test',)" \
        --config.init.backbone=weights/vgg16_ssd.npz

Paper (Liu et al. 2016, Table 1 / 4): 77.2 mAP on VOC2007 test with the
ImageNet VGG16 backbone and this schedule (120k iterations of batch 32, lr 1e-3
with x0.1 at 80k and 100k).
"""

from ssd_jax.config_schema import base_config


def get_config():
    config = base_config()
    config.data.train.voc_splits = ("VOCdevkit/VOC2007:trainval", "VOCdevkit/VOC2012:trainval")
    config.data.eval.voc_splits = ("VOCdevkit/VOC2007:test",)
    return config
