"""ImageNet statistics on 0-255 RGB (torchvision's): the default input
normalization of the network and the colour of the zoom-out canvas."""

IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
