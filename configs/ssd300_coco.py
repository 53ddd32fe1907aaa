"""SSD300 on COCO 2017 (train2017 -> val2017).

    python -m ssd_jax.train --config configs/ssd300_coco.py --workdir runs/ssd300_coco \
        --config.init.backbone=weights/vgg16_ssd.npz

Paper (Table 5, trainval35k): 25.1 AP (0.5:0.95), 43.1 AP50. 400k iterations of
batch 32, lr 1e-3 with x0.1 at 280k and 360k.
"""

from ssd_jax.config_schema import base_config


def get_config():
    config = base_config()
    config.data.train.kind = "coco"
    config.data.train.annotation_file = "coco/annotations/instances_train2017.json"
    config.data.train.image_dir = "coco/train2017"
    config.data.eval.kind = "coco"
    config.data.eval.annotation_file = "coco/annotations/instances_val2017.json"
    config.data.eval.image_dir = "coco/val2017"
    config.eval_metric = "coco"
    config.num_steps = 400_000
    config.optimizer.milestones = (280_000, 360_000)
    return config
