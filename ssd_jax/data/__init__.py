"""Detection data: sources (VOC, COCO, YOLO, TFDS, synthetic shapes; the formats
and the source protocol: :mod:`ssd_jax.data.formats`), augmentation and Grain
batching. The example format is documented in :mod:`ssd_jax.data.example`, the
batch format in :mod:`ssd_jax.data.pipeline`."""
