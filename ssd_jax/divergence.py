"""Non-finite training states: the check, the error naming the last good
checkpoint, and the rollback policy of ``config.on_nonfinite``.

A diverged state is never saved (the trainer checks before every checkpoint), so
the newest checkpoint is always finite and older than the first bad step. With
``on_nonfinite = "rollback"`` the trainer goes back to it, skips the batches up to
the bad step and goes on at a lower learning rate, at most
``rollback.max_times`` times; the rollbacks are kept in the checkpoints' meta,
so a resumed run goes on at the lowered rate.
"""

import jax
import jax.numpy as jnp
import ml_collections

from ssd_jax.errors import UserError


class NonFiniteLossError(UserError, RuntimeError):
    """The loss, gradients or parameters became NaN or infinite at ``step`` (the
    first bad step seen); ``last_checkpoint`` is the newest saved step (all saved
    states are finite), None when there is none yet."""

    def __init__(self, problem: str, step: int, last_checkpoint: int | None):
        where = f"step {last_checkpoint}" if last_checkpoint is not None else "none yet"
        super().__init__(
            f"{problem}; last good checkpoint: {where} (only finite states are saved). "
            "Lower the learning rate, raise optimizer.warmup_steps or set "
            "on_nonfinite='rollback'"
        )
        self.problem, self.step, self.last_checkpoint = problem, step, last_checkpoint


@jax.jit
def all_finite(tree) -> jax.Array:
    """True (a device scalar) when every element of every array of ``tree`` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class Rollbacks:
    """The rollbacks of a run: ``events`` is the list in the run's meta (saved with
    each checkpoint), one ``{"step", "restored", "learning_rate_scale"}`` each."""

    def __init__(self, config: ml_collections.ConfigDict, meta: dict):
        self.enabled = config.on_nonfinite == "rollback"
        self.max_times = config.rollback.max_times
        self.factor = config.rollback.learning_rate_factor
        self.events = meta.setdefault("rollbacks", [])

    @property
    def learning_rate_scale(self) -> float:
        """What the schedule's learning rate is multiplied by now."""
        return self.events[-1]["learning_rate_scale"] if self.events else 1.0

    def record(self, error: NonFiniteLossError) -> int:
        """Notes a rollback for ``error`` and returns the step to go back to;
        re-raises ``error`` when rollback is off, impossible or used up."""
        if not self.enabled:
            raise error
        if error.last_checkpoint is None:
            raise NonFiniteLossError(
                f"{error.problem}; no checkpoint to roll back to yet (lower checkpoint_every)",
                error.step,
                None,
            ) from error
        if len(self.events) >= self.max_times:
            raise NonFiniteLossError(
                f"{error.problem} after {len(self.events)} rollbacks "
                f"(rollback.max_times = {self.max_times})",
                error.step,
                error.last_checkpoint,
            ) from error
        scale = self.learning_rate_scale * self.factor
        self.events.append(
            {"step": error.step, "restored": error.last_checkpoint, "learning_rate_scale": scale}
        )
        return error.last_checkpoint
