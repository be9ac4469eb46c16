"""``python -m veloxseg.cli``: the ``veloxseg`` command without the console script."""

from veloxseg.cli import main

main()
