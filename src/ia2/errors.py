"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class IA2Error(Exception):
    """A user-facing error: bad input, a missing file, an unknown name. Its message is one line."""
