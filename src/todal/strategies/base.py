"""What every strategy shares: the read-only context it gets, validation of its answer, top-k."""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from ..errors import TodalError, check_int, param_error
from .. import distributed
from ..flavor import Flavor, flavor_for
from ..inference import Transform, chunks, eval_mode, fetch, read, test_transform, train_transform
from ..pool import clip_budget
from ..tasks import Task


class LabelMaps:
    """The revealed label maps (segmentation masks) of `labeled`, read from the dataset when indexed.

    Stands in for `Context.labels` when labels are dense: `[n, H, W]` masks of a whole labeled set
    do not fit in memory (300 Cityscapes masks are 5 GB as int64), so only the rows asked for are
    read. Supports what strategies do with `ctx.labels`: `labels[pos]` (positions in `labeled`,
    an int, a slice or an index tensor) -> int64 maps `[k, H, W]` on the CPU, `len()`, `dim()`,
    `shape`, `long()` and `to()` (both return it unchanged), and `tensor()` (all of them at once,
    for small sets).
    """

    def __init__(self, dataset, labeled: Tensor):
        self.dataset, self.labeled = dataset, torch.as_tensor(labeled, dtype=torch.long)
        self._map_shape = None

    def __len__(self) -> int:
        return len(self.labeled)

    def __getitem__(self, pos) -> Tensor:
        idx = self.labeled[pos]
        if idx.dim() == 0:
            return fetch(self.dataset, idx.reshape(1))[1][0].long()
        return fetch(self.dataset, idx)[1].long()

    @property
    def map_shape(self) -> tuple[int, ...]:
        if self._map_shape is None:
            self._map_shape = tuple(fetch(self.dataset, self.labeled[:1])[1].shape[1:]) if len(self) else ()
        return self._map_shape

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self),) + self.map_shape)

    def dim(self) -> int:
        return 1 + len(self.map_shape)

    def long(self) -> LabelMaps:
        return self

    def to(self, *args, **kwargs) -> LabelMaps:
        """Itself: maps are read (on the CPU) only when indexed."""
        return self

    def tensor(self) -> Tensor:
        return self[torch.arange(len(self))]

    def __repr__(self) -> str:
        return f"LabelMaps(n={len(self)}, dataset={getattr(self.dataset, 'name', type(self.dataset).__name__)})"


@dataclass
class Context:
    """Everything a strategy may read in one selection. Strategies must not modify any of it.

    `candidates` is the part of the unlabeled pool to score (the whole pool, or the random subset
    the official flavor scores); `labels` are the revealed labels of `labeled`, aligned: a `[n]`
    tensor of class labels, or for dense labels (segmentation) a `LabelMaps` that reads the masks
    from the dataset when indexed.

    Memory: `outputs()` and `embeddings()` concatenate over all the indices, fine for `[n, C]` and
    `[n, D]`; for dense outputs (`[n, C, H, W]`: 10 GB for 56,000 64x64 scenes of 11 classes)
    reduce per batch with `per_sample()` instead, which keeps one batch of outputs at a time.
    """

    model: nn.Module
    task: Task
    dataset: object
    labeled: Tensor
    unlabeled: Tensor
    labels: Tensor | LabelMaps
    generator: torch.Generator
    cycle: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 256
    ema_model: nn.Module | None = None
    flavor: Flavor = field(default_factory=lambda: flavor_for("default"))
    candidates: Tensor | None = None
    transform: Transform | None = None
    augment: Transform | None = None
    previous: Callable[[], nn.Module] | None = None
    workdir: Path | None = None
    progress: bool = False

    def pool_for(self, k: int) -> Tensor:
        """Where a selection of k looks: the scored `candidates`, or all of `unlabeled` when they are fewer than k."""
        return self.candidates if len(self.candidates) >= k else self.unlabeled

    def __post_init__(self):
        if self.candidates is None:
            self.candidates = self.unlabeled
        if self.transform is None:
            self.transform = test_transform(self.dataset)
        if self.augment is None:
            self.augment = train_transform(self.dataset)
        self._previous_model = None

    @contextlib.contextmanager
    def seeded(self):
        """Seed torch's global RNG from `generator` for a block and restore it afterwards; yields the seed.

        For what draws from the global RNG (network initializers, dropout masks): the CPU generator
        is forked, and the CUDA one of `device` when it is a GPU, so the masks drawn there repeat too.
        Only the forked generators are seeded: `torch.manual_seed` would also reseed every CUDA
        device, which a CPU-only fork does not restore.
        """
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        dev = torch.device(self.device)
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            yield seed

    @property
    def previous_model(self) -> nn.Module:
        """The model of the previous cycle (in cycle 0: the reference the flavor names), loaded lazily."""
        if self._previous_model is None:
            if self.previous is None:
                raise TodalError("This strategy needs the previous cycle's model, but the context has "
                                 "none; pass previous=<callable returning the model> to Context.")
            self._previous_model = self.previous().to(self.device)
        return self._previous_model

    def batches(self, indices: Tensor, desc: str | None = None, *, augmented: bool = False):
        """Yield `(idx, x)` over `indices`, inputs transformed and on the device."""
        from ..progress import bar

        transform = (lambda x: self.augment(x, self.generator)) if augmented else self.transform
        batches = list(chunks(indices, self.batch_size))
        for idx, x in zip(bar(batches, desc if self.progress else None),
                          read(self.dataset, batches, inputs_only=True)):
            yield idx, transform(x).to(self.device)

    @torch.no_grad()
    def outputs(self, model: nn.Module, indices: Tensor, desc: str | None = None) -> Tensor:
        """Raw outputs of `model` (eval mode) on `indices`, concatenated on the CPU: `[n, C, ...]`.

        For dense outputs prefer `per_sample()`: this holds `[n, C, H, W]`."""
        with eval_mode(model):
            return stack_rows(len(indices), (model(x) for _, x in self.batches(indices, desc)))

    @torch.no_grad()
    def per_sample(self, fn: Callable[..., Tensor], models: Sequence[nn.Module], indices: Tensor,
                   desc: str | None = None, *, augmented: bool = False) -> Tensor:
        """`[n]` = `fn(out_1, ..., out_m)` per batch, on the raw outputs of `models` (eval mode, all on the
        same batch), concatenated on the CPU. Memory: one batch of outputs, whatever the pool size.

        `fn` maps `m` output batches `[b, C, *S]` (on the device) to `[b]`.
        """
        out = torch.empty(len(indices))
        pos = 0
        with eval_mode(*models):
            for idx, x in self.batches(indices, desc, augmented=augmented):
                out[pos : pos + len(idx)] = fn(*(m(x).float() for m in models)).float().cpu()
                pos += len(idx)
        return out

    @torch.no_grad()
    def embeddings(self, indices: Tensor, model: nn.Module | None = None, desc: str | None = None) -> Tensor:
        """Penultimate features `[n, D]` of `indices` (the model's `embed()` or a hook before its head)."""
        from ..models import embed

        model = model or self.model
        with eval_mode(model):
            return stack_rows(len(indices), (embed(model, x) for _, x in self.batches(indices, desc)))


