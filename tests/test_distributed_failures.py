"""A two-process training job (``python -m ssd_jax.train --config.distributed=True``,
found as a SLURM job on localhost, gloo CPU collectives, 2 devices each) that is
resumed, loses a process or is preempted, and then ends bitwise equal to an
uninterrupted job: parameters, BatchNorm statistics, optimizer state, step and
every process's data-iterator position."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from ssd_jax import checkpoint
from tests.test_distributed import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT_TIMEOUT_S = 10
# saved (and kept) every step, so that kills and stops land anywhere
OVERRIDES = {"num_steps": 8, "checkpoint_every": 1, "keep_checkpoints": 8, "log_every": 1,
             "eval_every": 0, "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S}  # fmt: skip


class Job:
    """Two processes of ``configs/tiny.py`` training in ``workdir``."""

    def __init__(self, workdir, **overrides):
        port = str(free_port())
        # (the persistent compilation cache of conftest.py stays set: train turns it
        # off for multi-process CPU jobs, which it hangs on jax 0.12)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "SLURM_"))}
        env.update(JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu",
                   JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", SLURM_JOB_ID="1",
                   SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}")  # fmt: skip
        settings = {**OVERRIDES, **overrides}
        command = [sys.executable, "-m", "ssd_jax.train", "--config", "configs/tiny.py",
                   "--workdir", str(workdir), "--config.distributed=True",
                   *(f"--config.{k}={v}" for k, v in settings.items())]  # fmt: skip
        self.processes = [
            subprocess.Popen(
                command, cwd=ROOT, env={**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for i in range(2)
        ]  # fmt: skip
        self.lines: list[list[str]] = [[], []]

    def wait_for(self, pattern: str, process: int = 0) -> None:
        """Reads ``process``'s output until a line matches ``pattern``."""
        for line in self.processes[process].stdout:
            self.lines[process].append(line)
            if re.search(pattern, line):
                return
        pytest.fail(f"process {process} ended before {pattern!r}:\n{''.join(self.lines[process])}")

    def finish(self, timeout: float = 300) -> tuple[list[int], list[str]]:
        """Waits for both processes: their exit statuses and whole outputs."""
        outputs = []
        for process, lines in zip(self.processes, self.lines):
            try:
                rest = process.communicate(timeout=timeout)[0]
            finally:
                process.kill()
            outputs.append("".join(lines) + rest)
        return [p.returncode for p in self.processes], outputs


def run_job(workdir, **overrides) -> None:
    codes, outputs = Job(workdir, **overrides).finish()
    assert codes == [0, 0], outputs


def saved(workdir, step: int) -> dict[str, np.ndarray | dict]:
    """Every array of a step's train state (read whole on this process's first
    device) and every process's data-iterator state."""
    folder = epath.Path(workdir) / "checkpoints" / str(step)
    handler = ocp.PyTreeCheckpointHandler()
    tree = handler.metadata(folder / "state").tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    is_leaf = lambda x: hasattr(x, "shape")  # noqa: E731
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          tree, is_leaf=is_leaf)  # fmt: skip
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
    state = handler.restore(folder / "state", args=ocp.args.PyTreeRestore(target, restore_args))
    arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(state)}
    iterators = {p.name: json.loads(p.read_text()) for p in (folder / "data").glob("process_*")}
    assert sorted(iterators) == ["process_0-of-2.json", "process_1-of-2.json"]
    return {**arrays, **iterators}


