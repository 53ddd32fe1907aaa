"""Progress of long jobs (training, evaluation, predict, dataset preparation): a
tqdm bar on a terminal; plain lines where output goes to a file or a CI log, so
that logs stay readable (no carriage returns, one line per report)."""

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    """``total`` units of work (``unit``: "step", "image", "file") under ``name``.

    On a terminal, a tqdm bar (rate and time left by tqdm) with the latest
    :meth:`update` values after it. Elsewhere, :meth:`update` prints one line
    ``name done/total values ETA`` when ``line_every`` units have passed since
    the last line (and at the end).
    """

    def __init__(
        self,
        total: int,
        name: str,
        unit: str,
        *,
        initial: int = 0,
        line_every: int = 1,
        stream: TextIO | None = None,
    ):
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.total, self.name, self.line_every = total, name, max(1, line_every)
        self.done = self.last_line = self.start_done = initial
        self.start = time.time()
        self.bar = tqdm(
            total=total, initial=initial, desc=name, unit=unit, file=self.stream,
            dynamic_ncols=True, disable=not self.terminal, leave=True,
        )  # fmt: skip

    def update(self, count: int = 1, values: str = "") -> None:
        """``count`` more units done; ``values`` (e.g. ``"loss 3.1 lr 1e-3"``) shown."""
        self.done += count
        if self.terminal:
            if values:
                self.bar.set_postfix_str(values, refresh=False)
            self.bar.update(count)
        elif self.done - self.last_line >= self.line_every or self.done >= self.total:
            self.last_line = self.done
            print(self.line(values), file=self.stream, flush=True)

    def line(self, values: str = "") -> str:
        """``name done/total values ETA m:ss`` (the non-terminal report)."""
        elapsed = time.time() - self.start
        rate = (self.done - self.start_done) / max(elapsed, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        parts = [f"{self.name} {self.done}/{self.total}", values, f"ETA {_minutes(left)}"]
        return " ".join(part for part in parts if part)

    def write(self, message: str) -> None:
        """Prints ``message`` on its own line (above the bar on a terminal)."""
        if self.terminal:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
