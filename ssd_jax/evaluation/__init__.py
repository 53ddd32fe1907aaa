"""Detection metrics: PASCAL VOC (``voc``), COCO (``coco``), and from evaluation
batches to either (``scoring``, whose :data:`~ssd_jax.evaluation.scoring.METRICS`
names them)."""
