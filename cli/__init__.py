"""The ``veloxseg`` command. ``main`` is the console script: it imports the app itself, so that
Ctrl-C during those imports (numpy, typer, rich: most of a second) exits 130 quietly too."""

import sys

__all__ = ["main"]


def main() -> None:
    """Run the command line; Ctrl-C at any moment exits 130 with no traceback."""
    try:
        from veloxseg.cli.app import main as run

        run()
    except KeyboardInterrupt:
        sys.exit(130)
