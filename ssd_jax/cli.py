"""What every command shares: its way of running (absl, quiet Orbax logs, user
mistakes as one line) and the flags that name a checkpoint.

Commands define their flags under ``if __name__ == "__main__":``, so importing a
command module (tests, notebooks) defines none.
"""

import logging
import os
import re
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


def _check_config_files(argv: list[str] | None = None) -> None:
    """A ``--config`` file that does not load is one line (ml_collections would
    raise only when the configuration is first used, deep in a command, or, with
    overrides, while parsing: then the paths are read from ``argv``)."""
    if argv is not None:
        for k, arg in enumerate(argv):
            name, _, path = arg.lstrip("-").partition("=")
            if arg.startswith("--") and "." not in name and k + 1 < len(argv) and not path:
                path = argv[k + 1]
            is_config = name in flags.FLAGS and hasattr(type(flags.FLAGS[name]), "config_filename")
            if is_config and path and not os.path.isfile(path.split(":")[0]):
                sys.exit(f"error: --{name} {path}: no such file (give a configuration "
                         "file, e.g. configs/ssd300_voc.py)")  # fmt: skip
        return
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        if not flag.present or not hasattr(type(flag), "config_filename"):
            continue
        path = flag.config_filename
        if not os.path.isfile(path.split(":")[0]):
            sys.exit(f"error: --{name} {path}: no such file (give a configuration file, "
                     "e.g. configs/ssd300_voc.py)")  # fmt: skip


def _quiet_orbax() -> None:
    """Leaves Orbax's own log records out (at every level): its failures reach
    the commands as exceptions, which they report in one line, while Orbax logs
    each of them again with tracebacks (of its background threads and asyncio
    tasks, which also log unretrieved exceptions)."""
    outside_orbax = lambda record: f"{os.sep}orbax{os.sep}" not in record.pathname  # noqa: E731
    logging.getLogger("absl").addFilter(outside_orbax)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


class _ConsoleFormat(logging.Formatter):
    """A library record as a command prints it: the message, ``warning: `` or
    ``error: `` before it from WARNING up."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _StdoutHandler(logging.StreamHandler):
    """Writes to the ``sys.stdout`` of the moment (tests capture it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def print_library_logs() -> None:
    """Shows the package's log records from INFO up on stdout, as the commands'
    own lines (the library logs what it does; a command shows it): ``resumed
    from ...``, ``stopped after step ...``, a skipped image's warning."""
    logger = logging.getLogger("ssd_jax")
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(_ConsoleFormat("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not again through absl's handler


def quiet_flags_parser(argv: list[str]) -> list[str]:
    """absl's flag parsing, at WARNING verbosity and without Orbax's log records
    unless ``--verbosity``/``-v`` is given: Orbax logs every checkpoint save and
    load at INFO, and every failure with tracebacks. A configuration file
    that is not there, or a ``--config.*`` override of a key it does not have, is
    one line (with ``--verbosity``, the traceback)."""
    verbose = any(arg.startswith(("--verbosity", "-v", "--v=")) for arg in argv[1:])
    if not verbose:
        argv = [argv[0], "--verbosity=-1", *argv[1:]]
        _quiet_orbax()
    try:
        parsed = app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as error:  # ml_collections: an override's unknown key
        if verbose:
            raise
        innermost = error
        while innermost.__context__ is not None:
            innermost = innermost.__context__
        name = innermost.args[0] if innermost.args else "?"
        hint = re.search(r'Did you mean \\?"([^"\\]+)', str(error))
        sys.exit(f"error: a --config.* override names a key the configuration does not have: "
                 f"{name!r}" + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))  # fmt: skip
    except OSError:  # ml_collections: overrides of a configuration file that did not load
        if verbose:
            raise
        _check_config_files(argv)
        raise
    _check_config_files()
    print_library_logs()
    return parsed


def run(main: Callable[[list[str]], None]) -> None:
    """Runs a command's ``main`` with absl. A :class:`~ssd_jax.errors.UserError`
    ends it with its message on one line and exit status 1, not a traceback."""

    def main_reporting_user_errors(argv: list[str]) -> None:
        try:
            main(argv)
        except UserError as error:
            sys.exit(f"error: {error}")

    app.run(main_reporting_user_errors, flags_parser=quiet_flags_parser)
