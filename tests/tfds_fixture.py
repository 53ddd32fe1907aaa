"""Tiny prepared TFDS datasets (array_record) written without TensorFlow.

``voc/2007`` is prepared by TFDS's own VOC builder with its download step
replaced by synthetic examples. TFDS's COCO builder needs TensorFlow just to
declare its features (``tf.int64``), so ``coco/2017`` comes from a builder that
declares the same features (coco.py, non-panoptic) with NumPy dtypes; the files
on disk are what the real builder writes.
"""

import cv2
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered
from tensorflow_datasets.object_detection import voc

from ssd_jax.data.classes import COCO_CLASSES


def _jpeg(image_rgb):
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def _yxyx(box):
    x0, y0, x1, y1 = (float(v) for v in box)
    return tfds.features.BBox(ymin=y0, xmin=x0, ymax=y1, xmax=x1)


with registered.skip_registration():

    class Voc(voc.Voc):
        """TFDS's VOC builder fed with ``EXAMPLES`` instead of the download."""

        EXAMPLES = {}

        def _split_generators(self, dl_manager):
            return {split: self._examples(split) for split in self.EXAMPLES}

        def _examples(self, split):
            for index, example in enumerate(self.EXAMPLES[split]):
                labels = [int(label) - 1 for label in example["labels"]]
                objects = [
                    {
                        "label": label,
                        "bbox": _yxyx(box),
                        "pose": "unspecified",
                        "is_truncated": False,
                        "is_difficult": bool(difficult),
                    }
                    for label, box, difficult in zip(labels, example["boxes"], example["difficult"])
                ]
                yield (
                    f"{index:06d}",
                    {
                        "image": _jpeg(example["image"]),
                        "image/filename": f"{index:06d}.jpg",
                        "objects": objects,
                        "labels": sorted(set(labels)),
                        "labels_no_difficult": sorted(set(labels)),
                    },
                )

    class Coco(tfds.core.GeneratorBasedBuilder):
        """Declares coco/2017's features (TFDS coco.py, non-panoptic) without TF."""

        name = "coco"
        VERSION = tfds.core.Version("1.1.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2017")]
        EXAMPLES = {}

        def _info(self):
            objects = tfds.features.Sequence(
                {
                    "id": np.int64,
                    "area": np.int64,
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(
                        names=[n.replace(" ", "_") for n in COCO_CLASSES]
                    ),
                    "is_crowd": np.bool_,
                }
            )
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(encoding_format="jpeg"),
                        "image/filename": tfds.features.Text(),
                        "image/id": np.int64,
                        "objects": objects,
                    }
                )
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in self.EXAMPLES}

        def _generate_examples(self, split):
            for index, example in enumerate(self.EXAMPLES[split]):
                objects = [
                    {
                        "id": k,
                        "area": 1,
                        "label": int(label) - 1,
                        "bbox": _yxyx(box),
                        "is_crowd": bool(crowd),
                    }
                    for k, (label, box, crowd) in enumerate(
                        zip(example["labels"], example["boxes"], example["is_crowd"])
                    )
                ]
                yield (
                    index,
                    {
                        "image": _jpeg(example["image"]),
                        "image/filename": f"{index:06d}.jpg",
                        "image/id": int(example["image_id"]),
                        "objects": objects,
                    },
                )


def prepare(builder_class, config: str, data_dir: str, examples: dict) -> None:
    """Writes ``examples`` ({split: [example, ...]}) as a prepared TFDS dataset."""
    builder_class.EXAMPLES = examples
    builder = builder_class(config=config, data_dir=data_dir)
    builder.download_and_prepare(file_format="array_record")
