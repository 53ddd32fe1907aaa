"""Your own dataset in a VOC-style folder (Annotations/, JPEGImages/,
ImageSets/Main/<split>.txt) with your own classes; fine-tunes from a VOC model.

    python -m ssd_jax.train --config configs/custom_voc_style.py --workdir runs/my_data \
        --config.data.train.voc_splits="('my_data:train',)" \
        --config.data.eval.voc_splits="('my_data:val',)" \
        --config.data.class_names="('cat','dog')" \
        --config.init.checkpoint=runs/ssd300_voc/checkpoints

Objects of classes not in class_names are skipped (and counted). For a COCO-style
folder set data.train.kind="coco" with annotation_file and image_dir instead; for
a YOLO-format one (data.yaml, images/, labels/) set kind="yolo" with
yolo_data=my_data/data.yaml and yolo_split="train" (data.eval: "val"), and
class_names to the data file's names or a subset.
Expected result: depends on the data; the confidence heads are re-initialized
for the new class count, everything else starts from init.checkpoint.
"""

from ssd_jax.config_schema import base_config


def get_config():
    config = base_config()
    config.data.train.voc_splits = ("my_data:train",)
    config.data.eval.voc_splits = ("my_data:val",)
    config.data.class_names = ("cat", "dog")
    config.num_steps = 20_000
    config.optimizer.milestones = (14_000, 18_000)
    config.checkpoint_every = 2_000
    config.eval_every = 2_000
    return config
