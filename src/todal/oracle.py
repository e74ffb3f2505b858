"""Who provides labels: the ground truth of the dataset (simulated) or a person, through files."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .atomic import write_text
from .errors import TodalError
from .inference import fetch


class SimulatedOracle:
    """Reveals the dataset's own labels: the standard protocol for measuring strategies."""

    def __init__(self, dataset):
        self.dataset = dataset

    def label(self, indices: Tensor) -> Tensor:
        return fetch(self.dataset, indices)[1].long()


class FileOracle:
    """A person labels: the loop writes `to_label.csv` (`index`, and `path` when `paths` are given) and
    stops; the person writes `labels.csv` (`index,label`) beside it and re-runs the same command, which
    resumes. A label is a class index, or a class name when `classes` are given.

    For a folder of images, a labeling page and Label Studio, use a labeling project instead
    (`todal init`, `todal.project`).

    Returns None from `label()` while answers are missing, so the loop can stop cleanly.
    """

    def __init__(self, folder: str | os.PathLike, *, classes: Sequence[str] | None = None,
                 paths: Sequence[str] | None = None):
        self.folder = Path(folder)
        self.classes = None if classes is None else {str(c): i for i, c in enumerate(classes)}
        self.paths = None if paths is None else list(paths)

    def label(self, indices: Tensor) -> Tensor | None:
        answers = self.folder / "labels.csv"
        if answers.exists():
            got = self._read(answers)
            missing = [int(i) for i in indices if int(i) not in got]
            if not missing:
                return torch.tensor([got[int(i)] for i in indices], dtype=torch.long)
        if self.paths is None:
            text = "index\n" + "".join(f"{int(i)}\n" for i in indices)
        else:
            text = "index,path\n" + "".join(f"{int(i)},{self.paths[int(i)]}\n" for i in indices)
        write_text(self.folder / "to_label.csv", text)
        return None

    def _read(self, path: Path) -> dict[int, int]:
        out = {}
        expected = "an integer class" if self.classes is None else f"a class name ({', '.join(self.classes)}) or index"
        with open(path, newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or row[0].strip().lower() == "index":
                    continue
                try:
                    label = row[1].strip()
                    out[int(row[0])] = self.classes[label] if self.classes and label in self.classes else int(label)
                except (ValueError, IndexError):
                    raise TodalError(f"{path} line {n} is {','.join(row)!r}; each line must be "
                                     f"'index,label' with an integer index and {expected}.") from None
        return out
