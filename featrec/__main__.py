"""``python -m featrec``: the ``featrec`` command (also what ``torchrun -m featrec`` runs)."""

from featrec.cli import console

console()
