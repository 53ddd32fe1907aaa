"""Stop requests: SIGTERM (a scheduler's preemption notice, ``kill``) ends a
training run after the step in progress, with a checkpoint of that step.

In a multi-process run every process must stop after the same step, whichever
process was signalled and when: JAX's preemption service (started by
``jax.distributed.initialize``) owns SIGTERM there, spreads a notice to every
process and agrees on the step (:func:`jax.experimental.multihost_utils.
reached_preemption_sync_point`). A single process catches SIGTERM itself; a
second SIGTERM stops it at once, as before this module.
"""

import logging
import signal
import threading

import jax

logger = logging.getLogger(__name__)


class StopRequests:
    """Whether the run should stop after the current step (:meth:`reached`)."""

    def __init__(self):
        self.distributed = jax.process_count() > 1
        self.requested = False
        self._previous = None
        if not self.distributed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame) -> None:
        del frame
        if self.requested:  # the second one: stop now
            raise SystemExit(128 + signum)
        self.requested = True
        logger.warning("SIGTERM: stopping after this step (a second SIGTERM stops at once)")

    def reached(self, step: int) -> bool:
        """True once, after the step at which every process stops (call it after
        each step, on every process)."""
        if not self.distributed:
            return self.requested
        from jax.experimental import multihost_utils

        try:
            self.requested = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as error:  # the preemption service is off
            logger.warning("no stop requests: %s", error)
            self.distributed, self.requested = False, False
        return self.requested

    def close(self) -> None:
        """Gives SIGTERM back to the handler it had before."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def exit_on_sigterm() -> None:
    """Outside the training loop (whose :class:`StopRequests` take SIGTERM over
    while it runs), SIGTERM unwinds the stack like Ctrl-C instead of ending the
    process on the spot, so that cleanups run: a checkpoint write completes and
    Grain's worker processes stop. For a single-process command."""

    def stop(signum: int, frame) -> None:
        del frame
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
