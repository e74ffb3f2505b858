"""COD and EMAOD sampling: pick the samples whose outputs moved most (Eq. 5, Sec. 4.2 and 5.4)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import distributed
from ..discrepancy import DEFAULT_SPACE, MEASURES, SPACES, discrepancy, to_space
from ..errors import TodalError, check_choice, check_number
from ..inference import eval_mode
from . import register
from .base import Context, ScoreStrategy


class _OutputDiscrepancy(ScoreStrategy):
    """Discrepancy between `ctx.model` and a reference model, in `space` with `measure`
    (None: the flavor's: ||·|| for the paper, 0.5·||·||² for the official code)."""

    def __init__(self, space: str = DEFAULT_SPACE, measure: str | None = None):
        super().__init__()
        self.space = check_choice("space", f"strategy {self.name!r}", space, SPACES)
        self.measure = None if measure is None else check_choice("measure", f"strategy {self.name!r}",
                                                                  measure, MEASURES)

    def _measure(self, ctx: Context) -> str:
        return self.measure or ctx.flavor.measure

    def _paired(self, ctx: Context, reference, candidates: Tensor) -> Tensor:
        """Both models on the same (augmented, for the official code's quirk) batches, reduced per batch."""
        measure = self._measure(ctx)

        def score(a: Tensor, b: Tensor) -> Tensor:
            return discrepancy(to_space(a, self.space), to_space(b, self.space), measure=measure, task=ctx.task)

        return ctx.per_sample(score, [ctx.model, reference], candidates, f"scoring {self.name}",
                              augmented=ctx.flavor.score_augment)


@register
class COD(_OutputDiscrepancy):
    """Cyclic Output Discrepancy: this cycle's model against the previous cycle's (Eq. 5).

    Scored a batch at a time; only the `[n]` scores are kept, whatever the output shape.
    Classification: the current outputs on the candidates (`[n, C]`, in `space`) are kept for the
    next cycle, so a cycle costs one inference pass over the pool, not two. Past `max_cache_gb` (1 GB:
    2.7·10^7 outputs, e.g. 10^6 samples of 27 classes) they are kept in a memory-mapped file in the run's
    checkpoints folder instead of in memory; `cache=False` keeps nothing and runs the previous model again.
    Dense outputs (segmentation): nothing is kept. Full-resolution maps of the pool would not fit
    (`[n, C, H, W]`: 10 GB for 56,000 64x64 scenes of 11 classes, 2.5 TB for Cityscapes), and the
    discrepancy needs every pixel's class vector, so no smaller summary gives the same score. The
    previous cycle's model is run again on each batch instead: COD costs two inference passes
    per cycle (measured in benchmarks/segmentation-scoring), and memory stays one batch of outputs.
    """

    name = "cod"
    description = "largest output change since the previous cycle (Cyclic Output Discrepancy)"
    reference = "Huang et al., Semi-Supervised Active Learning with Temporal Output Discrepancy, ICCV 2021"
    needs_previous = True

    def __init__(self, space: str = DEFAULT_SPACE, measure: str | None = None, cache: bool = True,
                 max_cache_gb: float = 1.0):
        super().__init__(space, measure)
        self.cache = bool(cache)
        self.max_cache_gb = check_number("max_cache_gb", f"strategy {self.name!r}", max_cache_gb, lo=0)
        # {cycle: {"indices": (n,), "outputs": (n, C)}} in self.space, for the last two cycles, so
        # scoring twice in one cycle still compares with the previous cycle's outputs. Past max_cache_gb
        # the outputs are a read-only memory-mapped .npy file ("file": its path) instead of a tensor.
        self._cache: dict[int, dict] = {}

    def ascending(self, ctx: Context) -> bool:
        return ctx.cycle == 0 and ctx.flavor.first_cycle_lowest

    def _cached(self, ctx: Context) -> tuple[dict, Tensor] | None:
        """Last cycle's kept outputs and, per dataset index, their row there (-1: not kept)."""
        c = self._cache.get(ctx.cycle - 1) if self.cache else None
        if c is None:
            return None
        row = torch.full((len(ctx.dataset),), -1, dtype=torch.long)
        row[c["indices"]] = torch.arange(len(c["indices"]))
        return c, row

    def _previous(self, ctx: Context, x: Tensor, idx: Tensor, cached, like: Tensor) -> Tensor:
        """The previous model's outputs (in `self.space`) on one batch: kept ones where there are, the
        previous model run on the rest of the batch."""
        if cached is None:
            with eval_mode(ctx.previous_model):
                return to_space(ctx.previous_model(x).float(), self.space)
        c, row = cached
        r = row[idx]
        hit = r >= 0
        prev = torch.empty_like(like)
        kept = c["outputs"]
        rows = kept[r[hit]] if isinstance(kept, Tensor) else torch.from_numpy(np.ascontiguousarray(kept[r[hit].numpy()]))
        prev[hit.to(like.device)] = rows.to(like.device, like.dtype)
        if not bool(hit.all()):  # not scored last cycle (a random subset): run the previous model
            miss = (~hit).to(x.device)
            with eval_mode(ctx.previous_model):
                prev[miss.to(like.device)] = to_space(ctx.previous_model(x[miss]).float(), self.space)
        return prev

    @torch.no_grad()
    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        if ctx.flavor.score_augment:
            return self._paired(ctx, ctx.previous_model, candidates)
        measure, cached = self._measure(ctx), self._cached(ctx)
        scores, kept, pos = torch.empty(len(candidates)), None, 0
        with eval_mode(ctx.model):
            for idx, x in ctx.batches(candidates, f"scoring {self.name}"):
                current = to_space(ctx.model(x).float(), self.space)
                if self.cache and current.dim() == 2:  # dense outputs are never kept
                    if kept is None:
                        kept = _Kept(self, ctx, len(candidates), current.shape[1])
                    kept.put(pos, current)
                previous = self._previous(ctx, x, idx, cached if current.dim() == 2 else None, current)
                scores[pos : pos + len(idx)] = discrepancy(current, previous, measure=measure, task=ctx.task).cpu()
                pos += len(idx)
        if kept is not None:
            self._cache = {c: v for c, v in self._cache.items() if c == ctx.cycle - 1}
            self._cache[ctx.cycle] = {"indices": candidates.clone(), **kept.done()}
        return scores

    def state_dict(self) -> dict:
        # a memory-mapped cache is saved as its file's path (the file stays beside the checkpoints)
        return {"cache": {c: {k: v for k, v in e.items() if not (k == "outputs" and "file" in e)}
                          for c, e in self._cache.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._cache = {}
        for c, e in (state.get("cache") or {}).items():
            if "file" in e:
                if not Path(e["file"]).exists():  # gone: the previous model is run instead
                    continue
                e = {**e, "outputs": np.load(e["file"], mmap_mode="r")}
            self._cache[c] = e


class _Kept:
    """Where COD keeps one cycle's outputs `[n, C]`: a tensor, or past `max_cache_gb` a memory-mapped .npy
    file in the run's checkpoints folder (a temporary folder without a run), written under a temporary
    name and renamed when complete; files of cycles before the previous one are removed."""

    def __init__(self, cod: COD, ctx: Context, n: int, classes: int):
        self.cycle = ctx.cycle
        if n * classes * 4 <= cod.max_cache_gb * 2**30:
            self.file, self.out = None, torch.empty(n, classes)
            return
        folder = Path(ctx.workdir) / "checkpoints" if ctx.workdir is not None else Path(tempfile.gettempdir()) / "todal-cod"
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.rank = folder, distributed.rank()
        self.file = folder / f"cod-outputs-cycle{ctx.cycle}-rank{self.rank}.npy"
        self.tmp = folder / f".{self.file.name}.{os.getpid()}.tmp"
        self.out = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=(n, classes))

    def put(self, pos: int, rows: Tensor) -> None:
        rows = rows.detach().cpu()
        if self.file is None:
            self.out[pos : pos + len(rows)] = rows
        else:
            self.out[pos : pos + len(rows)] = rows.numpy()

    def done(self) -> dict:
        if self.file is None:
            return {"outputs": self.out}
        self.out.flush()
        del self.out
        os.replace(self.tmp, self.file)
        for old in self.folder.glob(f"cod-outputs-cycle*-rank{self.rank}.npy"):
            c = int(old.name.split("cycle")[1].split("-")[0])
            if c < self.cycle - 1:
                old.unlink(missing_ok=True)
        return {"outputs": np.load(self.file, mmap_mode="r"), "file": str(self.file)}


@register
class EMAOD(_OutputDiscrepancy):
    """EMA Output Discrepancy: the current model against its EMA teacher (paper Sec. 5.4)."""

    name = "emaod"
    description = "largest output gap between the model and its EMA teacher"
    reference = "Huang et al., ICCV 2021 (Sec. 5.4, EMAOD)"
    needs_ema = True

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        if ctx.ema_model is None:
            raise TodalError("Strategy 'emaod' needs an EMA teacher; run it through ActiveLoop (which "
                             "keeps one) or pass ema_model= to the Context.")
        return self._paired(ctx, ctx.ema_model, candidates)
