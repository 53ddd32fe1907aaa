"""Imports PyTorch weights: ImageNet VGG16 backbones (:mod:`.backbone`) and the
trained SSD detectors of the PyTorch ports (:mod:`.detectors`); :mod:`.common`
reads state dicts and converts layers."""
