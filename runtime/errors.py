"""Error types that the CLI turns into one-line messages and exit code 2.

Library code raises these (never ``sys.exit``); each message names the bad value and the fix.
"""

__all__ = ["InputError", "ModelFileError", "VeloxSegError", "one_line"]


class VeloxSegError(Exception):
    """Base class of every error that is the user's to fix, not a bug."""


class InputError(VeloxSegError, ValueError):
    """An input image (or array) is missing, unreadable or inconsistent."""


class ModelFileError(VeloxSegError, ValueError):
    """A model file is missing, corrupt, unsafe, or its card does not fit its graph."""


def one_line(error: BaseException | str) -> str:
    """An error's message on one line (the CLI prints one line per error), or its type's name
    where it has no message."""
    text = " ".join(str(error).split())
    return text or (type(error).__name__ if isinstance(error, BaseException) else "")
