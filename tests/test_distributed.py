import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_the_tiny_config_together(tmp_path):
    """Two JAX processes on localhost (gloo CPU collectives, 2 devices each) train
    3 steps of configs/tiny.py: each reads its own data shard, both end with the
    same parameters, and the checkpoint holds both processes' iterator states."""
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "tests", "distributed_worker.py"),
                str(i),
                port,
                str(tmp_path),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    results = []
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
        results.append(json.loads(output.split("RESULT ")[-1]))
    assert [r["process"] for r in results] == [0, 1]
    # the data-skip report comes from process 0 only
    assert ["train data:" in output for output in outputs] == [True, False]
    assert all(r["devices"] == 4 and r["step"] == 3 for r in results)
    assert results[0]["checksum"] == results[1]["checksum"]
    data_state = sorted(os.listdir(tmp_path / "checkpoints" / "3" / "data"))
    assert [f for f in data_state if f.startswith("process_")] == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]  # one iterator state per process
