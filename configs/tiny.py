"""A tiny configuration for tests: a 1/16-width SSD300 on a few synthetic images,
a couple of seconds per step on a CPU.

    python -m ssd_jax.train --config configs/tiny.py --workdir /tmp/tiny

It exercises the machinery, not the learning: without BatchNorm or gradient
clipping its 6 steps from scratch diverge (gradient norms ~1e5), so its
detections are noise. For a model that learns on a CPU, see configs/shapes.py.
"""

from ssd_jax.config_schema import base_config
from ssd_jax.data.synthetic import SHAPE_NAMES


def get_config():
    config = base_config()
    config.model.width = 0.0625
    for split, seed in (("train", 0), ("eval", 1)):
        data = config.data[split]
        data.kind = "synthetic"
        data.num_images = 16
        data.seed = seed
        data.image_height = data.image_width = 96
        data.max_objects = 3
    config.data.class_names = SHAPE_NAMES[:3]
    config.data.max_boxes = 8
    config.data.num_workers = 0
    config.batch_size = 8
    config.num_steps = 6
    config.optimizer.warmup_steps = 2
    config.optimizer.milestones = (4,)
    config.log_every = 2
    config.checkpoint_every = 3
    config.eval_every = 6
    config.eval_batches = 1
    return config
