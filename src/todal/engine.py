"""One active-learning cycle, written once: train -> evaluate -> select, and the checkpoints between them.

`ActiveLoop` drives it over a run directory (todal/loop.py), `Project.step` over a labeling project's SQLite
store (todal/project/core.py), the bench over protocols (through ActiveLoop). None of them trains or selects
by itself: each hands the engine the labels it holds and the candidates it may query, and keeps the files.

    engine = Engine(source, task, strategy, flavor=..., train=..., semi=True, seeds=Seeds(0), ...)
    model, ema = engine.restore(checkpoints.load("cycle_0.pt"))      # the models a cycle starts from
    stats = engine.train(model, ema, given, labeled, unlabeled, n=1)  # the flavor's objectives and teacher
    metrics = engine.evaluate(model, test_set)
    picked = engine.select(model, ema, dataset, ..., budget=100, n=1)
    checkpoints.save("cycle_1.pt", engine.state(model, ema))

Checkpoints hold weights only (tensors, numbers, strings, lists, dicts) and are loaded with
`weights_only=True`: opening a run directory or project someone else made never runs code from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .atomic import torch_save
from .ema import EMA
from .errors import TodalError
from .flavor import Flavor
from .inference import Transform
from .models.source import ModelSource
from .strategies import Context, Strategy
from .strategies.base import ScoreStrategy
from .tasks import Task
from .train import TrainConfig, evaluate, fit


# --- randomness ------------------------------------------------------------------------------------
def derive_seed(seed: int, *keys) -> int:
    """A 63-bit seed for one (stage, cycle, ...) from the run's seed: resuming reproduces it."""
    h = hashlib.sha256(repr((int(seed),) + keys).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def generator(seed: int, *keys) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


@contextlib.contextmanager
def seeded(seed: int, *keys):
    """Seed torch's global RNG (dropout, initializers) for a block and restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, *keys))
        yield


@dataclass(frozen=True)
class Seeds:
    """The random streams of a driver: models from `(seed, models, *key)`, stage `s` of cycle or step `n` from
    `(seed, prefix + s, n)`. Each driver keeps the streams its earlier runs were made with."""

    seed: int
    models: str = "model"
    prefix: str = ""

    def stage(self, stage: str, n: int) -> tuple:
        return (self.prefix + stage, n)


# --- checkpoints -----------------------------------------------------------------------------------
class Checkpoints:
    """Weights-only checkpoint files in one folder, each written atomically."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / name

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def save(self, name: str, state: dict) -> None:
        torch_save(self.path(name), state)

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def load(self, name: str, missing: str = "") -> dict:
        """The checkpoint's tensors and plain values; a file holding anything else is refused, never run."""
        return load_weights(self.path(name), missing)


def load_weights(path: str | Path, missing: str = "") -> dict:
    """`torch.load(path, weights_only=True)` on the CPU, with one-line errors for a missing file and for one that
    holds pickled objects (code would run on loading it)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TodalError(missing or f"Checkpoint {path} is missing; restore it, or start over.") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError, ValueError) as e:
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise TodalError(f"{path} is not a weights-only checkpoint ({why}); todal loads tensors and plain values only "
                         "and never runs code from a file: delete it (and what was made after it) to retrain, or "
                         "restore the file todal wrote.") from None


# --- the engine ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """What a selection picked: dataset indices `[k]` and, for score strategies, their scores `[k]`."""

    indices: Tensor
    scores: Tensor | None = None


class Engine:
    """The pieces of one cycle for a configured run; the drivers call them in order and keep the files.

    Args:
        source: where models come from; `in_channels`, `num_classes`: what they are built for.
        task, strategy, flavor, train: the task, the selection strategy (the engine restores its state), the
            flavor (TOD's choices) and the training settings.
        semi: train with the flavor's TOD loss (Eq. 9); ema_decay: α of Eq. 6.
        seeds: the driver's random streams. batch_size: evaluation and scoring batch.
        augment: the training augmentation `fit` takes (None: the dataset's default).
        workdir: where strategies may keep files (COD's memory-mapped outputs). unit: "cycle" or "step" (progress).
    """

    def __init__(self, source: ModelSource, task: Task, strategy: Strategy, *, flavor: Flavor, train: TrainConfig,
                 semi: bool, seeds: Seeds, in_channels: int, num_classes: int, ema_decay: float,
                 device: torch.device, batch_size: int, augment: Transform | None = None,
                 workdir: Path | None = None, progress: bool = False, unit: str = "cycle"):
        self.source, self.task, self.strategy, self.flavor = source, task, strategy, flavor
        self.train_cfg, self.semi, self.seeds, self.ema_decay = train, bool(semi), seeds, float(ema_decay)
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.device, self.batch_size, self.augment = device, int(batch_size), augment
        self.workdir, self.progress, self.unit = workdir, progress, unit
        self.needs_ema = self.semi or strategy.needs_ema

    # --- models ---------------------------------------------------------------------------------
    def new_model(self, *key) -> nn.Module:
        """A freshly initialized model, seeded by `key` ("init", "teacher", ...)."""
        second = self.semi and self.flavor.consistency == "official"
        with seeded(self.seeds.seed, self.seeds.models, *key):
            return self.source.build(in_channels=self.in_channels, num_classes=self.num_classes, second_head=second)

    def new_teacher(self, model: nn.Module) -> EMA | None:
        """The flavor's EMA teacher of `model` (a copy, or an independent network), or None when nothing needs one."""
        if not self.needs_ema:
            return None
        teacher = self.new_model("teacher") if self.flavor.ema_init == "independent" else None
        # Without the consistency loss nothing runs the teacher, so only averaging keeps its
        # BatchNorm statistics meaningful (EMAOD on a task-only run).
        buffers = self.flavor.ema_buffers or not self.semi
        return EMA(model, self.ema_decay, buffers=buffers, teacher=teacher)

    def model_with(self, weights: dict) -> nn.Module:
        """A model of this run holding `weights` (a state dict), on the CPU."""
        model = self.new_model("init")
        model.load_state_dict(weights)
        return model

    def initial(self) -> dict:
        """The state a run starts from: the initial model, its teacher, COD's cycle-0 reference where the flavor
        wants an independent one, and the strategy's state."""
        model = self.new_model("init")
        ema = self.new_teacher(model)
        reference = None
        if self.strategy.needs_previous and self.flavor.first_reference == "independent":
            reference = self.new_model("reference").state_dict()
        return {**self.state(model, ema), "reference": reference}

    def state(self, model: nn.Module, ema: EMA | None) -> dict:
        """What a checkpoint keeps after training: the model, its teacher and the strategy's state."""
        return {"model": model.state_dict(), "ema": ema.state_dict() if ema else None,
                "strategy": self.strategy.state_dict()}

    def restore(self, state: dict) -> tuple[nn.Module, EMA | None]:
        """The model and teacher a checkpoint holds, on the device, and the strategy's state where it holds one
        (`"strategy": None` or absent leaves the strategy as it is). A run that needs a teacher gets a fresh one
        of the model when the checkpoint has none; one that does not, gets none."""
        if state.get("strategy") is not None:
            self.strategy.load_state_dict(state["strategy"])
        model = self.model_with(state["model"])
        ema = self.new_teacher(model)
        if ema is not None:
            if state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            ema.model.to(self.device)  # EMAOD and QBC's snapshot committee run the teacher beside the model
        return model.to(self.device), ema

    # --- the stages -----------------------------------------------------------------------------
    def train(self, model: nn.Module, ema: EMA | None, data, labeled: Tensor, unlabeled: Tensor, *, n: int,
              previous: dict | None = None) -> dict:
        """Train on `labeled` (labels as `data` gives them: the pool's), with the flavor's TOD loss on `unlabeled`
        when semi-supervised; `previous`: the last cycle's weights (the CyclicOD loss's target). Returns fit's stats."""
        unsup = None
        if self.semi:
            target = None
            if self.flavor.consistency == "cyclic" and previous is not None:
                target = self.model_with(previous).requires_grad_(False)
            unsup = self.flavor.consistency_objective(ema.model if ema is not None else None, target)
        key = self.seeds.stage("train", n)
        with seeded(self.seeds.seed, *key):
            return fit(model, self.task, data, labeled, cfg=self.train_cfg, generator=generator(self.seeds.seed, *key),
                       unlabeled=unlabeled if unsup is not None else None, ema=ema, consistency=unsup,
                       objectives=self.strategy.objectives(), device=self.device, transform=self.augment,
                       progress=f"{self.unit} {n} train" if self.progress else None)

    def evaluate(self, model: nn.Module, dataset, indices: Tensor | None = None, *, per_item: bool = False):
        """The task's metrics of `model` on `dataset` (or its `indices`), in eval mode (`per_item`: with each
        sample's correctness, `todal.train.evaluate`)."""
        return evaluate(model, self.task, dataset, indices=indices, batch_size=self.batch_size, device=self.device,
                        per_item=per_item)

    @torch.no_grad()
    def signals(self, model: nn.Module, dataset, stop_set: Tensor) -> tuple[Tensor, float]:
        """`(predicted classes [n], overall uncertainty)` of `model` on the stop set (todal.stopping)."""
        from .inference import predict
        from .stopping import mean_uncertainty

        outs = torch.cat([o for _, o in predict(model, dataset, stop_set, batch_size=self.batch_size,
                                                device=self.device)])
        return outs.argmax(1), mean_uncertainty(outs.softmax(1))

    def candidates(self, unlabeled: Tensor, n: int) -> Tensor:
        """What a selection scores: the unlabeled pool, or the flavor's seeded random subset of it."""
        k = self.flavor.score_subset
        if k is None or k >= len(unlabeled):
            return unlabeled
        pick = torch.randperm(len(unlabeled), generator=generator(self.seeds.seed, *self.seeds.stage("subset", n)))[:k]
        return unlabeled[pick.sort().values]

    def select(self, model: nn.Module, ema: EMA | None, dataset, *, labeled: Tensor, labels, unlabeled: Tensor,
               budget: int, cycle: int, n: int, previous: Callable[[], nn.Module],
               candidates: Tensor | None = None) -> Selection:
        """`budget` samples of `unlabeled` picked by the strategy (scoring `candidates`, default: `candidates()`);
        `cycle` is what the strategy sees (0: the first selection), `previous` builds COD's reference model."""
        ctx = Context(model=model, task=self.task, dataset=dataset, labeled=labeled, unlabeled=unlabeled,
                      labels=labels, generator=generator(self.seeds.seed, *self.seeds.stage("select", n)), cycle=cycle,
                      device=self.device, batch_size=self.batch_size, ema_model=ema.model if ema else None,
                      flavor=self.flavor, candidates=self.candidates(unlabeled, n) if candidates is None else candidates,
                      previous=previous, workdir=self.workdir, progress=self.progress)
        with seeded(self.seeds.seed, *self.seeds.stage("select", n)):
            chosen = self.strategy.select(ctx, budget)
        scores = None
        if isinstance(self.strategy, ScoreStrategy) and self.strategy.last_scores_ is not None:
            cand, all_scores = self.strategy.last_scores_
            at = torch.full((len(dataset),), -1, dtype=torch.long)
            at[cand] = torch.arange(len(cand))
            scores = all_scores[at[chosen]]
        return Selection(chosen, scores)
