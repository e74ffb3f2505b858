"""Progress output: bars on a terminal, plain lines elsewhere (a log file, a pipe, CI).

A bar redrawn hundreds of times is unreadable once it lands in a file, so off a terminal the epoch loop
prints one line per epoch (`cycle 2 train: epoch 5/10, loss 0.412`) and batch loops print nothing; the
drivers print one line per cycle or step themselves.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class _Lines:
    """One line per item on `stream` once the item is done, with what `set_postfix` last said."""

    def __init__(self, iterable: Iterable, desc: str, unit: str, total: int | None, stream):
        self.iterable, self.desc, self.unit, self.stream = iterable, desc, unit, stream
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix = ""

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def __iter__(self) -> Iterator:
        t0 = time.perf_counter()
        for i, item in enumerate(self.iterable, 1):
            yield item
            of = f"/{self.total}" if self.total is not None else ""
            extra = f", {self.postfix}" if self.postfix else ""
            print(f"{self.desc}: {self.unit} {i}{of}{extra} ({time.perf_counter() - t0:.1f}s)", file=self.stream,
                  flush=True)


class _Silent:
    def __init__(self, iterable: Iterable):
        self.iterable = iterable

    def set_postfix(self, **values) -> None:
        pass

    def __iter__(self) -> Iterator:
        return iter(self.iterable)


def bar(iterable: Iterable, desc: str | None, *, unit: str = "batch", lines: bool = False, total: int | None = None,
        stream=None):
    """`iterable` with progress: a tqdm bar on a terminal; off one, a line per item when `lines` (epochs), else
    nothing (batches). `desc=None`: no progress at all."""
    stream = stream or sys.stderr
    if desc is None:
        return _Silent(iterable)
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, unit=unit, leave=False, total=total, file=stream)
    return _Lines(iterable, desc, unit, total, stream) if lines else _Silent(iterable)
