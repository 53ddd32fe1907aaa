"""The run directory on disk: where checkpoints live, what they hold, and every
read and write of them.

A run directory (``--workdir``) holds ``checkpoints/<step>/``, written by Orbax,
each step with these items:

=============  ================================================================
``state``      the :data:`~ssd_jax.steps.TrainState` (params, batch_stats,
               opt_state, step); an imported detector's holds its variables only
``meta``       JSON: what using the checkpoint on its own needs (:func:`meta_for`)
``data``       the data iterators' states, one per process (training runs only)
``train_ids``  JSON: the training examples' ids in order (training runs only),
               whose fingerprint the meta holds: a resume on changed data is
               refused naming the change
=============  ================================================================

A training run also holds ``train.lock`` (:mod:`ssd_jax.checkpoint.lock`) while
it runs: one run per directory.

Inference and fine-tuning read only ``params`` and ``batch_stats`` of the
``state`` item, through Orbax's item handlers: no optimizer is needed to build
a template, and neither is Grain (the ``data`` item's handler).
"""

from ssd_jax.checkpoint.layout import (
    CHECKPOINTS,
    DATA,
    META,
    STATE,
    TRAIN_IDS,
    VARIABLE_PARTS,
    CheckpointError,
    DamagedCheckpointError,
    Location,
    finished_steps,
    locate,
    meta_for,
    read_meta,
    resume_differences,
    saved_config,
    train_data_change,
    train_data_fingerprint,
)
from ssd_jax.checkpoint.training import CheckpointWriteError, TrainingCheckpoints
from ssd_jax.checkpoint.variables import (
    backbone_normalization,
    load_backbone,
    restore_variables,
    write_detector,
)

__all__ = [
    "CHECKPOINTS",
    "DATA",
    "META",
    "STATE",
    "TRAIN_IDS",
    "VARIABLE_PARTS",
    "CheckpointError",
    "CheckpointWriteError",
    "DamagedCheckpointError",
    "Location",
    "TrainingCheckpoints",
    "backbone_normalization",
    "finished_steps",
    "load_backbone",
    "locate",
    "meta_for",
    "read_meta",
    "restore_variables",
    "resume_differences",
    "saved_config",
    "train_data_change",
    "train_data_fingerprint",
    "write_detector",
]  # fmt: skip
