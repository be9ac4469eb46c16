"""Error types that the CLI turns into one-line messages and exit code 2.

Library code raises these (never ``sys.exit``); each message names the bad value and the fix.
"""

__all__ = ["InputError", "ModelFileError", "VeloxSegError"]


class VeloxSegError(Exception):
    """Base class of every error that is the user's to fix, not a bug."""


class InputError(VeloxSegError, ValueError):
    """An input image (or array) is missing, unreadable or inconsistent."""


class ModelFileError(VeloxSegError, ValueError):
    """A model file is missing, corrupt, unsafe, or its card does not fit its graph."""
