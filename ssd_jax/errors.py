"""The base of every error a user can fix without reading a traceback."""


class UserError(Exception):
    """A mistake in a command line, configuration or file that the user can fix.

    The commands print its message as one line (``error: ...``) and exit with
    status 1; the message says what was wrong and what to do.
    """
