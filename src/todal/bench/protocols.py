"""Named experiment protocols for `todal bench`: `paper` (appendix B), `cpu` and `smoke`, one set per task.

A protocol is a small frozen dataclass; `protocol(name, overrides, task)` returns it with `--set KEY=VALUE`
overrides applied and validated, and `differences(p)` lists every value that differs from the `paper`
protocol of its task. The task comes from the dataset (`getattr(train_set, "task", "classification")`):
classification follows appendix B's Table 5 rows for CIFAR/SVHN (Sec. 5.2), segmentation its Cityscapes
row (Sec. 5.3, Fig. 8, Table 2).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field

import torch

from ..ema import DEFAULT_DECAY
from ..errors import TodalError, check_bool, check_choice, check_int, check_number, param_error
from ..flavor import FLAVORS
from ..settings import fields_of, parse_setting
from ..train import TrainConfig

TRAIN_KEYS = tuple(f.name for f in fields_of(TrainConfig))  # `--set epochs=3` and the other training settings


@dataclass(frozen=True)
class Protocol:
    """One bench protocol. Sizes (`initial`, `budget`) are fractions in (0, 1] or counts.

    strategies: the default methods (NAME or NAME+semi, or "all"); the Table 1 ablation (random, random+semi,
        cod, cod+semi) is always added. fig9: add `emaod` (and `emaod+semi`) for Fig. 9.
    grid_lams, grid_alphas: the λ x α grid of Fig. 12, run as cod+semi (empty: no grid), in the first
        `grid_trials` trials only (a sensitivity scan, not a comparison: it costs one run per cell).
    analysis_pool: score at most this many unlabeled samples per cycle in the loss-estimation
        analyses (a seeded random subset; None: the whole pool).
    score_subset: every strategy scores a seeded random subset of this many unlabeled samples per cycle,
        as the LL4AL, VAAL and TOD code bases do (None: the whole pool, appendix B).
    augment: the dataset's crop + flip training augmentation (False: none).
    requires_gpu: refuse to run on a CPU (with an estimate of how long it would take).
    task: "classification" or "segmentation"; set by the protocol family, not by --set.
    train: the training settings (`TrainConfig`); `--set epochs=3` sets one of them.
    eval_batch_size: batch of evaluation and scoring (None: the loop's default for the dataset).
    dataset_options: keyword arguments of the dataset reader (e.g. the number of scenes of
        fashion-mnist-scenes: {"size": 2000, "test_size": 500}).
    strategy_options: options per strategy name, e.g. {"qbc": {"scope": "all"}}.
    flavor_overrides: single flavor choices for every run (`todal.flavor.Flavor` fields), e.g.
        {"first_cycle_lowest": true} for the authors' first COD selection (benchmarks/cod-first-cycle).
    model, model_options, model_weights, frozen: the model source (`todal.models.ModelSource`): a built-in
        name, MODULE:FUNCTION, hf:ID_OR_DIR, torchvision:NAME or timm:NAME, a weights file, a frozen backbone.
    pool_size: each trial draws its own seeded random subset of this many training samples as its pool
        (fractions of `initial`/`budget` are of it); None: the whole training set.
    """

    name: str
    model: str
    task: str = "classification"
    model_options: dict = field(default_factory=dict)
    model_weights: str | None = None
    frozen: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    initial: int | float = 0.1
    budget: int | float = 0.05
    cycles: int = 7
    trials: int = 3
    ema_decay: float = DEFAULT_DECAY
    lam: float | None = None  # None: the flavor's (paper 0.05; official per dataset)
    augment: bool = True
    flavor: str = "paper"
    strategies: tuple = ("random", "entropy", "coreset", "ll4al", "vaal", "cod")
    fig9: bool = True
    grid_lams: tuple = ()
    grid_alphas: tuple = ()
    grid_trials: int = 1
    analysis_pool: int | None = None
    score_subset: int | None = None
    requires_gpu: bool = True
    eval_batch_size: int | None = None
    dataset_options: dict = field(default_factory=dict)
    strategy_options: dict = field(default_factory=dict)
    flavor_overrides: dict = field(default_factory=dict)
    pool_size: int | None = None

    def with_train(self, **changes) -> Protocol:
        """This protocol with training settings changed (checked by TrainConfig)."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def for_dataset(self, dataset: str) -> Protocol:
        """This protocol with λ resolved: an explicit `lam` stays; None takes the flavor's for `dataset`
        (the official code's per-dataset λ), so the runs, the grid and the report all name the λ used."""
        if self.lam is not None:
            return self
        from ..flavor import flavor_for

        lam = self.flavor_overrides.get("lam", flavor_for(self.flavor, dataset).lam)
        return dataclasses.replace(self, lam=float(lam))


# Appendix B: ResNet-18, 200 epochs, SGD lr 0.1 / momentum 0.9 / wd 5e-4, batch 128, lr x0.1 at 80%
# of the epochs, start 10%, +5% per cycle, 7 cycles, 3 trials, α 0.999, λ 0.05, crop + flip.
PAPER = Protocol(name="paper", model="resnet18", grid_lams=(0.01, 0.05, 0.1), grid_alphas=(0.99, 0.999))

# The whole suite on 2 CPU cores: the small CNN at width 0.5, 10 epochs a cycle, batch 64, SGD 0.05, a low-budget
# start of 500 labels, +250 a cycle (500 .. 2,000 of 60,000; the paper's 10% .. 40% of CIFAR would be 140x the
# training), each selection scoring a random 10,000 of the unlabeled pool (the LL4AL, VAAL and TOD code bases
# score subsets too).
CPU = dataclasses.replace(
    PAPER.with_train(epochs=10, batch_size=64, lr=0.05), name="cpu", model="small_cnn", model_options={"width": 0.5},
    initial=500, budget=250, strategies=("random", "entropy", "margin", "coreset", "badge", "batchbald", "ll4al", "cod"),
    grid_lams=(0.01, 0.05, 0.1), grid_alphas=(0.99, 0.999), analysis_pool=10000, score_subset=10000,
    requires_gpu=False, flavor="default")

# The `cpu` protocols run todal's default flavor (todal/flavor.py); `--set flavor=paper` is the paper's
# equations as printed, which the committed benchmarks/fashion-mnist-cpu and fashion-mnist-scenes-cpu ran.

# The paper's regime at CPU size: every cycle trained to convergence, from 10% labels in +5% steps. A seeded
# random pool of 6,000 Fashion-MNIST images per trial (600 .. 2,400 labeled over 7 cycles; the whole pool scored,
# as in appendix B), 40 epochs a cycle with the lr drop at 80% (chosen in benchmarks/converged-epochs), and
# α = 0.992 so that the EMA horizon 1/(1-α) = 125 steps is about an eighth of a cycle, the paper's proportion.
# The methods of Table 1, the uncertainty and diversity baselines, EMAOD, and cod + TOD loss under all three
# flavors.
CONVERGED = dataclasses.replace(
    CPU.with_train(epochs=40), name="converged", pool_size=6000, initial=0.1, budget=0.05, score_subset=None,
    analysis_pool=None, ema_decay=0.992, grid_lams=(), grid_alphas=(), fig9=False,
    strategies=("random", "entropy", "margin", "badge", "batchbald", "coreset", "qbc", "cod", "emaod", "cod+semi@paper",
                "cod+semi@official"))

# Seconds on `digits`: the same code paths at tiny sizes, for CI.
SMOKE = dataclasses.replace(
    PAPER.with_train(epochs=3, batch_size=32, lr=0.05), name="smoke", model="small_cnn", model_options={"width": 0.25},
    initial=100, budget=50, cycles=3, trials=2, strategies=("random", "entropy", "cod"), grid_lams=(),
    grid_alphas=(), analysis_pool=400, requires_gpu=False, flavor="default")

# --- segmentation ------------------------------------------------------------------------------------
# Fig. 8's methods (SRAAL, VAAL, QBC, Core-set, MC-Dropout, random, Ours) plus entropy; fig9 adds EMAOD.
SEG_STRATEGIES = ("random", "entropy", "coreset", "mc_dropout", "qbc", "vaal", "sraal", "cod")

# Sec. 5.3 and appendix B.2 / Table 5 (Cityscapes): DRN-D-22, 40 epochs a cycle, Adam lr 5e-4 with no weight
# decay ("-") and no lr drop stated, batch 4 of 688x688 crops with flips (the Cityscapes reader's default),
# start 10%, +5%, 7 cycles (10% .. 40% labeled), 3 trials, α 0.999, λ 0.05; mIoU on the 500 val images,
# evaluated whole, two at a time (`presets.PRESETS["cityscapes"]`). QBC's committee fine-tunes whole-network
# copies (scope "all", which qbc also picks itself for dense outputs): a per-pixel head is not a last nn.Linear.
SEG_PAPER = dataclasses.replace(
    PAPER.with_train(epochs=40, batch_size=4, lr=5e-4, optimizer="adam", weight_decay=0.0, lr_drop_at=1.0),
    task="segmentation", model="drn_d_22", strategies=SEG_STRATEGIES, grid_lams=(), grid_alphas=(), eval_batch_size=2,
    strategy_options={"qbc": {"scope": "all"}})

# fashion-mnist-scenes on 2 CPU cores: `presets.PRESETS["fashion-mnist-scenes"]` (seg_cnn at width 0.5, Adam
# 1e-3, batch 32, 10 epochs, no weight decay or lr drop) on 1,000 train and 500 test scenes of 64x64 (Cityscapes:
# 2,975 and 500 images of 2048x1024), with the paper's fractions: 100 labeled scenes at the start, +50 a cycle,
# 7 cycles (10% .. 40%); MC-Dropout at 10 passes instead of 20 (its selection dominated a run's time,
# benchmarks/segmentation-scoring/mc-dropout).
SEG_CPU = dataclasses.replace(
    SEG_PAPER.with_train(epochs=10, batch_size=32, lr=1e-3), name="cpu", model="seg_cnn", model_options={"width": 0.5},
    eval_batch_size=256, dataset_options={"size": 1000, "test_size": 500}, analysis_pool=1000, requires_gpu=False,
    strategy_options={"qbc": {"scope": "all"}, "mc_dropout": {"passes": 10}}, flavor="default")

# Minutes: 200 train and 50 test scenes, the same code paths.
SEG_SMOKE = dataclasses.replace(
    SEG_CPU.with_train(epochs=2, batch_size=16), name="smoke", model_options={"width": 0.25}, cycles=3, trials=2,
    strategies=("random", "entropy", "cod"), eval_batch_size=64, dataset_options={"size": 200, "test_size": 50},
    analysis_pool=100)

PROTOCOLS = {p.name: p for p in (PAPER, CPU, CONVERGED, SMOKE)}
SEGMENTATION_PROTOCOLS = {p.name: p for p in (SEG_PAPER, SEG_CPU, SEG_SMOKE)}
FAMILIES = {"classification": PROTOCOLS, "segmentation": SEGMENTATION_PROTOCOLS}


def _coerce(key: str, text: str, default):
    """Parse `text` (JSON where it parses, else the bare string) and check it against the default's type."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    owner = "bench protocol (--set)"
    if key in ("initial", "budget"):
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or \
             (isinstance(value, float) and 0 < value <= 1)
        if not ok:
            raise param_error(key, owner, "an int >= 1 or a float in (0, 1]", value)
        return value
    if key == "lam":
        return check_number(key, owner, value, lo=0, lo_open=True, optional=True,
                            expected="a float > 0, or null for the flavor's")
    if key == "model_weights":
        if value is not None and not isinstance(value, str):
            raise param_error(key, owner, "a path to a weights file, or null", value)
        return value
    if key in ("analysis_pool", "eval_batch_size", "score_subset", "pool_size"):
        return check_int(key, owner, value, lo=1, optional=True, expected="an int >= 1 or null")
    if isinstance(default, bool):
        return check_bool(key, owner, value)
    if isinstance(default, int):
        return check_int(key, owner, value, lo=1)
    if isinstance(default, float):
        return check_number(key, owner, value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise param_error(key, owner, "a list, e.g. [0.01,0.05] or a,b", value)
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise param_error(key, owner, 'a JSON object, e.g. {"width": 0.5}', value)
        return value
    if not isinstance(value, str):
        raise param_error(key, owner, "a string", value)
    return value


def protocol(name: str, overrides: dict[str, str] | list[str] | None = None,
             task: str = "classification") -> Protocol:
    """The named protocol of `task`'s family with overrides applied: `{"epochs": "3"}` or `["epochs=3", ...]`."""
    check_choice("task", "todal bench", task, FAMILIES)
    check_choice("protocol", "todal bench", name, FAMILIES[task])
    base = FAMILIES[task][name]
    pairs = overrides or {}
    if isinstance(pairs, (list, tuple)):
        parsed = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise TodalError(f"Protocol override {pair!r} is not KEY=VALUE; write e.g. --set epochs=3.")
            parsed[key.strip()] = value.strip()
        pairs = parsed
    owner = "bench protocol (--set)"
    valid = [f.name for f in dataclasses.fields(Protocol) if f.name not in ("name", "task", "train")]
    changes, train = {}, {}
    for key, text in pairs.items():
        if key in TRAIN_KEYS:
            train[key] = parse_setting(TrainConfig, key, text, owner)
        elif key in valid:
            changes[key] = _coerce(key, text, getattr(base, key))
        else:
            raise param_error(key, owner, "a protocol value (" + ", ".join(valid + list(TRAIN_KEYS)) + ")", text)
    p = dataclasses.replace(base.with_train(**train), **changes)
    check_choice("flavor", owner, p.flavor, FLAVORS)
    check_number("ema_decay", "bench protocol (--set)", p.ema_decay, lo=0, hi=1, hi_open=True)
    return p


def flat(p: Protocol) -> dict:
    """The protocol's values with its training settings among them (`epochs`, not `train.epochs`)."""
    d = p.to_dict()
    return {**{k: v for k, v in d.items() if k != "train"}, **d["train"]}


def differences(p: Protocol, reference: Protocol | None = None) -> list[dict]:
    """Every value of `p` that differs from `reference` (default: the `paper` protocol of p's task), name excluded."""
    reference = reference or FAMILIES[p.task]["paper"]
    a, b = flat(p.for_dataset("")), flat(reference.for_dataset(""))  # λ None: the flavor's
    return [{"key": k, "value": a[k], "paper": b[k]} for k in a if k != "name" and a[k] != b[k]]


# --- the time a protocol takes -----------------------------------------------------------------------
def planned_steps(p: Protocol, train_size: int) -> int:
    """Optimizer steps of one run: sum over cycles of epochs x ceil(labeled / batch)."""
    def size(v):
        return max(1, int(round(v * train_size))) if isinstance(v, float) else int(v)

    init, step = size(p.initial), size(p.budget)
    return sum(p.train.epochs * -(-(init + c * step) // p.train.batch_size) for c in range(p.cycles))


def measure_step_time(p: Protocol, in_channels: int, image_size: int | tuple[int, int], num_classes: int,
                      device: str | torch.device = "cpu", repeats: int = 2) -> float:
    """Seconds of one optimizer step of the protocol's model at its batch size on `device` (best of
    `repeats`), on `image_size` inputs (an int for a square); segmentation steps have per-pixel labels."""
    from .. import models
    from ..train import make_optimizer

    device = torch.device(device)
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.get(p.model, in_channels=in_channels, num_classes=num_classes, **p.model_options).to(device)
        x = torch.randn(p.train.batch_size, in_channels, h, w, device=device)
        shape = (p.train.batch_size, h, w) if p.task == "segmentation" else (p.train.batch_size,)
        y = torch.randint(num_classes, shape, device=device)
    opt = make_optimizer(model.parameters(), p.train)
    best = float("inf")
    for i in range(repeats + 1):  # the first step warms up (allocations, kernels)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def estimate_seconds(p: Protocol, train_size: int, runs: int, semi_runs: int, step_time: float) -> float:
    """Training time of the whole bench: a semi-supervised step (student on an unlabeled batch too,
    teacher forward) is counted as 2 plain steps; selection and evaluation are left out."""
    return step_time * planned_steps(p, train_size) * (runs + semi_runs)


def train_input_shape(train_set) -> tuple[int, tuple[int, int]]:
    """`(channels, (h, w))` of a training input: the training crop where the dataset has one
    (Cityscapes: 688x688 of the 2048x1024 images), else the first sample's size."""
    crop = getattr(getattr(train_set, "augment", None), "crop", None)
    channels = getattr(train_set, "in_channels", None)
    if crop and channels:  # nothing to decode
        return int(channels), tuple(crop)
    x = train_set.batch(torch.arange(1))[0] if hasattr(train_set, "batch") else train_set[0][0].unsqueeze(0)
    return int(x.shape[1]), (tuple(crop) if crop else (int(x.shape[-2]), int(x.shape[-1])))


def check_device(p: Protocol, device: torch.device, train_set, runs: int, semi_runs: int) -> None:
    """Refuse a GPU protocol on a CPU, saying how long it would take (from a measured step time)."""
    if not p.requires_gpu or device.type != "cpu":
        return
    in_channels, image_size = train_input_shape(train_set)
    num_classes = int(getattr(train_set, "num_classes", 10))
    big = p.train.batch_size * image_size[0] * image_size[1] > 2**20  # a DRN step on 688x688 crops: seconds each
    step = measure_step_time(p, in_channels, image_size, num_classes, device, repeats=1 if big else 2)
    secs = estimate_seconds(p, min(len(train_set), p.pool_size or len(train_set)), runs, semi_runs, step)
    alternative = "--protocol cpu --dataset fashion-mnist-scenes" if p.task == "segmentation" else "--protocol cpu"
    raise TodalError(
        f"The {p.name!r} protocol needs a GPU: on this CPU one step of {p.model} at batch {p.train.batch_size} takes "
        f"{step:.3f} s, so training its {runs} runs ({semi_runs} semi-supervised) would take about "
        f"{secs / 3600:,.0f} hours ({secs / 86400:,.1f} days). Run it with --device cuda, use {alternative}, "
        "or pass --set requires_gpu=false to run it here anyway.")
