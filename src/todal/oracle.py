"""Who provides labels: the ground truth of the dataset (simulated) or a person, through files."""

from __future__ import annotations

import csv
import os
from pathlib import Path

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
    """A person labels: the loop writes `to_label.csv` (index) and stops; the person writes
    `labels.csv` (index,label) beside it and re-runs the same command, which resumes.

    Returns None from `label()` while answers are missing, so the loop can stop cleanly.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def label(self, indices: Tensor) -> Tensor | None:
        answers = self.folder / "labels.csv"
        if answers.exists():
            got = self._read(answers)
            missing = [int(i) for i in indices if int(i) not in got]
            if not missing:
                return torch.tensor([got[int(i)] for i in indices], dtype=torch.long)
        write_text(self.folder / "to_label.csv", "index\n" + "".join(f"{int(i)}\n" for i in indices))
        return None

    @staticmethod
    def _read(path: Path) -> dict[int, int]:
        out = {}
        with open(path, newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or row[0].strip().lower() == "index":
                    continue
                try:
                    out[int(row[0])] = int(row[1])
                except (ValueError, IndexError):
                    raise TodalError(f"{path} line {n} is {','.join(row)!r}; each line must be "
                                     "'index,label' with two integers.") from None
        return out
