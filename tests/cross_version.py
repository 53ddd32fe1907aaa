"""Both halves of the cross-version checkpoint test (tests/test_checkpoint.py): one
interpreter trains and saves, the other restores. Run by the other interpreter as

    python tests/cross_version.py WRITE_WORKDIR OUT.npz READ_WORKDIR...

which trains ``configs/tiny.py`` for 2 steps into WRITE_WORKDIR, then saves the
restored parameters and raw network outputs of every workdir (WRITE_WORKDIR
first) in OUT.npz."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_tiny(workdir: str) -> None:
    sys.path.insert(0, ROOT)
    from configs.tiny import get_config
    from ssd_jax import train

    config = get_config()
    config.update({"num_steps": 2, "checkpoint_every": 2, "log_every": 2, "eval_every": 0})
    train.train_and_evaluate(config, workdir)


def restored(workdir: str) -> dict:
    """The parameters (flattened, float32) of the workdir's last checkpoint and the
    network's raw outputs ``loc`` (A, 4) and ``conf`` (A, C + 1) on a fixed image."""
    import jax
    import numpy as np
    from flax import nnx

    from ssd_jax import checkpoint, inference
    from ssd_jax.data.synthetic import SyntheticShapes
    from ssd_jax.steps import normalize_images

    location = checkpoint.locate(workdir)
    config = checkpoint.saved_config(checkpoint.read_meta(location))
    graphdef, variables = inference.restore_network(location, config)
    model = nnx.merge(graphdef, variables["params"], variables["batch_stats"])
    model.eval()
    image = SyntheticShapes(1, 3, image_size=(300, 300), seed=7)[0]["image"][None]
    loc, conf = model(normalize_images(image, config.data.mean, config.data.std, np.float32))
    leaves = jax.tree.leaves({part: variables[part] for part in checkpoint.VARIABLE_PARTS})
    return {
        "variables": np.concatenate([np.asarray(x, np.float32).ravel() for x in leaves]),
        "loc": np.asarray(loc[0]),
        "conf": np.asarray(conf[0]),
    }


def main() -> None:
    import numpy as np

    write_workdir, output, *read_workdirs = sys.argv[1:]
    train_tiny(write_workdir)
    arrays = {}
    for k, workdir in enumerate([write_workdir, *read_workdirs]):
        arrays.update({f"{k}/{name}": value for name, value in restored(workdir).items()})
    np.savez(output, **arrays)


if __name__ == "__main__":
    main()
