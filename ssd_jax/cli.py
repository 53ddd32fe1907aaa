"""What every command shares: its way of running (absl, quiet Orbax logs, user
mistakes as one line) and the flags that name a checkpoint.

Commands define their flags under ``if __name__ == "__main__":``, so importing a
command module (tests, notebooks) defines none.
"""

import os
import sys
from collections.abc import Callable

from absl import app, flags

from ssd_jax.errors import UserError


def define_checkpoint_flags() -> None:
    """``--checkpoint`` (a run directory, its ``checkpoints/`` folder, a convert
    output or one step's folder) and ``--step`` (default: the newest)."""
    flags.DEFINE_string(
        "checkpoint", None, "Run directory, its checkpoints/ folder or a convert output folder."
    )
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.mark_flags_as_required(["checkpoint"])


def prepare_output_file(path: str) -> None:
    """Makes ``path``'s folder and checks that a file can be written there, before
    a command does its work (so that no result is lost at the end); else a
    :class:`UserError` saying why."""
    if os.path.isdir(path):
        raise UserError(f"--output {path} is a folder: give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the folder of --output {path}: {error}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write to the folder of --output {path}")


def quiet_flags_parser(argv: list[str]) -> list[str]:
    """absl's flag parsing, at WARNING verbosity unless ``--verbosity``/``-v`` is
    given: Orbax logs every checkpoint save and load at INFO."""
    if not any(arg.startswith(("--verbosity", "-v", "--v=")) for arg in argv[1:]):
        argv = [argv[0], "--verbosity=-1", *argv[1:]]
    return app.parse_flags_with_usage(argv)


def run(main: Callable[[list[str]], None]) -> None:
    """Runs a command's ``main`` with absl. A :class:`~ssd_jax.errors.UserError`
    ends it with its message on one line and exit status 1, not a traceback."""

    def main_reporting_user_errors(argv: list[str]) -> None:
        try:
            main(argv)
        except UserError as error:
            sys.exit(f"error: {error}")

    app.run(main_reporting_user_errors, flags_parser=quiet_flags_parser)
