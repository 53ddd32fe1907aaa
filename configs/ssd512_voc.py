"""SSD512 on PASCAL VOC (VOC2007+2012 trainval -> VOC2007 test).

    python -m ssd_jax.train --config configs/ssd512_voc.py --workdir runs/ssd512_voc \
        --config.init.backbone=weights/vgg16_ssd.npz

Paper: 79.8 mAP on VOC2007 test (120k iterations, batch 32, lr 1e-3, x0.1 at 80k
and 100k).
"""

from configs.ssd300_voc import get_config as ssd300_voc_config


def get_config():
    config = ssd300_voc_config()
    config.model.architecture = "ssd512"
    return config
