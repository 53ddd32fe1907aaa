"""The quickstart with SSDlite320 on MobileNetV3-Large (full size, 3.4 M
parameters with the halved tail) instead of the 1/8-width SSD300: the same
synthetic shapes, batch and optimizer as ``configs/shapes.py``, but 80 steps
instead of 340, which is what its slower CPU train step (about 7 s per batch of
16 here) fits in the quickstart's ~9 minutes on a 2-core CPU.

    python -m ssd_jax.train --config configs/shapes_ssdlite.py --workdir runs/shapes_ssdlite

See the README's Models section for its measured time and mAP beside the VGG
quickstart's.
"""

from configs import shapes


def get_config():
    config = shapes.get_config()
    config.model.backbone = "mobilenet_v3_large_reduced_tail"
    config.model.architecture = "ssdlite320"
    config.model.width = 1.0
    config.model.batch_norm = True  # MobileNetV3 has BatchNorm anyway
    config.num_steps = 80
    config.optimizer.warmup_steps = 10
    config.optimizer.milestones = (60, 72)
    config.checkpoint_every = config.eval_every = 40
    return config
