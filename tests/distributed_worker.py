"""One process of the 2-process training test: python tests/distributed_worker.py ID PORT WORKDIR.

Trains configs/tiny.py for 3 steps with the other process, then prints its
summary (``RESULT {...}``: the image ids of every local batch it fed, train and
eval) and writes its final parameters to ``WORKDIR/params_ID.npz``."""

import json
import os
import sys

import jax
import numpy as np

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 2)


def main() -> None:
    process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    # config.distributed=True: setup's jax.distributed.initialize() finds the two
    # processes as a SLURM job (what a cluster's scheduler would set)
    os.environ.update(
        SLURM_JOB_ID="1",
        SLURM_STEP_NODELIST="localhost",
        SLURM_NTASKS="2",
        SLURM_PROCID=str(process_id),
        SLURM_LOCALID=str(process_id),
        JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from configs.tiny import get_config
    from ssd_jax import cli, parallel, train

    cli.print_library_logs()  # the package's lines on stdout, as the train command shows them

    fed = {"train": [], "eval": []}
    global_batch = parallel.global_batch

    def recording_global_batch(local_batch, mesh, keys):
        kind = "eval" if "is_padding" in local_batch else "train"
        fed[kind].append(np.asarray(local_batch["image_id"]).tolist())
        return global_batch(local_batch, mesh, keys)

    parallel.global_batch = recording_global_batch  # what this process feeds, per batch
    config = get_config()
    config.num_steps = 3
    config.distributed = True
    state = train.train_and_evaluate(config, workdir)
    params = jax.tree.leaves_with_path(jax.device_get(state["params"]))
    np.savez(
        os.path.join(workdir, f"params_{process_id}.npz"),
        **{jax.tree_util.keystr(path): leaf for path, leaf in params},
    )
    summary = {
        "process": jax.process_index(),
        "devices": jax.device_count(),
        "step": int(jax.device_get(state["step"])),
        "fed": fed,
    }
    print("RESULT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
