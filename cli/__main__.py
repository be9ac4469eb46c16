"""``python -m veloxseg.cli``: the ``veloxseg`` command without the console script."""

from veloxseg.cli.app import main

main()
