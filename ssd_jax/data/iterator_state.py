"""Iterator states that survive a change of ``data.num_workers``.

Grain saves an in-process iterator's position as ``{"next_index": n}`` and that of
``W`` worker processes as the state of a round-robin interleave over ``W``
per-worker iterators (worker ``i`` makes batches ``i, i + W, i + 2W, ...``). The
two formats do not read each other, so a run resumed with another worker count
(another machine, fewer cores) would fail to restore. :class:`AnyWorkerCount`
reads either: both encode "n batches handed out", and that number is all a
resume needs.
"""

from typing import Any

import grain

_INTERLEAVE_KEYS = {
    "next_index_in_cycle",
    "next_index_in_datasets",
    "iterators_in_use_indices",
    "iterators_in_use_states",
    "exhausted",
    "future_states",
}


class IteratorStateError(ValueError):
    """A saved data-iterator state this Grain version does not know how to read."""


def num_workers_of(state: dict[str, Any]) -> int:
    """The number of worker processes whose iterator saved ``state`` (0: in-process)."""
    if "next_index" in state:
        return 0
    if set(state) != _INTERLEAVE_KEYS:
        raise IteratorStateError(f"unknown data-iterator state (keys {sorted(state)})")
    return len(state["iterators_in_use_states"])


def batches_handed_out(state: dict[str, Any]) -> int:
    """How many batches the iterator that saved ``state`` had handed out (batches
    its workers prepared ahead are not counted: they are made again)."""
    if num_workers_of(state) == 0:
        return int(state["next_index"])
    if state["future_states"] or any(state["exhausted"]):
        raise IteratorStateError("a data-iterator state of a finished or uneven interleave")
    return sum(int(worker["next_index"]) for worker in state["iterators_in_use_states"])


def state_after(num_batches: int, num_workers: int) -> dict[str, Any]:
    """The state of an iterator over ``num_workers`` worker processes (0: in-process)
    that has handed out ``num_batches`` batches."""
    if num_workers == 0:
        return {"next_index": num_batches}
    return {
        "next_index_in_cycle": num_batches % num_workers,
        "next_index_in_datasets": num_workers,
        "iterators_in_use_indices": list(range(num_workers)),
        "iterators_in_use_states": [
            {"next_index": len(range(worker, num_batches, num_workers))}
            for worker in range(num_workers)
        ],
        "exhausted": [0] * num_workers,
        "future_states": {},
    }


class AnyWorkerCount(grain.DatasetIterator):
    """``iterator`` (over ``num_workers`` worker processes, 0: in-process), whose
    :meth:`set_state` also takes a state saved with another worker count."""

    def __init__(self, iterator: grain.DatasetIterator, num_workers: int):
        super().__init__(iterator)
        self.num_workers = num_workers

    def __next__(self):
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        if num_workers_of(state) != self.num_workers:
            state = state_after(batches_handed_out(state), self.num_workers)
        self._parent.set_state(state)
