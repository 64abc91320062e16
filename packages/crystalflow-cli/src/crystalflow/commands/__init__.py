"""Sub-commands of the ``crystalflow`` command line (one module each)."""
