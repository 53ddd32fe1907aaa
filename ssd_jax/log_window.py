"""The metrics of the training steps since the last log line, kept on the device
until they are read (the loop's only host synchronizations)."""

import math
import time

import jax
import numpy as np

from ssd_jax.divergence import NonFiniteLossError


class LogWindow:
    """The metrics of the steps since the last log line. They stay on the device
    until :meth:`check_finite` or :meth:`summary` reads them, the loop's only host
    synchronizations (every ``log_every`` steps and before each checkpoint)."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []  # (step, metrics)
        self.truncated = 0  # objects beyond data.max_boxes dropped from these images
        self.unreadable = 0  # images that could not be read (replaced by readable ones)
        self.start = time.time()

    def add(self, step: int, metrics: dict, batch: dict) -> None:
        self.pending.append((step, metrics))
        self.truncated += int(batch["num_truncated"].sum())
        self.unreadable += int(batch["num_unreadable"].sum())

    def check_finite(self, last_checkpoint: int | None) -> None:
        """Raises :class:`NonFiniteLossError` if a step of the window had a NaN or
        infinite loss or gradient norm."""
        for step, record in jax.device_get(self.pending):
            if not (math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])):
                raise NonFiniteLossError(
                    f"loss is {record['loss']} (loc {record['loc']}, conf {record['conf']}, "
                    f"gradient norm {record['grad_norm']}) at step {step}",
                    step,
                    last_checkpoint,
                )

    def summary(self, batch_size: int, last_checkpoint: int | None) -> dict:
        """Means over the window, learning rate, images/s; starts a new window.
        Raises :class:`NonFiniteLossError` as :meth:`check_finite` does."""
        self.check_finite(last_checkpoint)
        history = [record for _, record in jax.device_get(self.pending)]
        summary = {key: float(np.mean([r[key] for r in history])) for key in history[-1]}
        summary["learning_rate"] = float(history[-1]["learning_rate"])
        summary["images_per_s"] = len(history) * batch_size / (time.time() - self.start)
        summary["truncated_objects"] = self.truncated
        summary["unreadable_images"] = self.unreadable
        self.__init__()
        return summary
