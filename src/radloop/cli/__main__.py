"""``python -m radloop.cli``: the same as the ``radloop`` command."""

from radloop.cli import main

main()
