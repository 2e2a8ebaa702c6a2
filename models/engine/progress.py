"""Progress of long loops, and the summary a training run prints before its first step.

On a terminal, progress is a ``tqdm`` bar. Anywhere else (a log file, a pipe, a job scheduler's
output) a bar would be rewritten hundreds of times into the file, so :class:`PlainProgress` prints one
plain line at most every ``interval_s`` seconds and one when the loop ends: a log of a whole run stays
a few lines per epoch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

PLAIN_INTERVAL_S = 30.0
"""Seconds between two plain progress lines."""


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class PlainProgress:
    """The part of ``tqdm``'s interface the loops use (``update``, ``set_postfix``, ``close``, iteration),
    printing ``desc: n/total (p%), key value ..., t s`` lines instead of a bar."""

    def __init__(self, total: int | None, desc: str, stream: TextIO, interval_s: float = PLAIN_INTERVAL_S,
                 iterable: Iterable | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.total, self.desc, self.stream, self.interval_s = total, desc, stream, interval_s
        self.iterable = iterable
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.started = self.last = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this PlainProgress wraps no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next line (``loss=..., lr=...``)."""
        self.postfix = dict(values)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps; print a line when ``interval_s`` has passed since the last one."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self._print(now)

    def close(self) -> None:
        """Print the final line (once)."""
        if not self.closed:
            self.closed = True
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        count = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        extra = "".join(f", {key} {value}" for key, value in self.postfix.items())
        print(f"{self.desc}: {count}{extra}, {now - self.started:.0f} s", file=self.stream, flush=True)


def progress_bar(total: int | None, desc: str, enabled: bool = True, stream: TextIO | None = None,
                 interval_s: float = PLAIN_INTERVAL_S) -> Any:
    """A progress display for a loop of ``total`` steps: a ``tqdm`` bar when ``stream`` (default
    ``sys.stderr``) is a terminal, a :class:`PlainProgress` otherwise; a silent one when not ``enabled``."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(total=total, desc=desc, disable=True)
    if _is_terminal(stream):
        return tqdm(total=total, desc=desc, dynamic_ncols=True, file=stream)
    return PlainProgress(total, desc, stream, interval_s)


def progress_iterable(iterable: Iterable, desc: str, enabled: bool = True, stream: TextIO | None = None,
                      interval_s: float = PLAIN_INTERVAL_S) -> Iterable:
    """``iterable`` wrapped like :func:`progress_bar` (its length as the total when it has one)."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return iterable
    total = len(iterable) if hasattr(iterable, "__len__") else None
    if _is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=stream)
    return PlainProgress(total, desc, stream, interval_s, iterable=iterable)


def describe_run(args: Any, model: Any, train_set: Any, val_set: Any, steps_per_epoch: int, device: Any,
                 processes: int = 1) -> str:
    """The block ``train`` prints before its first step: data, model, device, output folder, schedule.

    Args:
        args: the run's ``TrainingArgs`` (``data``, ``out``, ``model``, ``epochs``, ``batch_size``,
            the split names, ``resume``).
        model: the detector (its parameters are counted).
        train_set, val_set: the two splits (``CocoDetection``: their images and classes are counted).
        steps_per_epoch: optimizer steps per epoch; device: where it trains; processes: how many.
    """
    if steps_per_epoch < 0 or processes < 1:
        raise ValueError(f"steps_per_epoch must be >= 0 and processes >= 1, got {steps_per_epoch} and {processes}")
    parameters = sum(p.numel() for p in model.parameters())
    per_step = f"batch {args.batch_size}" + (f" per process x {processes} processes" if processes > 1 else "")
    return "\n".join([
        f"data:   {args.data} ({args.train_split} {len(train_set)} images, {args.val_split} {len(val_set)} images; "
        f"{train_set.num_classes} classes)",
        f"model:  {args.model}, {parameters / 1e6:.2f} M parameters",
        f"device: {device}" + (f" x {processes} processes" if processes > 1 else ""),
        f"output: {args.out}" + (f" (resuming {args.resume})" if args.resume else ""),
        f"plan:   {args.epochs} epochs x {steps_per_epoch} steps, {per_step}",
    ])
