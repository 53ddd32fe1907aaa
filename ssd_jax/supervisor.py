"""A process of a multi-process training run, and what its user sees when
another process of the job is lost.

JAX's distributed runtime watches the processes of a job: a process that sends
no heartbeat to the coordination service (run by process 0) for
``heartbeat_timeout_s`` is taken for lost, and every other process, also the
ones blocked in a collective that will never complete, is then ended by the
runtime in native code (SIGABRT, a C++ fatal message and a dump of loaded
modules), at once when process 0 itself is lost. Python cannot intercept that
ending, so ``python -m ssd_jax.train --config.distributed=True`` runs the
training in a child process (:func:`run`) and turns such an ending into one
line naming the lost process and the last complete checkpoint, with exit
status :data:`LOST` (75, EX_TEMPFAIL: restart the job to resume).

Inside the child, an error ends the process at once (:func:`leave_on_error`):
a normal exit would wait at JAX's shutdown barrier for processes that are
still training.
"""

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

from ssd_jax.errors import UserError

CHILD = "SSD_JAX_SUPERVISED"  # set in the training child's environment
LOST = 75  # exit status when another process of the job was lost

# Lines of the runtime's native ending: held back from the relayed stderr.
_ENDING = re.compile(
    rb"^([WEF]\d{4} .*(coordination|preemption_sync|client\.h)|F\d{4} |Fatal Python error"
    rb"|terminate called|libc\+\+abi|\*\*\* Check failure)"
)


def supervised() -> bool:
    """True in the training child of :func:`run`."""
    return os.environ.get(CHILD) == "1"


def _die_with_parent() -> None:
    """Runs in the child before it starts: the kernel kills it when its supervisor
    dies (``kill -9`` of the process the scheduler started takes both)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def lost_processes(report: str) -> list[int] | None:
    """The processes that the runtime's ending ``report`` says were lost; None
    when the report is not the runtime ending this process for another's loss."""
    if not re.search(r"distributed service detected fatal errors|Polled an error from "
                     r"coordination service", report):  # fmt: skip
        return None
    unhealthy = re.search(r"stopped sending heartbeats\):\s*(.*?)\s*The tasks", report, re.S)
    if unhealthy:
        return sorted({int(task) for task in re.findall(r"(?:task:)?(\d+)", unhealthy.group(1))})
    timeouts = re.findall(r"Task (\d+) heartbeat timeout", report)
    if timeouts:
        return sorted({int(task) for task in timeouts})
    if re.search(r"leader task|Failed to send RPC to coordination service", report):
        return [0]  # the coordination service's process: its connection dropped
    return []


def _last_checkpoint(workdir: str) -> str:
    from ssd_jax.checkpoint import CHECKPOINTS, finished_steps

    directory = os.path.join(workdir, CHECKPOINTS)
    steps = finished_steps(directory)
    if not steps:
        return "no complete checkpoint yet: restarting the job starts the run again"
    return (
        f"last complete checkpoint: step {steps[-1]} in {directory}; restart the job to "
        "resume from it"
    )


def _lost_message(lost: list[int], workdir: str, heartbeat_timeout_s: float, saved: str) -> str:
    if lost == [0]:
        who = "lost process 0, which ran the job's coordination service (its connection closed)"
    elif lost:
        names = ", ".join(map(str, lost))
        who = (
            f"lost process {names} (no heartbeat for {heartbeat_timeout_s:g} s, "
            "config.heartbeat_timeout_s)"
        )
    else:
        who = "another process of the job was lost"
    return f"error: {who}, so this process stopped too; {_last_checkpoint(workdir)} ({saved})"


def _save_report(workdir: str, pid: int, report: str) -> str:
    path = os.path.join(workdir, f"runtime_error_{socket.gethostname()}_{pid}.log")
    try:
        with open(path, "w") as file:
            file.write(report)
    except OSError as error:
        return f"the runtime's report could not be saved: {error}"
    return f"the runtime's report: {path}"


def run(argv: list[str], workdir: str, heartbeat_timeout_s: float) -> int:
    """Runs ``python -m ssd_jax.train argv[1:]`` as a child and returns the exit
    status for this process: the child's, or :data:`LOST` with one line on
    stderr when the runtime ended it because another process was lost.

    The child runs in a process group of its own, which is killed once it ends
    (its data-loading workers would outlive an ending by the runtime). SIGTERM
    and SIGINT are passed on to it: JAX's preemption service stops the job after
    an agreed step."""
    command = [sys.executable, "-m", "ssd_jax.train", *argv[1:]]
    child = subprocess.Popen(
        command, env={**os.environ, CHILD: "1"}, stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent, process_group=0,
    )  # fmt: skip
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: child.send_signal(signum))
    held: list[bytes] = []
    relay = threading.Thread(target=_relay, args=(child.stderr, held), daemon=True)
    relay.start()
    status = child.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    relay.join(timeout=5)
    report = b"".join(held).decode(errors="replace")
    lost = lost_processes(report) if status else None
    if lost is not None:
        saved = _save_report(os.path.abspath(workdir), child.pid, report)
        print(_lost_message(lost, os.path.abspath(workdir), heartbeat_timeout_s, saved),
              file=sys.stderr, flush=True)  # fmt: skip
        return LOST
    sys.stderr.write(report)
    return status if status >= 0 else 128 - status


def _relay(stream, held: list[bytes]) -> None:
    """Copies the child's stderr to ours, holding back the runtime's native
    ending (from its first line on) in ``held``."""
    for line in stream:
        if held or _ENDING.match(line):
            held.append(line)
        else:
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()


def _leave(message: str, status: int) -> None:
    """Ends this process at once after ``message``; process 0 waits 2 s first
    (see :func:`leave_on_error`)."""
    import jax

    if message:
        print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    if jax.distributed.is_initialized() and jax.process_index() == 0:
        time.sleep(2.0)
    os._exit(status)


@contextlib.contextmanager
def leave_on_error(heartbeat_timeout_s: float):
    """In a multi-process run's child: an exception ends the process at once
    (``os._exit``), after its message, without JAX's shutdown barrier (which
    would wait for processes still training, until their loss is noticed).

    A :class:`~ssd_jax.errors.UserError` is one line. Process 0 then waits 2 s,
    so that processes failing the same way report it themselves before its
    exit (which ends the others at once). Any other exception may come from a
    collective that another process's loss broke: its traceback waits for
    ``heartbeat_timeout_s`` (plus 5 s), within which the runtime ends the
    process if a process was lost (:func:`run` says so)."""
    try:
        yield
    except UserError as error:
        _leave(f"error: {error}", 1)
    except KeyboardInterrupt:
        _leave("", 130)
    except Exception:
        report = traceback.format_exc()
        time.sleep(heartbeat_timeout_s + 5)
        _leave(report, 1)
