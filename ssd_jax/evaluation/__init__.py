"""Detection metrics: PASCAL VOC (``voc``)."""
