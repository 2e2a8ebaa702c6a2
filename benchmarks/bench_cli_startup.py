"""How fast the command line answers: ``deformable-detr --help`` (and a few more) against ``import torch``.

Each command runs in a fresh process, the commands taking turns (help, import torch, help, ...) so that
both see the same load; the median of ``--repeats`` runs is reported with the load average before
and after. The goal (issue 24): ``--help`` in under a tenth of the time of ``python -c "import torch"``.

    python -m benchmarks.bench_cli_startup [--repeats 5]

Prints a Markdown table (copied into ``docs/cli.md``, "Start-up time").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def commands() -> dict[str, list[str]]:
    """What is timed: the installed command's quick answers, and torch's import alone."""
    script = shutil.which("deformable-detr", path=str(Path(sys.executable).parent))
    if script is None:
        raise SystemExit("the deformable-detr command is not installed (pip install .)")
    return {
        "deformable-detr --help": [script, "--help"],
        "deformable-detr --version": [script, "--version"],
        "deformable-detr detect --help": [script, "detect", "--help"],
        "deformable-detr detect x.png --thresh 0.3 (a flag typo)": [script, "detect", "x.png", "--checkpoint", "demo", "--thresh", "0.3"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
    }


def time_once(argv: list[str]) -> float:
    """Wall seconds of one run of ``argv`` (its output discarded)."""
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    timed = commands()
    for argv in timed.values():  # warm the file cache once, untimed
        time_once(argv)
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.repeats):
        for name, argv in timed.items():
            runs[name].append(time_once(argv))
    load_after = os.getloadavg()
    torch_import = statistics.median(runs['python -c "import torch"'])
    print(f"{os.cpu_count()} CPUs; load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"median of {args.repeats} runs each, taking turns\n")
    print("| command | median wall time | of `import torch` |")
    print("|---|---|---|")
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        print(f"| `{name}` | {median:.2f} s | {median / torch_import:.2f} |")


if __name__ == "__main__":
    main()
