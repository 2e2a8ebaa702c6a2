"""The ``deformable-detr`` command line: the entry point.

Commands:
    detect     boxes for images: one annotated PNG and one JSON per image
    train      train on a COCO-format dataset (one process, or many with
               ``torchrun --no-python deformable-detr train ...``)
    eval       COCO metrics of a checkpoint on a COCO-format dataset (metrics.json)
    demo       the embedded end-to-end demo on synthetic data
    make-data  write the embedded synthetic dataset in COCO format

Run ``deformable-detr COMMAND --help`` for the options of each. The parser
(:mod:`models.cli.parser`) and the range checks (:mod:`models.cli.checks`) import no torch; the
commands (:mod:`models.cli.commands`) are imported once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from models.cli.own_package import check_own_package
from models.cli.parser import build_parser, parse_arguments

__all__ = ["build_parser", "main"]


def _line_buffered_output() -> None:
    """Progress lines appear as they are printed, also when stdout is a pipe or a file (``demo | tee log``)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError, OSError):  # replaced streams (pytest's capture, io.StringIO)
            pass


def _run(ns: argparse.Namespace) -> int:
    from models.cli.checks import check_options

    check_options(ns)  # one line naming the flag, still without torch
    from models.cli.commands import COMMANDS

    return COMMANDS[ns.command](ns)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deformable-detr``; returns the exit status."""
    check_own_package()
    _line_buffered_output()
    ns = parse_arguments(build_parser(), argv)
    from models.cli.errors import run_command

    return run_command(ns.command, _run, ns)  # the one error-exit path (models/cli/errors.py)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
