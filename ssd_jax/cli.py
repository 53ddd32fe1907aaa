"""Shared command-line plumbing of the entry points."""

from absl import app


def quiet_flags_parser(argv: list[str]) -> list[str]:
    """absl's flag parsing, at WARNING verbosity unless ``--verbosity``/``-v`` is
    given: Orbax logs every checkpoint save and load at INFO."""
    if not any(arg.startswith(("--verbosity", "-v", "--v=")) for arg in argv[1:]):
        argv = [argv[0], "--verbosity=-1", *argv[1:]]
    return app.parse_flags_with_usage(argv)
