"""The labeled pool: per sample, the cycle in which it was labeled (-1 = unlabeled) and its label.

Two kinds of labels:
- class labels (classification): one int per sample, kept in the pool and in pool.json;
- dense labels (segmentation masks, `dense=True`): the pool records only which samples are labeled
  and in which cycle. The masks stay where they came from (the dataset for the simulated oracle),
  since a pool.json holding them would weigh what the dataset does (2 MB a Cityscapes image).

pool.json: format "todal.pool"; version 1 = class labels (the only version before dense labels, still
written for them, so older files and older readers keep working); version 2 = dense labels, with
`"dense": true` and per cycle only `"indices"`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .atomic import write_json
from .errors import TodalError

FORMAT = "todal.pool"
VERSION = 1  # class labels
DENSE_VERSION = 2  # dense labels: indices per cycle, no labels


def _as_index(x, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1 or (t.numel() and t.is_floating_point()):
        hint = (" Label maps (segmentation masks) need a dense pool: Pool(..., dense=True), task='segmentation' "
                "in ActiveLoop." if name == "labels" and t.dim() > 1 else "")
        raise TodalError(f"Pool.add expects {name} as a 1-D sequence of ints. Got shape "
                         f"{tuple(t.shape)} of {t.dtype}.{hint}")
    return t.long()


class Pool:
    """Which samples of a dataset of `size` are labeled, when, and with which label.

    Indices are positions in the training dataset: a sample's identity in every run file.

    Args:
        size: number of samples in the training dataset. num_classes: labels must lie in [0, C).
        dense: labels are maps (segmentation masks `[k, H, W]`): `add()` checks them (values in
            [0, C) or `ignore_index`) and records the samples as labeled without keeping the maps;
            `labels` stays -1. Pass `labels=None` when the maps were checked elsewhere.
        ignore_index: the value a dense label may hold besides [0, C) (segmentation's 255).
    """

    def __init__(self, size: int, num_classes: int | None = None, *, dense: bool = False, ignore_index: int = 255):
        if int(size) < 1:
            raise TodalError(f"A Pool needs a dataset of at least 1 sample. Got size {size}.")
        self.size = int(size)
        self.num_classes = num_classes
        self.dense = bool(dense)
        self.ignore_index = int(ignore_index)
        self.cycle = torch.full((self.size,), -1, dtype=torch.long)  # (N,) cycle labeled, -1 = not
        self.labels = torch.full((self.size,), -1, dtype=torch.long)  # (N,) revealed label, -1 = none

    # --- views --------------------------------------------------------------------------------
    @property
    def labeled(self) -> Tensor:
        """Sorted indices of labeled samples."""
        return (self.cycle >= 0).nonzero().flatten()

    @property
    def unlabeled(self) -> Tensor:
        """Sorted indices of unlabeled samples."""
        return (self.cycle < 0).nonzero().flatten()

    def labeled_in(self, cycle: int) -> Tensor:
        """Indices labeled in exactly `cycle` (0 = the initial set)."""
        return (self.cycle == cycle).nonzero().flatten()

    @property
    def num_cycles(self) -> int:
        return int(self.cycle.max()) + 1 if (self.cycle >= 0).any() else 0

    def __len__(self) -> int:
        return int((self.cycle >= 0).sum())

    # --- changes ------------------------------------------------------------------------------
    def add(self, indices, labels, cycle: int | None = None) -> None:
        """Label `indices` with `labels` in `cycle` (default: one after the latest).

        Dense pools: `labels` is `[k, *S]` label maps (checked, not kept) or None.
        """
        idx = _as_index(indices, "indices")
        if self.dense:
            lab = self.check_maps(labels, len(idx))
        else:
            if labels is None:
                raise TodalError("Pool.add got labels=None for a pool of class labels; pass one label per index "
                                 "(labels=None is for dense pools: Pool(..., dense=True)).")
            lab = _as_index(labels, "labels")
        if len(idx) != len(lab):
            raise TodalError(f"Pool.add got {len(idx)} indices but {len(lab)} labels; pass one label per index.")
        if len(idx) == 0:
            return
        bad = idx[(idx < 0) | (idx >= self.size)]
        if len(bad):
            raise TodalError(f"Pool.add got index {int(bad[0])} outside [0, {self.size}); "
                             "indices are positions in the training dataset.")
        if len(idx.unique()) != len(idx):
            raise TodalError("Pool.add got repeated indices; pass each sample once.")
        again = idx[self.cycle[idx] >= 0]
        if len(again):
            raise TodalError(f"Pool.add got index {int(again[0])}, which is already labeled; "
                             "select from Pool.unlabeled.")
        if not self.dense:
            hi = self.num_classes if self.num_classes is not None else None
            wrong = lab[(lab < 0) | (lab >= hi)] if hi is not None else lab[lab < 0]
            if len(wrong):
                rng = f"[0, {hi})" if hi is not None else "[0, inf)"
                raise TodalError(f"Pool.add got label {int(wrong[0])} outside {rng}; fix the label source.")
        cycle = self.num_cycles if cycle is None else int(cycle)
        self.cycle[idx] = cycle
        if not self.dense:
            self.labels[idx] = lab

    def check_maps(self, labels, k: int) -> Tensor:
        """Dense labels: `[k, *S]` integer maps with values in [0, C) or the ignore index -> a `[k]` stand-in
        (all zeros; None gives `k` of them). Raises TodalError naming the first bad value."""
        if labels is None:
            return torch.zeros(k, dtype=torch.long)
        maps = torch.as_tensor(labels)
        if maps.dim() < 2 or maps.is_floating_point() or maps.dtype == torch.bool:
            raise TodalError(f"Pool.add on a dense pool expects integer label maps [k, H, W]. Got shape "
                             f"{tuple(maps.shape)} of {maps.dtype}.")
        valid = maps[maps != self.ignore_index]
        hi = self.num_classes
        if valid.numel():
            lo_v, hi_v = int(valid.min()), int(valid.max())
            if lo_v < 0 or (hi is not None and hi_v >= hi):
                bad = lo_v if lo_v < 0 else hi_v
                rng = f"[0, {hi})" if hi is not None else "[0, inf)"
                raise TodalError(f"Pool.add got a label map holding {bad}, outside {rng} and not the ignore index "
                                 f"{self.ignore_index}; fix the label source.")
        return torch.zeros(len(maps), dtype=torch.long)

    # --- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        cycles = []
        for c in range(self.num_cycles):
            idx = self.labeled_in(c)
            if self.dense:
                cycles.append({"indices": idx.tolist()})
            else:
                cycles.append({"indices": idx.tolist(), "labels": self.labels[idx].tolist()})
        if self.dense:
            return {"format": FORMAT, "version": DENSE_VERSION, "size": self.size, "num_classes": self.num_classes,
                    "dense": True, "ignore_index": self.ignore_index, "cycles": cycles}
        return {"format": FORMAT, "version": VERSION, "size": self.size,
                "num_classes": self.num_classes, "cycles": cycles}

    @classmethod
    def from_state_dict(cls, state: dict, *, source: str = "the pool state") -> Pool:
        def corrupt(why: str) -> TodalError:
            return TodalError(f"{source} is corrupted ({why}); restore it from a backup or delete "
                              "the run directory to start over.")

        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise corrupt(f"it is not a {FORMAT} file")
        version = state.get("version")
        if version not in (VERSION, DENSE_VERSION):
            raise corrupt(f"format version {version!r}, this todal reads {VERSION} and {DENSE_VERSION}")
        dense = version == DENSE_VERSION
        if dense != bool(state.get("dense", False)):
            raise corrupt(f"version {version} with dense={state.get('dense')!r}")
        try:
            pool = cls(int(state["size"]), state.get("num_classes"), dense=dense,
                       ignore_index=int(state.get("ignore_index", 255)))
            for c, entry in enumerate(state["cycles"]):
                pool.add(entry["indices"], None if dense else entry["labels"], cycle=c)
        except TodalError as e:
            raise corrupt(str(e).rstrip(".")) from None
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(f"bad or missing field: {e}") from None
        return pool

    def save(self, path: str | os.PathLike) -> None:
        """Atomic: the file on disk is always the old pool or the new one, never half of each."""
        write_json(path, self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Pool:
        try:
            state = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise TodalError(f"No pool file at {path}; check the path.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TodalError(f"{path} is corrupted (not valid JSON: {e}); restore it from a backup or "
                             "delete the run directory to start over.") from None
        return cls.from_state_dict(state, source=str(path))


def clip_budget(budget: int, available: int, owner: str = "select") -> int:
    """The budget, or everything left (with a warning) when fewer samples remain."""
    if budget > available:
        warnings.warn(f"{owner}: budget {budget} exceeds the {available} unlabeled samples left; "
                      f"selecting all {available}.", stacklevel=3)
        return available
    return budget
