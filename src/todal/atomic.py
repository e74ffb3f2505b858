"""Atomic writes: a temp file in the same folder, fsync, rename. A crash never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _write(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> None:
    from . import distributed

    if not distributed.is_main():  # in a data-parallel run rank 0 alone writes (todal/distributed.py)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is on disk.
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_with(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Atomically write what `write(file)` writes (a figure's savefig, an image's save, a csv writer)."""
    _write(path, write, "wb" if binary else "w")


def write_text(path: str | os.PathLike, text: str) -> None:
    _write(path, lambda f: f.write(text), "w")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    _write(path, lambda f: torch.save(obj, f), "wb")
