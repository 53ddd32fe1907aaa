"""The quickstart: a small SSD300 (1/8 of the channels) on the synthetic shapes
dataset, on the CPU in about 10 minutes.

    python -m ssd_jax.train --config configs/shapes.py --workdir runs/shapes
"""

from ssd_jax.configs import base_config
from ssd_jax.data.synthetic import SHAPE_NAMES


def get_config():
    config = base_config()
    config.model.width = 0.125
    for split, (num_images, seed) in {"train": (4000, 0), "eval": (200, 1)}.items():
        data = config.data[split]
        data.kind = "synthetic"
        data.num_images = num_images
        data.seed = seed
        data.max_objects = 3
    config.data.class_names = SHAPE_NAMES[:4]
    config.data.num_workers = 1
    config.batch_size = 16
    config.num_steps = 400
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 50
    config.optimizer.milestones = (300, 360)
    config.log_every = 10
    config.checkpoint_every = 100
    config.eval_every = 200
    config.eval_batches = 4
    return config
