"""SSDlite320 with MobileNetV3-Large on PASCAL VOC: trains on VOC2007+2012
trainval, evaluates on VOC2007 test, from ImageNet backbone weights.

    python -m ssd_jax.train --config configs/ssdlite320_voc.py --workdir runs/ssdlite320_voc \
        --config.init.backbone=weights/mobilenet_v3_large_imagenet.npz

The backbone keeps MobileNetV3's full tail (``mobilenet_v3_large``), which
torchvision's ImageNet ``mobilenet_v3_large`` weights fit (``init.backbone``,
converted by ``python convert_torch_backbone.py --input mobilenet_v3_large-*.pth
--output weights/mobilenet_v3_large_imagenet``); the input normalization is theirs (ImageNet mean
and std, the default).

The recipe is lufficc/SSD's ``configs/mobilenet_v3_ssd320_voc0712.yaml``, which
reports 69.5 mAP on VOC2007 test for an ImageNet-initialized MobileNetV3 SSDlite
at 320: its solver is the SSD300 one (120k iterations of batch 32, lr 1e-3, x0.1
at 80k and 100k, momentum 0.9, weight decay 5e-4 on every parameter, torch
SGD's) and its augmentation SSD's (photometric distortion, zoom-out, min-IoU
crop, flip). It is the one published VOC result of this kind of model we found;
torchvision's COCO recipe (cosine over 660 epochs at lr 0.15, crop and flip
only) trains from scratch, where a pretrained backbone needs far fewer steps.
Where we differ: our network is torchvision's SSDlite head and extras (lufficc's
MobileNetV3 and its feature taps are its own), our warmup rises from lr / 500
where lufficc's starts at lr / 3, and detection keeps the paper's settings.
"""

from ssd_jax.config_schema import base_config


def get_config():
    config = base_config()
    config.model.backbone = "mobilenet_v3_large"
    config.model.architecture = "ssdlite320"
    config.data.train.voc_splits = ("VOCdevkit/VOC2007:trainval", "VOCdevkit/VOC2012:trainval")
    config.data.eval.voc_splits = ("VOCdevkit/VOC2007:test",)
    # lufficc's SOLVER defaults and the yaml (MAX_ITER 120000, LR_STEPS 80000 100000,
    # BATCH_SIZE 32, LR 1e-3): the base configuration's schedule
    config.optimizer.weight_decay_on = "all"  # lufficc: torch.optim.SGD(model.parameters(), ...)
    return config