class RowWriter:
    """Batches `[b, ...]` written in order into one float32 CPU tensor `[n, ...]`, allocated at the first.

    Not a list and `torch.cat`: that holds every batch twice at the end, and a million small pieces
    interleaved with the forward passes' temporaries fragment the heap (benchmarks/pool-scale)."""

    def __init__(self, n: int):
        self.n, self.pos, self.out = n, 0, None

    def add(self, part: Tensor) -> None:
        if self.out is None:
            self.out = torch.empty((self.n, *part.shape[1:]))
        self.out[self.pos : self.pos + len(part)] = part.detach().float()  # copies from the device too
        self.pos += len(part)

    def result(self) -> Tensor:
        if self.pos != self.n:
            raise RuntimeError(f"RowWriter got {self.pos} rows, expected {self.n}")
        return self.out if self.out is not None else torch.empty(0)


def stack_rows(n: int, parts) -> Tensor:
    """`[n, ...]` float32 on the CPU from an iterable of batches `[b, ...]` (see `RowWriter`)."""
    writer = RowWriter(n)
    for part in parts:
        writer.add(part)
    return writer.result()


def top_k(scores: Tensor, k: int, *, largest: bool = True) -> Tensor:
    """Positions of the k best scores; ties keep index order (stable), NaN counts as worst."""
    s = scores.double().clone()
    s[torch.isnan(s)] = -torch.inf if largest else torch.inf
    return torch.sort(s, descending=largest, stable=True).indices[:k]


def top_k_with_tiebreak(primary: Tensor, secondary: Tensor, k: int) -> Tensor:
    """Positions of the k best `primary` scores; ties (common for vote counts) go to the higher
    `secondary` score, then to index order."""
    by_secondary = top_k(secondary, len(secondary))
    return by_secondary[top_k(primary[by_secondary], k)]


def feature_dim(ctx: Context) -> int:
    """D of the penultimate features `ctx.embeddings` gives, from the classifier or one sample."""
    from ..models import head_of

    if not hasattr(ctx.model, "embed"):
        try:
            return head_of(ctx.model).in_features
        except TodalError:
            pass
    return int(ctx.embeddings(ctx.unlabeled[:1]).shape[1])


