"""``python -m crystalflow.cli``: the ``crystalflow`` command."""

from crystalflow.cli import main

main()
