"""SSDlite320 with MobileNetV3-Large on COCO 2017 (train2017 -> val2017):
torchvision's reference recipe for ``ssdlite320_mobilenet_v3_large``.

    python -m ssd_jax.train --config configs/ssdlite320_coco.py --workdir runs/ssdlite320_coco

torchvision (references/detection/README.md) trained its released model with
``train.py --dataset coco --model ssdlite320_mobilenet_v3_large --epochs 660
--aspect-ratio-group-factor 3 --lr-scheduler cosineannealinglr --lr 0.15
--batch-size 24 --weight-decay 0.00004 --data-augmentation ssdlite`` on 8 GPUs
and reports 21.3 box AP on val2017. It builds the model without ImageNet
weights, hence with MobileNetV3's halved tail (``reduce_tail`` when no backbone
weights are given), and trains from scratch.
"""

from configs.ssd300_coco import get_config as ssd300_coco_config
from ssd_jax.config_schema import base_config

# torchvision's train2017 drops images without usable annotations: 117,266 images.
# Its DistributedSampler gives each of 8 GPUs ceil(117266 / 8) = 14,659, in
# batches of 24: 610 iterations per epoch of the global batch of 192.
STEPS_PER_EPOCH = 610
EPOCHS = 660


def get_config():
    config = base_config()
    config.model.backbone = "mobilenet_v3_large_reduced_tail"
    config.model.architecture = "ssdlite320"
    coco = ssd300_coco_config()  # the same COCO 2017 folders and metric
    config.data.train, config.data.eval = coco.data.train, coco.data.eval
    config.eval_metric = coco.eval_metric
    # torchvision's 0.5 / 0.5 normalization of [0, 1] images, in 0-255 RGB
    config.data.mean = config.data.std = (127.5, 127.5, 127.5)
    # --data-augmentation ssdlite: RandomIoUCrop and a horizontal flip only
    config.data.photometric = False
    config.data.zoom_out = False

    config.batch_size = 192  # 8 GPUs x 24
    config.num_steps = EPOCHS * STEPS_PER_EPOCH  # 402,600
    config.optimizer.learning_rate = 0.15  # for the batch of 192
    config.optimizer.base_batch_size = 192
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 4e-5
    config.optimizer.weight_decay_on = "all"  # torch SGD's weight_decay: no --norm-weight-decay
    # CosineAnnealingLR(T_max=660 epochs), stepped per epoch there, per step here
    config.optimizer.schedule = "cosine"
    config.optimizer.milestones = ()  # unused by the cosine schedule
    # torchvision warms up over min(1000, iterations of the first epoch - 1) = 609
    # iterations, from lr / 1000; ours rises from lr / 609 (optim.cosine_schedule)
    config.optimizer.warmup_steps = STEPS_PER_EPOCH - 1

    # torchvision's ssdlite320_mobilenet_v3_large post-processing
    config.detection.score_threshold = 0.001
    config.detection.nms_iou_threshold = 0.55
    config.detection.top_k_per_class = 300  # topk_candidates, per class
    config.detection.max_detections = 300  # detections_per_img
    config.detection.clip_before_nms = True  # boxes clipped to the image, then NMS
    config.checkpoint_every = config.eval_every = 10 * STEPS_PER_EPOCH
    return config
