"""One training run per run directory: ``<workdir>/train.lock``.

The lock is an exclusive ``flock`` on that file, which the kernel releases when
the holding process ends however it ends (``kill -9`` included), so a lock is
never stale: a run that finds it free takes it over, whatever the file still
says. The file names the holder (host, pid, start time) for the message of a
second run. On a file system without ``flock`` (some network file systems) the
run goes on unlocked, with a warning.
"""

import datetime
import errno
import fcntl
import itertools
import json
import logging
import os
import socket
import sys

from ssd_jax.errors import UserError

logger = logging.getLogger(__name__)

LOCK = "train.lock"
_CALLS = itertools.count()  # every process calls lock_run_directory in the same order


class WorkdirInUseError(UserError, RuntimeError):
    """Another live training run holds the run directory."""


def _holder(text: str) -> str:
    """The holder recorded in a lock file, in words."""
    try:
        holder = json.loads(text)
        return (
            f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}: "
            f"{holder['command']}"
        )
    except (ValueError, KeyError, TypeError):
        return "a process that left no record"


class WorkdirLock:
    """Holds ``<workdir>/train.lock`` until :meth:`release` (or the process ends).

    Raises :class:`WorkdirInUseError` naming the holder if another process holds
    it. ``workdir`` is created if needed; :meth:`release` with ``tidy`` removes it
    again if this lock created it and nothing else was written there.
    """

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK)
        self.created = not os.path.isdir(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._held = False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(self._read())
            self.release()
            raise WorkdirInUseError(
                f"{self.workdir} is in use by another training run ({holder}); wait for it "
                "to end or stop it, or give another --workdir"
            ) from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            logger.warning("%s: no file locks here (%s): nothing stops a second run", self.path,
                           error)  # fmt: skip
        previous = self._read()
        if previous.strip():
            logger.info("took over %s from a run that has ended (%s)", self.path, _holder(previous))
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(record).encode(), 0)
        self._held = True

    def _read(self) -> str:
        return os.pread(self._fd, 1 << 16, 0).decode(errors="replace")

    def release(self, tidy: bool = False) -> None:
        """Frees the lock (the file stays, empty: the next run finds no holder to
        report; a run that ends without this leaves its record). With ``tidy``, a
        run directory this lock created is removed if the lock is all it holds."""
        if self._fd is None:
            return
        if self._held:
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if tidy and self.created and os.listdir(self.workdir) == [LOCK]:
            os.remove(self.path)
            os.rmdir(self.workdir)


def lock_run_directory(workdir: str) -> WorkdirLock | None:
    """Process 0 takes the run directory's lock; returns it there, else None. If
    another live run holds it, every process raises :class:`WorkdirInUseError`
    with process 0's message."""
    import jax

    lock, refusal = None, ""
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir)
        except WorkdirInUseError as refused:
            refusal = str(refused)
    if jax.process_count() > 1:  # every process learns whether process 0 got it
        refusal = _from_process_0(f"ssd_jax/lock/{next(_CALLS)}", refusal)
    if refusal:
        raise WorkdirInUseError(refusal)
    return lock


def _from_process_0(key: str, text: str, timeout_s: float = 600) -> str:
    """Process 0's ``text`` on every process, through the key-value store of JAX's
    coordination service: a device collective for it hangs with gloo on jax 0.12,
    and it runs before any is compiled."""
    import jax
    from jax._src import distributed  # the client Orbax uses too; jax has no public one

    client = distributed.global_state.client
    if jax.process_index() == 0:
        client.key_value_set(key, text or "-")
        return text
    answer = client.blocking_key_value_get(key, int(timeout_s * 1000))
    return "" if answer == "-" else answer