def assert_bitwise_equal(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        if isinstance(value, dict):
            assert ours[name] == value, name
        else:
            np.testing.assert_array_equal(ours[name], value, err_msg=name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The states of an uninterrupted two-process job of 8 steps, by step."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_job(workdir)
    return lambda step: saved(workdir, step)


@pytest.mark.slow
@pytest.mark.parametrize("lost", [1, 0])
def test_a_lost_process_stops_the_other_with_one_line_and_the_job_resumes_bitwise(
    tmp_path, uninterrupted, lost
):
    """kill -9 of one process mid-training: the other, blocked in a collective,
    stops within the heartbeat timeout (at once when process 0, which runs the
    coordination service, is lost) with one line naming the lost process and the
    last complete checkpoint, and exit status 75. The restarted job resumes from
    that checkpoint and ends bitwise equal to the uninterrupted job (found broken:
    a two-process run could not resume at all, its state placed on the mesh after
    the restore, a cross-host transfer that the CPU and GPU backends refuse)."""
    job = Job(tmp_path)
    job.wait_for(r"^train 3/8 ")
    killed = time.monotonic()
    job.processes[lost].kill()
    codes, outputs = job.finish(timeout=HEARTBEAT_TIMEOUT_S + 60)
    waited = time.monotonic() - killed
    survivor = 1 - lost
    assert codes[survivor] == 75, outputs[survivor]
    # the runtime notices a lost process after the heartbeat timeout; it notices
    # the loss of process 0 at once (its connections close)
    assert waited < (HEARTBEAT_TIMEOUT_S if lost else 0) + 15, outputs[survivor]
    last = checkpoint.finished_steps(str(tmp_path / "checkpoints"))[-1]
    what = (
        "lost process 0, which ran the job's coordination service (its connection closed)"
        if lost == 0
        else f"lost process 1 (no heartbeat for {HEARTBEAT_TIMEOUT_S} s, "
        "config.heartbeat_timeout_s)"
    )
    assert outputs[survivor].splitlines()[-1] == (
        f"error: {what}, so this process stopped too; last complete checkpoint: step {last} "
        f"in {tmp_path / 'checkpoints'}; restart the job to resume from it (the runtime's "
        f"report: {next(tmp_path.glob('runtime_error_*.log'))})"
    )
    assert "Fatal Python error" not in outputs[survivor]  # the native ending is held back
    if lost == 1:  # (a restart after the loss of process 0 is the same)
        run_job(tmp_path, num_steps=5)
        assert_bitwise_equal(saved(tmp_path, 5), uninterrupted(5))


def stopped_step(output: str) -> int:
    found = re.search(r"stopped after step (\d+) on request \(SIGTERM\) with checkpoint step "
                      r"(\d+): rerun the same command to go on", output)  # fmt: skip
    assert found and found.group(1) == found.group(2), output
    return int(found.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("signalled", [(0, 1), (1,)])
def test_sigterm_stops_every_process_after_the_same_saved_step_and_the_job_resumes(
    tmp_path, uninterrupted, signalled
):
    """SIGTERM at random moments to every process (a scheduler's preemption) or
    to one: all finish the step in progress, agree on one step, save it and exit
    0; no process saved a later step; the rerun resumes bitwise."""
    job = Job(tmp_path)
    job.wait_for(r"^train 2/8 ")
    moments = random.Random()
    for process in signalled:
        time.sleep(moments.uniform(0, 1))
        job.processes[process].send_signal(signal.SIGTERM)
    codes, outputs = job.finish()
    assert codes == [0, 0], outputs
    step = stopped_step(outputs[0])
    assert stopped_step(outputs[1]) == step
    assert checkpoint.finished_steps(str(tmp_path / "checkpoints"))[-1] == step
    assert step < 8  # (else nothing stopped the job before its end)
    if signalled == (0, 1):  # (a rerun after a stop that one process got is the same)
        run_job(tmp_path, num_steps=step + 1)
        assert_bitwise_equal(saved(tmp_path, step + 1), uninterrupted(step + 1))


@pytest.mark.slow
def test_a_job_on_a_held_workdir_stops_every_process_at_once(tmp_path):
    """Process 0 finds the workdir held by a live run: every process of the job
    says so and exits 1 before anything is built (none waits for the others)."""
    from tests.test_reliability import HOLD

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        codes, outputs = Job(tmp_path).finish()
    finally:
        holder.kill()
        holder.wait()
    assert codes == [1, 1], outputs
    for output in outputs:  # process 0's message on every process
        last = output.splitlines()[-1]
        assert last.startswith(f"error: {tmp_path} is in use by another training run (host ")
        assert f"pid {holder.pid}, started " in last
    assert os.listdir(tmp_path) == ["train.lock"]
