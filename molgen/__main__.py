"""``python -m molgen`` (and ``torchrun -m molgen train ...``)."""

from molgen.cli import main

main()
