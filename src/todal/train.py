"""fit(): one training loop for supervised and semi-supervised runs (Eq. 8 and Eq. 9).

Each step draws a labeled batch and, when a consistency objective is given, an unlabeled batch:

    L = CE(f(x_l; w), y) + λ · mean_u ||f(x_u; w) - f(x_u; w~)||²            (Eq. 9)

the teacher w~ runs without gradients and moves toward w after every optimizer step (Eq. 6). The step is
written once, in `fit`; how the model runs (device, precision, data parallelism) is `_Forward`, how batches
are read and augmented is `_Batches`, and the consistency term is an `Objective` the step calls.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from .progress import bar as progress_bar

from . import distributed
from .ema import EMA
from .errors import Bool, Choice, Int, Real, TodalError, check_choice, param_error
from .inference import Transform, fetch, fetch_inputs, is_lazy, on_device, read, train_transform
from .objectives import Consistency, Objective, OfficialConsistency
from .settings import check, setting, to_dict
from .tasks import Task


@dataclass
class TrainConfig:
    """Training settings of one cycle. Defaults: the paper's appendix B (ResNet-18 on CIFAR)."""

    epochs: int = setting(200, Int(lo=1), "training epochs per cycle")
    batch_size: int = setting(128, Int(lo=1), "labeled samples per step")
    lr: float = setting(0.1, Real(lo=0, lo_open=True), "learning rate")
    momentum: float = setting(0.9, Real(lo=0), "SGD momentum")
    weight_decay: float = setting(5e-4, Real(lo=0), "weight decay")
    optimizer: str = setting("sgd", Choice(("sgd", "adam")), "sgd or adam")
    lr_drop_at: float = setting(0.8, Real(lo=0, hi=1, lo_open=True),
                                "fraction of the epochs after which the learning rate drops")
    lr_drop: float = setting(0.1, Real(lo=0), "factor of the learning-rate drop")
    unlabeled_batch_size: int | None = setting(None, Int(lo=1, optional=True),
                                               "unlabeled samples per step of the TOD loss (None: batch_size)")
    precision: str = setting("auto", Choice(("auto", "fp32", "bf16")),
                             "auto: bf16 autocast on a CUDA device that has it, fp32 elsewhere")
    channels_last: bool | None = setting(None, Bool(optional=True, expected="None (on CUDA), true or false"),
                                         "channels-last memory format (None: on CUDA for image batches)")
    compile: bool = setting(False, Bool(), "torch.compile the model's forward for training")
    sync_bn: bool = setting(False, Bool(), "data-parallel runs: BatchNorm statistics over the whole batch (GPUs)")
    backbone_lr: float | None = setting(None, Real(lo=0, optional=True, expected="a float >= 0 or None"),
                                        "learning rate of a model's backbone (None: lr/10 for a pretrained one, "
                                        "else lr)")

    def __post_init__(self):
        check(self)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """bf16 when asked for, or by default on a CUDA device that supports it; None: fp32."""
        if self.precision == "bf16":
            return torch.bfloat16
        if self.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None

    def use_channels_last(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.channels_last is None else self.channels_last

    def to_dict(self) -> dict:
        return to_dict(self)


def param_groups(model: nn.Module, extra: list, cfg: TrainConfig) -> list[dict]:
    """The optimizer's parameter groups: a model with a `backbone` (todal.models.pretrained) trains it at
    `cfg.backbone_lr` (default: lr/10 when the backbone is pretrained) and the rest (its head, `extra`) at lr."""
    from .models.source import PRETRAINED_LR_SCALE

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return [{"params": list(model.parameters()) + list(extra)}]
    lr = cfg.backbone_lr if cfg.backbone_lr is not None else \
        cfg.lr * (PRETRAINED_LR_SCALE if getattr(model, "pretrained", False) else 1.0)
    inside = {id(p) for p in backbone.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) in inside], "lr": lr},
            {"params": [p for p in model.parameters() if id(p) not in inside] + list(extra)}]


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _at_least(idx: Tensor, n: int) -> Tensor:
    """`idx` repeated up to n items when shorter, so every rank's slice of a small last batch is non-empty."""
    return idx if len(idx) >= n else idx.repeat(-(-n // len(idx)))[:n]


class _Heads(nn.Module):
    """A model's two heads as its forward (`model.heads(x)`), for DistributedDataParallel to wrap."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.heads(x)


class _Cycler:
    """Endless batches of indices, reshuffled (by the generator) on every pass."""

    def __init__(self, indices: Tensor, batch_size: int, generator: torch.Generator):
        self.indices, self.batch_size, self.generator = indices, batch_size, generator
        self._order, self._pos = None, 0

    def next(self) -> Tensor:
        if self._order is None or self._pos + self.batch_size > len(self._order):
            self._order = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
            self._pos = 0
        out = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return out


class _Forward:
    """The model as training runs it: on the device, under autocast, channels-last, wrapped in
    DistributedDataParallel and compiled when asked. Outputs come back as fp32."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, *, two_heads: bool):
        self.model, self.device = model.to(device).train(), device
        self.amp = cfg.autocast_dtype(device)
        self.channels_last = cfg.use_channels_last(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.ddp = distributed.active()
        self.two_heads = self.ddp and two_heads
        forward = model
        if self.ddp:
            if cfg.sync_bn:
                if device.type != "cuda":
                    raise TodalError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only); drop it "
                                     "on CPU, or use a model without batch statistics (small_cnn norm='group').")
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            # The two-head consistency runs the student through `heads`: DDP then wraps that, so its gradients
            # are averaged like any forward's (a call to model.heads beside DDP would bypass it).
            forward = nn.parallel.DistributedDataParallel(_Heads(model) if two_heads else model,
                                                          device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = torch.compile(forward) if cfg.compile else forward

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()

    def shard(self, t: Tensor) -> Tensor:
        """This rank's slice of a batch every rank read whole (data-parallel runs)."""
        return distributed.shard(t) if self.ddp else t

    def place(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def student(self, x: Tensor) -> Tensor:
        with self.autocast():
            return (self.forward(x)[0] if self.two_heads else self.forward(x)).float()

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with self.autocast():
            a, b = self.forward(x) if self.two_heads else self.model.heads(x)
        return a.float(), b.float()

    def of(self, teacher: nn.Module) -> Callable[[Tensor], Tensor]:
        """A fixed model's outputs (the teacher's), without gradients, under the same precision."""
        def run(x: Tensor) -> Tensor:
            with torch.no_grad(), self.autocast():
                return teacher(x).float()

        return run


class _Batches:
    """An epoch's batches: the labeled ones in a seeded order, each with the unlabeled batch of its step.

    Every rank reads and augments whole batches (a one-process run's random draws) and keeps its slice. A
    dataset read a sample at a time has its batches read ahead by worker processes (`read`): its unlabeled
    batches are then drawn at the start of the epoch; results do not depend on the number of workers."""

    def __init__(self, dataset, labeled: Tensor, unlabeled: Tensor | None, cfg: TrainConfig, generator: torch.Generator,
                 device: torch.device):
        self.lazy = is_lazy(dataset)
        self.dataset = dataset if self.lazy else on_device(dataset, device)  # on a GPU: inputs moved there once
        self.labeled, self.batch_size, self.generator = labeled, cfg.batch_size, generator
        self.unlabeled = None if unlabeled is None else _Cycler(unlabeled, cfg.unlabeled_batch_size or cfg.batch_size,
                                                                 generator)
        self.steps = -(-len(labeled) // cfg.batch_size)

    def _widen(self, idx: Tensor) -> Tensor:
        return _at_least(idx, distributed.world_size()) if distributed.active() else idx

    def epoch(self) -> Iterator[tuple[Tensor, Tensor, Callable[[], Tensor] | None]]:
        """`(x, y, next_unlabeled)` per step: the labeled batch, and a call reading the step's unlabeled inputs."""
        order = self.labeled[torch.randperm(len(self.labeled), generator=self.generator)]
        batches = [self._widen(order[b * self.batch_size : (b + 1) * self.batch_size]) for b in range(self.steps)]
        unl = self.unlabeled
        if self.lazy:
            labeled_reads = read(self.dataset, batches)
            reads = read(self.dataset, [self._widen(unl.next()) for _ in batches], inputs_only=True) if unl else None
            next_unlabeled = (lambda: next(reads)) if reads is not None else None
        else:
            labeled_reads = (fetch(self.dataset, idx) for idx in batches)
            next_unlabeled = (lambda: fetch_inputs(self.dataset, self._widen(unl.next()))) if unl else None
        for _ in range(self.steps):
            x, y = next(labeled_reads)
            yield x, y, next_unlabeled


def _augmenters(dataset, transform: Transform | None, generator: torch.Generator):
    """`(pair(x, y), inputs(x))`: the training augmentation of a labeled batch and of an unlabeled one.

    Without a `transform`, a dataset with `train_pair_transform(x, y, generator)` (segmentation) crops and
    flips image and mask together; an unlabeled image goes through it with an all-zero stand-in mask (a
    broadcast view, no copy). Else `transform(x, generator)` (default `train_transform(dataset)`), labels kept.
    """
    pair = getattr(dataset, "train_pair_transform", None) if transform is None else None
    if pair is not None:
        def inputs(x: Tensor) -> Tensor:
            return pair(x, torch.zeros((), dtype=torch.long).expand(len(x), *x.shape[2:]), generator)[0]

        return (lambda x, y: pair(x, y, generator)), inputs
    transform = transform or train_transform(dataset)

    def inputs(x: Tensor) -> Tensor:
        return transform(x, generator)  # all randomness from one generator

    return (lambda x, y: (inputs(x), y)), inputs


def consistency_for(consistency: Consistency | str | None, ema: EMA | None, unlabeled: Tensor | None
                    ) -> Consistency | None:
    """The consistency objective `fit` trains with: a `Consistency`, or a flavor's name ("default", "paper",
    "official": that flavor's TOD loss against the EMA teacher), or None; checked against what it needs."""
    unsup = consistency
    if isinstance(consistency, str):
        from .flavor import FLAVORS, flavor_for

        check_choice("consistency", "fit", consistency, FLAVORS,
                     "Name a flavor for its TOD loss against ema=, or pass a todal.objectives.Consistency.")
        if ema is None:
            raise param_error("consistency", "fit", "used with ema= (the EMA teacher) and unlabeled=", consistency,
                              "Pass ema=todal.EMA(model) and unlabeled=, or consistency=None.")
        unsup = flavor_for(consistency).consistency_objective(ema.model)
    elif consistency is not None and not isinstance(consistency, Consistency):
        raise param_error("consistency", "fit", "a todal.objectives.Consistency, a flavor name or None",
                          type(consistency).__name__)
    if unsup is not None and (unlabeled is None or len(unlabeled) == 0):
        raise param_error("consistency", "fit", "used with a non-empty unlabeled set", type(unsup).__name__,
                          "Pass unlabeled=, or consistency=None.")
    return unsup


def fit(
    model: nn.Module,
    task: Task,
    dataset,
    labeled: Tensor,
    *,
    cfg: TrainConfig | None = None,
    generator: torch.Generator,
    unlabeled: Tensor | None = None,
    ema: EMA | None = None,
    consistency: Consistency | str | None = None,
    objectives: Sequence[Objective] = (),
    transform: Transform | None = None,
    device: torch.device | str | None = None,
    progress: str | None = None,
) -> dict:
    """Train `model` on `labeled` for `cfg.epochs` epochs (Eq. 8, or Eq. 9 with a consistency objective);
    returns `{"loss", "steps", "time_s", "epoch_losses"}` (`loss`: the last epoch's mean).

    consistency: None (task loss only; an `ema`, if given, still follows the model), a `Consistency` objective
        (`Eq7Consistency(teacher)`, `OfficialConsistency(teacher)`, or your own), or a flavor's name:
        "default" is the TOD loss `ActiveLoop` trains with by default (`todal.flavor`), against `ema.model`.
    transform: the training augmentation of the inputs (default: `train_transform(dataset)`; a dataset with
        `train_pair_transform(x, y, generator)` augments image and mask together when it is not given).
    """
    device = torch.device(device or "cpu")
    cfg = cfg or TrainConfig()
    labeled = torch.as_tensor(labeled, dtype=torch.long)
    if len(labeled) == 0:
        raise param_error("labeled", "fit", "a non-empty set of indices", "[]")
    unsup = consistency_for(consistency, ema, unlabeled)
    if unsup is not None:
        unsup.check(model)
    pair, inputs = _augmenters(dataset, transform, generator)
    run = _Forward(model, cfg, device, two_heads=isinstance(unsup, OfficialConsistency))
    extra_params = [p for obj in objectives for p in obj.parameters()]  # outside DDP: averaged by hand
    for obj in objectives:
        obj.attach(model)
        obj.train(True)
    opt = make_optimizer(param_groups(model, [p for obj in objectives for p in obj.parameters()], cfg), cfg)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(round(cfg.lr_drop_at * cfg.epochs))],
                                                 gamma=cfg.lr_drop)
    data = _Batches(dataset, labeled, unlabeled if unsup is not None else None, cfg, generator, device)
    teacher = None
    if unsup is not None:
        unsup.teacher.to(device)
        teacher = run.of(unsup.teacher)

    t0, steps, epoch_loss, epoch_losses = time.perf_counter(), 0, float("nan"), []
    bar = progress_bar(range(cfg.epochs), progress, unit="epoch", lines=True)
    try:
        for epoch in bar:
            total = torch.zeros((), device=device)  # summed on the device: no host sync per step
            for x, y, next_unlabeled in data.epoch():
                x, y = pair(x, y)
                x, y = run.place(run.shard(x)), run.shard(y).to(device, non_blocking=True)
                if unsup is not None:
                    out, state = unsup.labeled_forward(run.student, run.heads, x)
                else:
                    out = run.student(x)
                loss = task.loss(out, y)  # Eq. 8
                if objectives:
                    per_sample = task.per_sample_loss(out, y)
                    for obj in objectives:
                        with run.autocast():  # hooked features may be bf16
                            extra = obj.loss(out=out, y=y, per_sample_loss=per_sample, epoch=epoch, epochs=cfg.epochs)
                        loss = loss + extra.float()
                if unsup is not None:
                    xu = run.place(run.shard(inputs(next_unlabeled())))
                    unsup.teacher.train(unsup.teacher_train_mode)
                    loss = loss + unsup.unlabeled_loss(run.student, run.heads, teacher, x, state, xu)  # Eq. 9
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if run.ddp and extra_params:
                    distributed.average_gradients(extra_params)
                opt.step()
                if ema is not None:
                    ema.update(model)
                total += loss.detach()
                steps += 1
            sched.step()
            epoch_loss = distributed.mean(float(total) / data.steps)  # one host sync per epoch
            epoch_losses.append(epoch_loss)
            bar.set_postfix(loss=f"{epoch_loss:.3f}")
    finally:
        for obj in objectives:
            obj.detach()
    return {"loss": epoch_loss, "steps": steps, "time_s": time.perf_counter() - t0, "epoch_losses": epoch_losses}


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, dataset, *, indices: Tensor | None = None, batch_size: int = 256,
             transform: Transform | None = None, device: torch.device | str | None = None, per_item: bool = False):
    """Metrics in one pass over `indices` (default: the whole dataset): accuracy, mean loss, per-class accuracy
    (for segmentation mIoU too), in eval mode. `per_item`: also whether each sample's top class was right,
    `(metrics, correct [n])` (classification)."""
    from .inference import chunks, eval_mode, test_transform

    device = torch.device(device or "cpu")
    transform = transform or test_transform(dataset)
    conf = torch.zeros(task.num_classes, task.num_classes, dtype=torch.long)
    loss_sum, count = 0.0, 0
    indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    correct = torch.zeros(len(indices), dtype=torch.bool) if per_item else None
    with eval_mode(model):
        for idx in chunks(indices, batch_size):
            x, y = fetch(dataset, idx)
            out = model(transform(x).to(device)).float().cpu()
            loss_sum += float(task.per_sample_loss(out, y).sum())
            if correct is not None:
                correct[count: count + len(idx)] = out.argmax(1) == y
            count += len(idx)
            conf += task.confusion(out, y)
    metrics = task.metrics(conf, loss_sum, count)
    return (metrics, correct) if per_item else metrics