def bounded(ctx: Context, cand: Tensor, k: int, *, name: str, subset: int | None, bytes_per_item: int,
            max_memory_gb: float, extra_items: int = 0) -> Tensor:
    """The candidates a feature-set strategy holds at once: a seeded random `subset` of them when given,
    refused with a one-line error when their features would pass `max_memory_gb`."""
    if subset is not None and len(cand) > max(subset, k):
        pick = torch.randperm(len(cand), generator=ctx.generator)[: max(subset, k)]
        cand = cand[pick.sort().values]
    need = (len(cand) + extra_items) * bytes_per_item
    if need > max_memory_gb * 2**30:
        fit = max(k, int(max_memory_gb * 2**30 // bytes_per_item) - extra_items)
        raise TodalError(f"Strategy {name!r} would hold {need / 2**30:.1f} GiB of features for {len(cand):,} candidates, "
                         f"over max_memory_gb={max_memory_gb:g}; pass the strategy option subset={fit:,} (a random "
                         "subset of the candidates) or raise max_memory_gb.")
    return cand


def per_sample_mean(per_elem: Tensor) -> Tensor:
    """`[N]` stays; `[N, *S]` (per-pixel values) -> the mean over S per sample."""
    return per_elem if per_elem.dim() == 1 else per_elem.flatten(1).mean(1)


class Strategy(abc.ABC):
    """Base of every strategy: validates the budget and the answer; subclasses supply `_select`.

    `__init__` only stores options. State that must survive a resume (caches, auxiliary nets)
    goes through `state_dict()` / `load_state_dict()`; the loop saves it in the run directory.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    shardable: ClassVar[bool] = False  # data-parallel runs: each rank scores a slice (score strategies)
    needs_ema: ClassVar[bool] = False
    needs_previous: ClassVar[bool] = False

    def __init__(self, **options):
        if options:
            raise param_error(next(iter(options)), f"strategy {self.name!r}", "a known option",
                              options[next(iter(options))], "See `todal strategies` for the options.")

    def objectives(self) -> list:
        """Training objectives this strategy adds to `fit()` (LL4AL's loss module); none by default."""
        return []

    def select(self, ctx: Context, budget: int) -> Tensor:
        """`budget` distinct unlabeled indices (all that are left, with a warning, when fewer)."""
        budget = check_int("budget", f"strategy {self.name!r}", budget, lo=1)
        k = clip_budget(budget, len(ctx.unlabeled), f"strategy {self.name!r}")
        if k == 0:
            return torch.empty(0, dtype=torch.long)
        if distributed.active() and not self.shardable:
            # needs every feature at once: rank 0 selects, the others take its picks (or its error)
            chosen = distributed.on_main(lambda: torch.as_tensor(self._select(ctx, k)).cpu())
        else:
            chosen = self._select(ctx, k)
        chosen = torch.as_tensor(chosen, dtype=torch.long).flatten()
        unl = torch.zeros(len(ctx.dataset), dtype=torch.bool)
        unl[ctx.unlabeled] = True
        problem = None
        if len(chosen) != k:
            problem = f"returned {len(chosen)} indices"
        elif len(chosen.unique()) != k:
            problem = f"returned {k - len(chosen.unique())} repeated indices"
        elif bool(((chosen < 0) | (chosen >= len(unl))).any()):
            problem = f"returned index {int(chosen[(chosen < 0) | (chosen >= len(unl))][0])}, outside the dataset"
        elif not bool(unl[chosen].all()):
            problem = f"returned index {int(chosen[~unl[chosen]][0])}, which is already labeled"
        if problem:
            raise RuntimeError(f"strategy {self.name!r} broke its contract: it must return {k} distinct unlabeled "
                               f"indices (from ctx.unlabeled or ctx.candidates) and {problem}; "
                               "todal.testing.check_strategy finds such bugs.")
        return chosen

    @abc.abstractmethod
    def _select(self, ctx: Context, k: int) -> Tensor:
        """k distinct indices from `ctx.unlabeled`, 1 <= k <= len(ctx.unlabeled)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ScoreStrategy(Strategy):
    """A strategy that scores candidates and takes the top k: subclasses supply `score`.

    After `select`, `last_scores_` is `(candidates [n], scores [n])` of that selection.
    """

    last_scores_: tuple[Tensor, Tensor] | None = None
    shardable: ClassVar[bool] = True

    @abc.abstractmethod
    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        """`[n]` informativeness of `candidates`; higher is picked first."""

    def ascending(self, ctx: Context) -> bool:
        """True to pick the lowest scores instead (the official code's first COD cycle)."""
        return False

    def score_with_tiebreak(self, ctx: Context, candidates: Tensor) -> tuple[Tensor, Tensor | None]:
        """`(score, tiebreak)`: scores with few distinct values (vote counts) also return a `[n]`
        secondary score that orders their ties, higher first; None: ties keep index order."""
        return self.score(ctx, candidates), None

    def _select(self, ctx: Context, k: int) -> Tensor:
        cand = ctx.pool_for(k)
        if distributed.active():  # each rank scores its slice; all gather the scores, all take the same top-k
            scores, tiebreak = self.score_with_tiebreak(ctx, distributed.shard(cand))
            scores = distributed.unshard(scores.float(), len(cand))
            tiebreak = None if tiebreak is None else distributed.unshard(tiebreak.float(), len(cand))
        else:
            scores, tiebreak = self.score_with_tiebreak(ctx, cand)
        self.last_scores_ = (cand, scores)  # what the selection saw, for queues that show each pick's score
        if tiebreak is None:
            return cand[top_k(scores, k, largest=not self.ascending(ctx))]
        sign = -1.0 if self.ascending(ctx) else 1.0
        return cand[top_k_with_tiebreak(sign * scores, tiebreak, k)]
