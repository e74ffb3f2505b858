"""fit(): one training loop for supervised and semi-supervised runs (Eq. 8 and Eq. 9).

Each step draws a labeled batch and, when a teacher is given, an unlabeled batch:

    L = CE(f(x_l; w), y) + λ · mean_u ||f(x_u; w) - f(x_u; w~)||²            (Eq. 9, "eq7")

the teacher w~ runs without gradients and moves toward w after every optimizer step (Eq. 6).
"""

from __future__ import annotations

import contextlib

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import distributed
from .ema import EMA
from .errors import Bool, Choice, Int, Real, TodalError, check_choice, param_error, validate
from .inference import Transform, fetch, fetch_inputs, is_lazy, on_device, read, train_transform
from .objectives import Consistency, Eq7Consistency, Objective, OfficialConsistency
from .tasks import Task

# the string shortcuts of fit(consistency=...)
CONSISTENCIES = {"eq7": Eq7Consistency, "official": OfficialConsistency}


_TRAIN_RULES = {
    "epochs": Int(lo=1), "batch_size": Int(lo=1), "lr": Real(lo=0, lo_open=True), "momentum": Real(lo=0),
    "weight_decay": Real(lo=0), "optimizer": Choice(("sgd", "adam")), "lr_drop_at": Real(lo=0, hi=1, lo_open=True),
    "lr_drop": Real(lo=0), "unlabeled_batch_size": Int(lo=1, optional=True),
    "precision": Choice(("auto", "fp32", "bf16")), "compile": Bool(), "sync_bn": Bool(),
    "channels_last": Bool(optional=True, expected="None (on CUDA), true or false"),
}


