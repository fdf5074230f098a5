"""User-facing errors: bad input that the user can fix."""


class InputError(ValueError):
    """Bad input: the message names the file or value and says what was expected.

    The command line prints the message (no traceback) and exits with status 2.
    """
