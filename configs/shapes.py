"""The quickstart: a small SSD300 (1/8 of the channels, with BatchNorm) trained from
scratch on the synthetic shapes dataset, on a 2-core CPU in about 9 minutes.

    python -m ssd_jax.train --config configs/shapes.py --workdir runs/shapes

Expected: VOC07 mAP about 0.84 on the 200 images of the eval split (measured
0.844; see the README). The evaluations during training score the first 64 eval
images only (``eval_batches``). What makes ten-odd minutes enough:

- Without an ImageNet backbone the trunk starts random: BatchNorm and gradient
  clipping keep the first steps stable (plain VGG from scratch has gradient norms
  around 1e5 at step 1 because the L2-normalized conv4_3 amplifies them).
- Adam at 3e-3 (for batch 16): at 1e-3 the same run reached mAP 0.37, and SGD
  needs about three times as many steps to reach the same loss.
- Shapes of 10-70 % of the image, every image new (5440 in 340 steps), so no
  augmentation is needed; SSD300's smallest default boxes are 10 % of the image.
- Up to 10 shapes per training image (the eval split keeps up to 3): each step
  sees ~3x the objects for the same compute (3 -> 6 -> 8 shapes: mAP 0.665 ->
  0.737 -> 0.808; with the late decay below, 8 -> 10 shapes: 0.831 -> 0.844).
- The rate drops late (x0.1 at steps 300 and 330): the model is still improving
  fast at step 270 (decay at 270/320: 0.737, at 300/330: 0.776 with 6 shapes).
"""

from ssd_jax.config_schema import base_config
from ssd_jax.data.synthetic import SHAPE_NAMES


def get_config():
    config = base_config()
    config.model.width = 0.125
    config.model.batch_norm = True
    for split, (num_images, seed) in {"train": (5440, 0), "eval": (200, 1)}.items():
        data = config.data[split]
        data.kind = "synthetic"
        data.num_images = num_images
        data.seed = seed
        data.max_objects = 3
        data.min_size, data.max_size = 0.1, 0.7
    config.data.train.max_objects = 10  # more shapes per training image: more signal per step
    config.data.class_names = SHAPE_NAMES[:4]
    config.data.augment = False  # 5440 distinct images, each seen once
    config.data.num_workers = 1
    config.batch_size = 16
    config.num_steps = 340
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 6e-3  # x 16/32 for batch 16: 3e-3 (4e-3 learns slower)
    config.optimizer.warmup_steps = 50
    config.optimizer.milestones = (300, 330)
    config.optimizer.grad_clip_norm = 10.0
    config.log_every = 10
    config.checkpoint_every = 100
    config.eval_every = 100
    config.eval_batches = 4
    return config
