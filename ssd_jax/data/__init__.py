"""Detection data: sources (VOC, COCO, TFDS, synthetic shapes), augmentation and
Grain batching. The example format is documented in :mod:`ssd_jax.data.example`,
the batch format in :mod:`ssd_jax.data.pipeline`."""
