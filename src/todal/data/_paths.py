"""Where dataset files are looked for: an explicit root, $TODAL_DATA, the user cache, the system."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from ..errors import TodalError

# Debian's dataset-* packages install here; a module attribute so tests can point it elsewhere.
SYSTEM_DIR = Path("/usr/share/datasets")


def cache_dir() -> Path:
    """`~/.cache/todal`: where downloads go."""
    return Path.home() / ".cache" / "todal"


def candidates(subdirs: Sequence[str], root: str | os.PathLike | None = None) -> list[Path]:
    """Folders to try, in order.

    With `root`: `root` itself, then `root/<subdir>`. Without: `$TODAL_DATA` and
    `$TODAL_DATA/<subdir>`, then `~/.cache/todal/<subdir>`, then `/usr/share/datasets/<subdir>`.
    """
    if root is not None:
        base = Path(root).expanduser()
        return [base] + [base / s for s in subdirs]
    out: list[Path] = []
    env = os.environ.get("TODAL_DATA")
    if env:
        base = Path(env).expanduser()
        out += [base] + [base / s for s in subdirs]
    for base in (cache_dir(), SYSTEM_DIR):
        out += [base / s for s in subdirs]
    return out


def find_dir(paths: Sequence[Path], holds: Callable[[Path], bool]) -> Path | None:
    """The first folder in `paths` for which `holds(folder)` is true."""
    for p in paths:
        if p.is_dir() and holds(p):
            return p
    return None


def describe(paths: Sequence[Path]) -> str:
    """'a, b or c' for an error message."""
    names = [str(p) for p in dict.fromkeys(paths)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_root(root: str | os.PathLike | None, what: str) -> None:
    """An explicit root that does not exist is a typo worth naming on its own."""
    if root is not None and not Path(root).expanduser().exists():
        raise TodalError(f"The data root {str(root)!r} for {what} does not exist; pass the folder that holds "
                         f"the {what} files.")


def one_line(exc: BaseException) -> str:
    """An exception as one line, for embedding in a TodalError."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())
