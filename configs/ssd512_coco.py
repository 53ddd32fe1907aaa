"""SSD512 on COCO 2017 (train2017 -> val2017).

    python -m ssd_jax.train --config configs/ssd512_coco.py --workdir runs/ssd512_coco \
        --config.init.backbone=weights/vgg16_ssd.npz

Paper (Table 5): 28.8 AP (0.5:0.95), 48.5 AP50.
"""

from configs.ssd300_coco import get_config as ssd300_coco_config


def get_config():
    config = ssd300_coco_config()
    config.model.architecture = "ssd512"
    return config
