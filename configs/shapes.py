"""The quickstart: a small SSD300 (1/8 of the channels, with BatchNorm) trained from
scratch on the synthetic shapes dataset, on a 2-core CPU in about 10 minutes.

    python -m ssd_jax.train --config configs/shapes.py --workdir runs/shapes

Without an ImageNet backbone the trunk starts random: BatchNorm and gradient
clipping keep the first steps stable (plain VGG from scratch has gradient norms
around 1e5 at step 1 because the L2-normalized conv4_3 amplifies them), and
Adam converges much faster than the paper's SGD here.
"""

from ssd_jax.configs import base_config
from ssd_jax.data.synthetic import SHAPE_NAMES


def get_config():
    config = base_config()
    config.model.width = 0.125
    config.model.batch_norm = True
    for split, (num_images, seed) in {"train": (4800, 0), "eval": (200, 1)}.items():
        data = config.data[split]
        data.kind = "synthetic"
        data.num_images = num_images
        data.seed = seed
        data.max_objects = 3
    config.data.class_names = SHAPE_NAMES[:4]
    config.data.num_workers = 1
    config.batch_size = 16
    config.num_steps = 300
    config.optimizer.name = "adam"  # from scratch, Adam gets to loss 7 in 120 steps, SGD in ~350
    config.optimizer.learning_rate = 2e-3  # x 16/32 for batch 16
    config.optimizer.warmup_steps = 50
    config.optimizer.milestones = (220, 270)
    config.optimizer.grad_clip_norm = 10.0
    config.log_every = 10
    config.checkpoint_every = 100
    config.eval_every = 100
    config.eval_batches = 4
    return config
