"""A long run's run directory in trouble: a checkpoint write that fails (a full
disk), training data that changed between two runs, and two runs started on one
run directory (the README's "Failure modes")."""

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from etils import epath

from ssd_jax import checkpoint, config_schema, supervisor, train
from ssd_jax.checkpoint.lock import LOCK, WorkdirInUseError
from ssd_jax.data.synthetic import SyntheticShapes, write_voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
    return config_schema.load_config_file(os.path.join(ROOT, "configs", "tiny.py"))


@contextlib.contextmanager
def disk_full_at_step(folder, step: int, monkeypatch):
    """A folder on a 16 MB tmpfs (where mounting is allowed: root) that another
    program fills right before checkpoint ``step`` is written, so that its writes
    fail with ENOSPC. Elsewhere, Python's write layer fails with ENOSPC for the
    files of that step (its data-iterator state and metadata)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0  # fmt: skip
    save = checkpoint.TrainingCheckpoints.save
    write_text = epath.Path.write_text

    def fill_first(self, at, *args):
        if at == step and mounted:
            self.wait()  # the step before is on disk
            free = shutil.disk_usage(folder).free
            with open(folder / "filler", "wb") as file:
                file.truncate(0)
                file.write(b"\0" * (free - 100_000))
        return save(self, at, *args)

    def full(path, *args, **kwargs):
        if f"/{step}.orbax-checkpoint-tmp" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.TrainingCheckpoints, "save", fill_first)
    if not mounted:
        monkeypatch.setattr(epath.Path, "write_text", full)
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=True)


# Orbax abandons the other writes of the failed step; Python reports them when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_failed_checkpoint_write_stops_the_run_removes_the_step_and_keeps_older_ones(
    tmp_path, monkeypatch
):
    """The disk fills up before the third checkpoint of configs/tiny.py. The run
    stops with one line (what failed, how much space a checkpoint takes and is
    left, the last good step); nothing of the failed step is left to be taken for
    a checkpoint, the rotation (keep 2) did not delete the oldest, and a resume
    (once there is space) goes on from step 2."""
    config = tiny_config()
    config.num_steps, config.checkpoint_every, config.keep_checkpoints = 5, 1, 2
    config.log_every, config.eval_every = 1, 0
    with disk_full_at_step(tmp_path / "disk", 3, monkeypatch) as disk:
        with pytest.raises(checkpoint.CheckpointWriteError) as error:
            train.train_and_evaluate(config, str(disk / "run"))
        directory = disk / "run" / "checkpoints"
        assert checkpoint.finished_steps(str(directory)) == [1, 2]
        assert sorted(os.listdir(directory)) == ["1", "2"]  # no unfinished step 3
        shutil.copytree(disk / "run", tmp_path / "freed")
    files = (tmp_path / "freed/checkpoints/2").rglob("*")
    size = sum(path.stat().st_size for path in files if path.is_file())
    assert str(error.value) == (
        f"cannot write checkpoint step 3 to {directory} (No space left on device, errno 28); "
        f"a checkpoint of this run takes about {size / 1e6:.1f} MB, "
        + str(error.value).split(" MB, ")[1].split(" MB free")[0]
        + " MB free there. Nothing of step 3 is kept; the last complete checkpoint is step 2 "
        "(older ones kept). Free space, then rerun the same command to resume"
    )
    monkeypatch.undo()
    run = train.setup(config, str(tmp_path / "freed"))
    run.close()
    assert int(run.state["step"]) == 2


def write_shapes_voc(root, count, split="trainval", seed=4):
    shapes = SyntheticShapes(count, num_classes=3, image_size=(60, 80), seed=seed)
    write_voc(str(root), {split: shapes})
    return shapes.class_names


def voc_config(root, class_names):
    config = tiny_config()
    for split in ("train", "eval"):
        config.data[split] = config_schema.data_config("voc")
        config.data[split].voc_splits = (f"{root}:trainval",)
    config.data.class_names, config.data.augment = class_names, False
    config.num_steps, config.checkpoint_every, config.eval_every = 2, 2, 0
    return config


def test_a_resume_on_changed_training_data_is_refused_naming_the_change(tmp_path, capsys):
    """The VOC folder is re-synced between two runs: two images gone, one new.
    The resume is refused before anything is compiled, naming counts and ids;
    with data.on_train_change=restart_epoch it goes on from the checkpoint with a
    new pass over the new list, recorded in the meta."""
    voc = tmp_path / "voc"
    class_names = write_shapes_voc(voc, 12)
    config = voc_config(voc, class_names)
    train.train_and_evaluate(config, str(tmp_path / "run"))
    write_shapes_voc(voc, 1, split="new", seed=5)
    listed = voc / "ImageSets" / "Main" / "trainval.txt"
    names = listed.read_text().split()
    listed.write_text("\n".join([*names[:3], *names[5:], "new_000000"]) + "\n")
    saved = json.loads((tmp_path / "run/checkpoints/2/meta/metadata").read_text())

    config.num_steps = 4
    with pytest.raises(checkpoint.CheckpointError) as error:
        train.setup(config, str(tmp_path / "run"))
    assert str(error.value) == (
        f"{tmp_path / 'run'} step 2 was trained on another list of training images (saved -> "
        "now: 12 -> 11 images, 1 added ('voc/new_000000'), 2 removed ('voc/trainval_000003', "
        "'voc/trainval_000004')): a resume would read other images at the data iterator's "
        "saved position. Put the data back as it was, or go on from step 2 with a new pass "
        "over the new list: --config.data.on_train_change=restart_epoch"
    )
    assert checkpoint.finished_steps(str(tmp_path / "run" / "checkpoints")) == [2]
    assert json.loads((tmp_path / "run/checkpoints/2/meta/metadata").read_text()) == saved

    config.data.on_train_change = "restart_epoch"
    train.train_and_evaluate(config, str(tmp_path / "run"))
    assert "the training data changed (12 -> 11 images, 1 added" in capsys.readouterr().out
    meta = checkpoint.read_meta(checkpoint.locate(str(tmp_path / "run")))
    assert meta["train_data_changes"] == [{"step": 2, "change": (
        "12 -> 11 images, 1 added ('voc/new_000000'), 2 removed ('voc/trainval_000003', "
        "'voc/trainval_000004')")}]  # fmt: skip
    assert meta["train_data"] == checkpoint.train_data_fingerprint(
        [f"voc/{name}" for name in (*names[:3], *names[5:], "new_000000")]
    )
    position = json.loads((tmp_path / "run/checkpoints/4/data/process_0-of-1.json").read_text())
    assert position["next_index"] == 2  # a new pass: two batches since step 2


def test_train_data_changes_are_said_in_counts_and_first_ids():
    change = checkpoint.train_data_change
    assert change(["a", "b"], ["b", "a"]) == "2 -> 2 images, the same ids in another order"
    assert change(list("abcde"), list("ab")) == "5 -> 2 images, 3 removed ('c', 'd', 'e')"
    assert change(list("a"), list("abcde")) == ("1 -> 5 images, 4 added ('b', 'c', 'd' and 1 more)")
    one, other = (checkpoint.train_data_fingerprint(ids) for ids in (["a", "b"], ["b", "a"]))
    assert one["count"] == other["count"] == 2 and one["sha256"] != other["sha256"]


HOLD = """
import sys, time
from ssd_jax.checkpoint.lock import WorkdirLock
lock = WorkdirLock(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_on_a_held_workdir_is_refused_and_a_killed_holder_leaves_no_stale_lock(
    tmp_path, capsys
):
    """A live run holds the workdir: a second training command refuses at once
    naming its host and pid, before anything is built (exit status 1), and so does
    a second run in one process. Once the holder is killed (kill -9), the lock is
    free: the next run takes it over and says so; a run that ends leaves no
    record, so the next one has nothing to report."""
    workdir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        expected = (
            f"{workdir} is in use by another training run (host {socket.gethostname()}, "
            f"pid {holder.pid}, started "
        )
        command = [sys.executable, "-m", "ssd_jax.train", "--config", "configs/tiny.py",
                   "--workdir", str(workdir)]  # fmt: skip
        second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1
        assert second.stderr.strip().startswith(f"error: {expected}"), second.stderr
        assert second.stderr.strip().endswith(
            "wait for it to end or stop it, or give another --workdir"
        )
        assert os.listdir(workdir) == [LOCK]  # nothing built, nothing written
        with pytest.raises(WorkdirInUseError, match=f"pid {holder.pid}, started "):
            train.setup(tiny_config(), str(workdir))
    finally:
        holder.kill()
        holder.wait()
    capsys.readouterr()
    run = train.setup(tiny_config(), str(workdir))  # taken over
    try:
        assert f"from a run that has ended (host {socket.gethostname()}, pid {holder.pid}, " in (
            capsys.readouterr().out
        )
        assert json.loads((workdir / LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirInUseError, match=f"pid {os.getpid()}, started "):
            train.setup(tiny_config(), str(workdir))  # two runs in one process
        assert json.loads((workdir / LOCK).read_text())["pid"] == os.getpid()  # still named
    finally:
        run.close()
    assert (workdir / LOCK).read_text() == ""  # ended: no holder on record
    train.setup(tiny_config(), str(workdir)).close()  # closed: free again
    assert "took over" not in capsys.readouterr().out


def test_a_failed_setup_leaves_no_run_directory_it_created(tmp_path):
    config = tiny_config()
    config.data.eval.num_images = 0  # fails after the lock is taken
    with pytest.raises(Exception, match="the eval split holds no image"):
        train.setup(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(Exception, match="the eval split holds no image"):
        train.setup(config, str(tmp_path / "kept"))
    assert os.listdir(tmp_path / "kept") == [LOCK]  # a folder it found stays


@pytest.mark.slow
def test_data_workers_end_with_a_trainer_killed_with_kill_9(tmp_path):
    """Grain's worker processes outlived a trainer killed with kill -9 (or ended
    by JAX's runtime when another process of a job is lost), blocked on a full
    buffer; they now end within seconds of their parent."""
    import psutil

    command = [sys.executable, "-m", "ssd_jax.train", "--config", "configs/tiny.py",
               "--config.data.num_workers=1", "--config.num_steps=100000",
               "--config.log_every=1", "--config.eval_every=0",
               "--config.checkpoint_every=100000", "--workdir", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        metrics = tmp_path / "metrics.jsonl"
        while not (metrics.exists() and metrics.stat().st_size):  # training steps are running
            assert process.poll() is None
            time.sleep(0.5)
        children = psutil.Process(process.pid).children(recursive=True)
        assert any("spawn_main" in " ".join(child.cmdline()) for child in children)
    finally:
        process.kill()
        process.wait()
    _, alive = psutil.wait_procs(children, timeout=15)  # they look every second
    assert not alive, [child.cmdline() for child in alive]


def test_the_runtimes_ending_names_the_lost_process():
    """What JAX's runtime prints when it ends a process for another's loss (as
    jaxlib 0.10 and 0.12 word it), and what it prints otherwise."""
    unhealthy = (
        "E1207 coordination_service_agent.cc:289] Polled an error from coordination service "
        "(this can be an error from this or another task).\nF1207 client.h:80] Terminating "
        "process because the JAX distributed service detected fatal errors. absl::Status: "
        "UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n2\n3\n"
        "The tasks have crashed."
    )
    assert supervisor.lost_processes(unhealthy) == [2, 3]
    leader = (
        "F1207 client.h:80] Terminating process because the JAX distributed service detected "
        "fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. "
        "Either the leader task was preempted/died/restarted unexpectedly"
    )
    assert supervisor.lost_processes(leader) == [0]
    assert supervisor.lost_processes("Fatal Python error: Segmentation fault") is None