@dataclass
class TrainConfig:
    """One cycle's training. Defaults: the paper's appendix B (ResNet-18 on CIFAR)."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    lr_drop_at: float = 0.8  # fraction of the epochs after which lr is multiplied by lr_drop
    lr_drop: float = 0.1
    unlabeled_batch_size: int | None = None  # default: batch_size
    precision: str = "auto"  # "auto": bf16 autocast on a CUDA device that has it, fp32 elsewhere; "fp32"; "bf16"
    channels_last: bool | None = None  # None: on CUDA for image batches [B, C, H, W]
    compile: bool = False  # torch.compile the model's forward for training
    sync_bn: bool = False  # data-parallel runs: BatchNorm statistics over the whole batch, not each rank's slice

    def __post_init__(self):
        vars(self).update(validate("TrainConfig", _TRAIN_RULES, **{k: getattr(self, k) for k in _TRAIN_RULES}))

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
        return asdict(self)


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


def fit(
    model: nn.Module,
    task: Task,
    dataset,
    labeled: Tensor,
    *,
    cfg: TrainConfig,
    generator: torch.Generator,
    unlabeled: Tensor | None = None,
    ema: EMA | None = None,
    consistency: Consistency | str | None = None,
    teacher: nn.Module | None = None,
    lam: float = 0.05,
    consistency_reduction: str = "sum",
    teacher_train_mode: bool = False,
    objectives: Sequence[Objective] = (),
    transform: Transform | None = None,
    device: torch.device | str | None = None,
    progress: str | None = None,
) -> dict:
    """Train `model` on `labeled` for `cfg.epochs` epochs; returns `{"loss", "steps", "time_s", "epoch_losses"}`
    (`loss`: the last epoch's mean; `epoch_losses`: every epoch's, to see whether training has plateaued).

    transform: the training augmentation of the inputs (default: `train_transform(dataset)`). When
        it is not given and the dataset has `train_pair_transform(x, y, generator)` (segmentation
        data), that transform is used instead: on a labeled batch, image and mask together; on an
        unlabeled batch, the image only.

    consistency: None (task loss only; the EMA, if given, still follows the model), a `Consistency`
        objective (`Eq7Consistency`, `OfficialConsistency`, or your own), or the shortcuts "eq7" and
        "official", built here from `teacher`/`ema`, `lam`, `consistency_reduction` and `teacher_train_mode`;
        all need `unlabeled`.
    consistency_reduction: Eq. 7 summed ("sum", as printed) or averaged ("mean", the code) over the outputs.
    teacher: a fixed consistency target (the previous cycle's model: the CyclicOD loss of Fig. 10);
        default `ema.model`, the EMA teacher. The EMA, if given, still follows the model.
    """
    device = torch.device(device or "cpu")
    labeled = torch.as_tensor(labeled, dtype=torch.long)
    if len(labeled) == 0:
        raise param_error("labeled", "fit", "a non-empty set of indices", "[]")
    unsup: Consistency | None = None
    if isinstance(consistency, Consistency):
        unsup = consistency
    elif consistency is not None:
        check_choice("consistency", "fit", consistency, tuple(CONSISTENCIES))
        check_choice("consistency_reduction", "fit", consistency_reduction, ("sum", "mean"))
        if ema is None and teacher is None:
            raise param_error("consistency", "fit", "used with a teacher (ema= or teacher=) and a non-empty "
                              "unlabeled set", consistency, "Pass ema= and unlabeled=, or consistency=None.")
        kwargs = {"reduction": consistency_reduction} if consistency == "eq7" else {}
        unsup = CONSISTENCIES[consistency](teacher if teacher is not None else ema.model, lam,
                                          teacher_train_mode=teacher_train_mode, **kwargs)
    if unsup is not None:
        if unlabeled is None or len(unlabeled) == 0:
            raise param_error("consistency", "fit", "used with a teacher (ema= or teacher=) and a non-empty "
                              "unlabeled set", type(unsup).__name__, "Pass ema= and unlabeled=, or consistency=None.")
        unsup.check(model)
    pair = getattr(dataset, "train_pair_transform", None) if transform is None else None
    if pair is not None:
        # Dense labels: the image and its mask are cropped and flipped together. An unlabeled image
        # goes through the same transform with an all-zero stand-in mask (a broadcast view, no copy).
        def augment_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            return pair(x, y, generator)

        def augment(x: Tensor) -> Tensor:
            return pair(x, torch.zeros((), dtype=torch.long).expand(len(x), *x.shape[2:]), generator)[0]
    else:
        transform = transform or train_transform(dataset)

        def augment(x: Tensor) -> Tensor:
            return transform(x, generator)  # all randomness from one generator

        def augment_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            return augment(x), y

    model.to(device).train()
    amp = cfg.autocast_dtype(device)
    channels_last = cfg.use_channels_last(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    ddp = distributed.active()
    if ddp:
        if cfg.sync_bn:
            if device.type != "cuda":
                raise TodalError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only); drop it on "
                                 "CPU, or use a model without batch statistics (small_cnn norm='group').")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # The two-head consistency runs the student through `heads`: DDP then wraps that, so its gradients
        # are averaged like any forward's (a call to model.heads beside DDP would bypass it).
        two_heads = isinstance(unsup, OfficialConsistency)
        forward = nn.parallel.DistributedDataParallel(_Heads(model) if two_heads else model,
                                                      device_ids=[device.index] if device.type == "cuda" else None)
    else:
        forward, two_heads = model, False
    if cfg.compile:
        forward = torch.compile(forward)
    extra_params = [p for obj in objectives for p in obj.parameters()]  # outside DDP: averaged by hand

    def place(x: Tensor) -> Tensor:
        x = x.to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

    def autocast():
        return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    for obj in objectives:
        obj.attach(model)
        obj.train(True)
    params = list(model.parameters()) + [p for obj in objectives for p in obj.parameters()]
    opt = make_optimizer(params, cfg)
    drop_epoch = int(round(cfg.lr_drop_at * cfg.epochs))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[drop_epoch], gamma=cfg.lr_drop)
    steps_per_epoch = -(-len(labeled) // cfg.batch_size)
    unl = _Cycler(unlabeled, cfg.unlabeled_batch_size or cfg.batch_size, generator) if unsup else None
    if unsup is not None:
        unsup.teacher.to(device)

    def student(x: Tensor) -> Tensor:
        with autocast():
            return (forward(x)[0] if two_heads else forward(x)).float()

    def heads(x: Tensor) -> tuple[Tensor, Tensor]:
        with autocast():
            a, b = forward(x) if ddp and two_heads else model.heads(x)
        return a.float(), b.float()

    def teacher_out(x: Tensor) -> Tensor:
        with torch.no_grad(), autocast():
            return unsup.teacher(x).float()

    def widen(idx: Tensor) -> Tensor:
        return _at_least(idx, distributed.world_size()) if ddp else idx

    # a dataset read a sample at a time: its batches are read ahead (by worker processes, `read`), so the
    # epoch's unlabeled batches are drawn up front; the results do not depend on the number of workers
    lazy = is_lazy(dataset)
    if not lazy:
        dataset = on_device(dataset, device)  # on a GPU: in-memory inputs moved there once

    t0, steps, epoch_loss, epoch_losses = time.perf_counter(), 0, float("nan"), []
    bar = tqdm(range(cfg.epochs), desc=progress, disable=progress is None, leave=False, unit="epoch")
    try:
        for epoch in bar:
            order = labeled[torch.randperm(len(labeled), generator=generator)]
            total = torch.zeros((), device=device)  # summed on the device: no host sync per step
            # data-parallel: every rank reads and augments the whole batch (a one-process run's random
            # draws), then keeps its slice
            batches = [widen(order[b * cfg.batch_size : (b + 1) * cfg.batch_size]) for b in range(steps_per_epoch)]
            if lazy:  # read ahead by worker processes; the unlabeled batches of the epoch drawn up front
                labeled_reads = read(dataset, batches)
                unlabeled_reads = read(dataset, [widen(unl.next()) for _ in batches], inputs_only=True) if unsup else None
            else:
                labeled_reads, unlabeled_reads = (fetch(dataset, idx) for idx in batches), None
            for b in range(steps_per_epoch):
                x, y = augment_pair(*next(labeled_reads))
                if ddp:
                    x, y = distributed.shard(x), distributed.shard(y)
                x, y = place(x), y.to(device, non_blocking=True)
                if unsup is not None:
                    out, state = unsup.labeled_forward(student, heads, x)
                else:
                    out = student(x)
                loss = task.loss(out, y)  # Eq. 8
                if objectives:
                    per_sample = task.per_sample_loss(out, y)
                    for obj in objectives:
                        with autocast():  # hooked features may be bf16
                            extra = obj.loss(out=out, y=y, per_sample_loss=per_sample, epoch=epoch, epochs=cfg.epochs)
                        loss = loss + extra.float()
                if unsup is not None:
                    raw = next(unlabeled_reads) if unlabeled_reads is not None else fetch_inputs(dataset, widen(unl.next()))
                    xu = augment(raw)
                    xu = place(distributed.shard(xu) if ddp else xu)
                    unsup.teacher.train(unsup.teacher_train_mode)
                    loss = loss + unsup.unlabeled_loss(student, heads, teacher_out, x, state, xu)  # Eq. 9
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if ddp and extra_params:
                    distributed.average_gradients(extra_params)
                opt.step()
                if ema is not None:
                    ema.update(model)
                total += loss.detach()
                steps += 1
            sched.step()
            epoch_loss = distributed.mean(float(total) / steps_per_epoch)  # one host sync per epoch
            epoch_losses.append(epoch_loss)
            bar.set_postfix(loss=f"{epoch_loss:.3f}")
    finally:
        for obj in objectives:
            obj.detach()
    return {"loss": epoch_loss, "steps": steps, "time_s": time.perf_counter() - t0, "epoch_losses": epoch_losses}


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, dataset, *, batch_size: int = 256,
             transform: Transform | None = None, device: torch.device | str | None = None) -> dict:
    """Test metrics in one pass: accuracy, mean loss, per-class accuracy (eval mode)."""
    from .inference import chunks, eval_mode, test_transform

    device = torch.device(device or "cpu")
    transform = transform or test_transform(dataset)
    conf = torch.zeros(task.num_classes, task.num_classes, dtype=torch.long)
    loss_sum, count = 0.0, 0
    with eval_mode(model):
        for idx in chunks(torch.arange(len(dataset)), batch_size):
            x, y = fetch(dataset, idx)
            out = model(transform(x).to(device)).float().cpu()
            loss_sum += float(task.per_sample_loss(out, y).sum())
            count += len(idx)
            conf += task.confusion(out, y)
    return task.metrics(conf, loss_sum, count)
