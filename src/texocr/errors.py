"""Errors a user can act on: the CLI prints them as one line and exits non-zero, without a traceback."""


class TexocrError(Exception):
    """A problem with the user's input (a missing file, a bad argument, an unsupported machine)."""
