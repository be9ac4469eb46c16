"""``python -m veloxseg``: the ``veloxseg`` command without the console script."""

from veloxseg.cli import main

main()
