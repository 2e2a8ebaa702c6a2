"""``python -m models ...`` runs the ``deformable-detr`` command line.

Documented commands use ``deformable-detr`` (or ``torchrun --no-python deformable-detr``) instead: in
a folder holding a user's own ``models.py``, ``python -m models`` runs that file, not this one.
"""

import sys

from models.cli.own_package import check_own_package

check_own_package("python -m models")

from models.cli.main import main  # noqa: E402 - after the check

sys.exit(main())
