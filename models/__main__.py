"""``python -m models ...`` runs the ``deformable-detr`` command line."""

import sys

from models.cli.main import main

sys.exit(main())
