import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssd_jax import build, checkpoint, parallel, train
from ssd_jax.config_schema import load_config_file
from ssd_jax.data import pipeline
from ssd_jax.metrics_writer import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flat_params(state) -> dict[str, np.ndarray]:
    params = jax.tree.leaves_with_path(jax.device_get(state["params"]))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in params}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def single_process_run(workdir):
    """configs/tiny.py set up in this process (8 devices), fed the global batches
    of a 2-process run: process 0's shard batch, then process 1's."""
    config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    config.num_steps = 3
    run = train.setup(config, str(workdir))
    source = build.source(run.config.data.train, run.config.data.class_names)
    # the datasets the two processes build
    shards = [pipeline.make_iterator(build.train_dataset(run.config, source, i, 2)) for i in (0, 1)]
    return run, shards


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_same_global_batches(tmp_path):
    """Two JAX processes on localhost (gloo CPU collectives, 2 devices each) train
    3 steps of configs/tiny.py. Each feeds its own shard (disjoint image ids), both
    write their iterator state, and the result equals one process (8 devices)
    training on the same global batches: the parameters to float32 summation
    order, the evaluation's loss and mAP over the same images."""
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "tests", "distributed_worker.py"),
                str(i),
                port,
                str(tmp_path / "two"),
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
    data_state = sorted(os.listdir(tmp_path / "two" / "checkpoints" / "3" / "data"))
    assert [f for f in data_state if f.startswith("process_")] == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]  # one iterator state per process
    fed = [r["fed"] for r in results]
    for kind in ("train", "eval"):  # each batch: 4 images per process, none shared
        for ids_0, ids_1 in zip(fed[0][kind], fed[1][kind]):
            assert len(ids_0) == len(ids_1) == 4 and not set(ids_0) & set(ids_1)

    run, shards = single_process_run(tmp_path / "one")
    try:
        initial = flat_params(run.state)
        for step in range(3):
            local = [next(shard) for shard in shards]
            assert [batch["image_id"].tolist() for batch in local] == [
                fed[0]["train"][step],
                fed[1]["train"][step],
            ]
            batch = {
                key: np.concatenate([b[key] for b in local])
                for key in train.TRAIN_KEYS
                if key in local[0]
            }
            run.state, _ = run.train_step(
                run.state, parallel.global_batch(batch, run.mesh, list(batch)), np.float32(1)
            )
        single = flat_params(run.state)
        variables = {part: run.state[part] for part in checkpoint.VARIABLE_PARTS}
        evaluated = run.evaluator(variables).metrics
        eval_ids = [batch["image_id"].tolist() for batch in run.evaluator.batches()]
    finally:
        run.close()
    for process in (0, 1):
        two = dict(np.load(tmp_path / "two" / f"params_{process}.npz"))
        assert two.keys() == single.keys()
        for name, value in single.items():
            # float32: the gradient mean sums 8 images in another order (~1e-6 of
            # the update); parameters round at ~6e-8 of their size
            update = np.abs(value - initial[name]).max()
            bound = 1e-4 * update + 4 * np.finfo(np.float32).eps * np.abs(value).max()
            assert np.abs(two[name] - value).max() <= bound, name
    assert sorted(fed[0]["eval"][0] + fed[1]["eval"][0]) == sorted(eval_ids[0])
    record = read_metrics(str(tmp_path / "two" / "metrics.jsonl"))[-1]
    assert record["eval/loss"] == pytest.approx(evaluated["loss"], rel=1e-5)
    assert record["eval/map"] == pytest.approx(evaluated["map"], abs=1e-6)
