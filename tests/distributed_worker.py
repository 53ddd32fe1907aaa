"""One process of the 2-process training test: python tests/distributed_worker.py ID PORT WORKDIR."""

import json
import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 2)


def main() -> None:
    process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from configs.tiny import get_config
    from ssd_jax import train

    config = get_config()
    config.num_steps = 3
    state = train.train_and_evaluate(config, workdir)
    params = jax.tree.leaves(jax.device_get(state["params"]))
    summary = {
        "process": jax.process_index(),
        "devices": jax.device_count(),
        "step": int(jax.device_get(state["step"])),
        "checksum": float(sum(abs(p).sum() for p in params)),
    }
    print("RESULT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
