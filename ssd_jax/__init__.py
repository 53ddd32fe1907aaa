"""ssd_jax: the SSD object detector (Liu et al. 2016) in JAX and Flax NNX.

Conventions used throughout:

* Boxes are normalized to [0, 1]. Ground truth and detections are ``xyxy``;
  default boxes are ``cxcywh``.
* Class 0 is background; object classes are 1..C.
* Box math, encoding, matching, loss and NMS are pure ``jax.numpy`` functions
  written per image, batched with ``jax.vmap``, with static shapes (ground truth
  padded to ``max_boxes`` with a boolean mask) and computed in float32.
* Images are NHWC; they travel to the device as uint8 and are normalized there.
"""

__version__ = "0.1.0"
