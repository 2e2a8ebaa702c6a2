"""The ``deformable-detr`` command line and the embedded demo (with its checkpoint). Nothing imports it."""
