"""ActiveLoop: the cycle driver. pool -> train -> evaluate -> select -> label -> pool.

Every stage reads its inputs from the run directory and writes its result there (atomically)
before the next stage starts, and all randomness comes from generators derived from
(seed, stage, cycle). So a run killed at any point and started again with the same arguments
redoes at most the interrupted stage and ends with the same selections and metrics.

Run directory:
    config.json     the resolved configuration (a different one is refused)
    pool.json       labeled indices per cycle and their labels (for segmentation only the indices:
                    the masks stay in the dataset, see `todal.pool`)
    progress.json   the next stage to run, and what the current cycle has measured so far
    metrics.jsonl   one line per finished cycle
    checkpoints/    init.pt, cycle_<c>.pt (model, EMA, strategy state after training),
                    strategy_<c>.pt (strategy state after selection)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed
from .atomic import torch_save, write_json, write_jsonl
from .ema import EMA
from .errors import Int, Real, TodalError, check_choice, param_error, validate
from .flavor import FLAVOR_BEFORE_CHOICES, Flavor, flavor_for
from .inference import chunks, fetch
from .labeled import PoolLabels
from .oracle import FileOracle, SimulatedOracle
from .pool import Pool
from .strategies import Context, Strategy
from .strategies import get as get_strategy
from .strategies import names as strategy_names
from .strategies.base import LabelMaps
from .tasks import Segmentation, get_task
from .train import TrainConfig, evaluate, fit

STAGES = ("train", "evaluate", "select", "reveal")
# Dense outputs: inference batches hold about this many pixels (64x64 scenes: 256 a batch; a
# 2048x1024 Cityscapes image: 1), so evaluation and scoring stay within a few GB on a CPU.
PIXELS_PER_BATCH = 2**20


def default_task(dataset) -> str:
    """The dataset's own `task` attribute (the segmentation readers set "segmentation"), else
    "classification"."""
    task = getattr(dataset, "task", None)
    return task if isinstance(task, str) and task else "classification"


def default_eval_batch_size(dataset, dense: bool) -> int:
    """512 for class labels; for dense outputs, as many samples as make about `PIXELS_PER_BATCH`
    pixels (the dataset's `image_size`, else the size of its first sample)."""
    if not dense:
        return 512
    size = getattr(dataset, "image_size", None) or tuple(fetch(dataset, torch.arange(1))[0].shape[-2:])
    pixels = 1
    for v in size:
        pixels *= int(v)
    return max(1, min(512, PIXELS_PER_BATCH // max(pixels, 1)))


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


def _plain(value):
    """numpy integers and floats as Python's (bools stay bools)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


_LOOP_RULES = {
    "cycles": Int(lo=1), "seed": Int(), "ema_decay": Real(lo=0, hi=1, hi_open=True),
    "eval_batch_size": Int(lo=1, optional=True),
    "score_subset": Int(lo=1, optional=True, expected="an int >= 1 or None (the whole pool)"),
}


def resolve_size(value, n: int, name: str) -> int:
    """A float in (0, 1] is a fraction of n; an int >= 1 is a count."""
    expected = "an int in [1, inf) or a float in (0, 1]"
    if isinstance(value, float) and 0 < value <= 1:
        return max(1, int(round(value * n)))
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise param_error(name, "ActiveLoop", expected, value)


@dataclass
class LoopConfig:
    """The resolved configuration of a run: saved to config.json and compared on resume."""

    strategy: str
    strategy_options: dict
    semi_supervised: bool
    initial: int
    budget: int
    cycles: int
    seed: int
    task: str
    flavor: dict
    reinit: bool
    ema_decay: float
    train: dict
    model: str
    model_options: dict
    dataset: dict
    eval_batch_size: int = 512
    version: int = 1
    model_arch: str = ""  # a hash of the model's parameter names and shapes: another architecture is refused
    augment: str = "default"  # the training augmentation: the dataset's "default", "none", or a function's name

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# LoopConfig keys added after runs were already made: a saved config without one is not compared on it
LATER_KEYS = ("model_arch", "augment")
# TrainConfig fields added after runs were made, with the behaviour those runs had
TRAIN_BEFORE_OPTIONS = {"precision": "auto", "channels_last": None, "compile": False, "sync_bn": False}


def infer_num_classes(dataset) -> int:
    """The number of classes from the labels alone (`.y`, `.targets`, a TensorDataset's last tensor), never by
    reading the inputs; a dataset without them must say (`num_classes` attribute or argument)."""
    for labels in (getattr(dataset, "y", None), getattr(dataset, "targets", None),
                   (getattr(dataset, "tensors", None) or [None])[-1]):
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.is_floating_point():
                raise TodalError(f"The labels are floats ({labels.dtype}); class labels must be integers 0..C-1: "
                                 "convert them with .long() (for regression there is no class count).")
            return int(labels.max()) + 1
    raise TodalError(f"{type(dataset).__name__} has no num_classes (nor .y, .targets or tensors to count from); "
                     "pass ActiveLoop(..., num_classes=C) or give the dataset a num_classes attribute.")


def instance_options(strategy: Strategy) -> dict:
    """The options a strategy instance holds (its constructor's parameters it keeps as attributes), recorded
    so a run resumed with differently configured strategy is refused."""
    from .strategies import _init_params

    out = {}
    for key in (_init_params(strategy.name) if strategy.name in strategy_names() else {}):
        value = getattr(strategy, key, getattr(strategy, f"_{key}", None))
        try:
            out[key] = json.loads(json.dumps(value))
        except TypeError:
            out[key] = repr(value)
    return {"class": f"{type(strategy).__module__}.{type(strategy).__qualname__}", **out}


def architecture(model: nn.Module) -> str:
    """A short hash of the model's parameter and buffer names, shapes and dtypes."""
    text = ";".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# configuration values a finished or running run may change: they only shape the cycles still to come
EXTENDABLE = ("cycles", "budget")


class ActiveLoop:
    """Active learning with TOD (or any registered strategy) on a training and a test set.

    Args:
        model_fn: a model name of `todal.models` (built with `model_options`) or a callable
            returning a fresh `nn.Module`.
        train_set, test_set: indexable datasets of `(x, y)`; indices of `train_set` identify samples.
        strategy: a strategy name or instance. semi_supervised: add the TOD loss of Eq. 7 (Eq. 9).
        initial, budget: fractions of the training set in (0, 1] or counts.
        cycles: training cycles (the last one is not followed by a selection).
        epochs: per cycle; other training settings via `train=TrainConfig(...)` or a dict.
        workdir: the run directory (None: a temporary one, nothing kept).
        flavor: "default", "paper" or "official" (see `todal.flavor`); `flavor_overrides` changes single choices.
        reinit: re-initialize the model at every cycle instead of continuing from the last one.
        lam, ema_decay: λ of Eq. 9 (None: the flavor's) and α of Eq. 6.
        score_subset: score only this many random unlabeled samples (None: the flavor's).
        oracle: who labels (default: the dataset's own labels). For segmentation the pool records
            which samples are labeled and training reads their masks from the dataset.
        task: "classification" or "segmentation" (None: `default_task(train_set)`).
        eval_batch_size: batch of evaluation and scoring (None: `default_eval_batch_size`: 512,
            fewer for large dense outputs).
        keep_checkpoints: keep every cycle's checkpoint (analyses across cycles); by default only the
            last two are kept, which is all that resuming and COD need.
        augment: the training augmentation. None: the dataset's default (`todal.data.transforms_for`: crop and
            flip for ArrayDatasets that set them, none for others); False: none; or `fn(x, generator) -> x`
            applied to each labeled and unlabeled batch as the dataset gives it, returning what the model takes
            (draw randomness from `generator`). Not for segmentation (masks): use a train_pair_transform there.
    """

    def __init__(self, model_fn: str | Callable[[], nn.Module], train_set, test_set, *,
                 strategy: str | Strategy = "cod", semi_supervised: bool = True, initial=0.1,
                 budget=0.05, cycles: int = 7, epochs: int | None = None, workdir=None, seed: int = 0,
                 task: str | None = None, flavor: str = "default", flavor_overrides: dict | None = None,
                 train: TrainConfig | dict | None = None, reinit: bool = False, lam: float | None = None,
                 ema_decay: float = 0.999, score_subset: int | None = None, strategy_options: dict | None = None,
                 model_options: dict | None = None, oracle=None, device: str | torch.device | None = None,
                 num_classes: int | None = None,
                 eval_batch_size: int | None = None, progress: bool = False, keep_checkpoints: bool = False,
                 augment: Callable | bool | None = None):
        owner = "ActiveLoop"
        initial, budget = _plain(initial), _plain(budget)  # numpy scalars are ints and floats too
        n = len(train_set)
        if n < 2:
            raise param_error("train_set", owner, "a dataset of at least 2 samples", f"{n} samples")
        checked = validate(owner, _LOOP_RULES, cycles=cycles, seed=seed, ema_decay=ema_decay,
                           eval_batch_size=eval_batch_size)
        cycles, seed, ema_decay, eval_batch_size = checked.values()
        self.train_set, self.test_set = train_set, test_set
        self.num_classes = int(num_classes or getattr(train_set, "num_classes", 0) or infer_num_classes(train_set))
        if not isinstance(strategy, str) and strategy_options:
            raise TodalError("strategy_options apply to a strategy given by name; give the instance its options "
                             "(todal.strategies.get(name, **options)) or pass the name with strategy_options.")
        if not isinstance(model_fn, str) and model_options:
            raise TodalError("model_options apply to a model given by name; a callable builds its own model: "
                             "bind the options into it (functools.partial) or pass a model name.")
        if isinstance(model_fn, nn.Module):
            raise TodalError(f"model_fn is a model instance ({type(model_fn).__name__}); pass a function that builds "
                             f"a fresh one, e.g. lambda: {type(model_fn).__name__}(...), or a model name.")
        self.strategy = get_strategy(strategy, **(strategy_options or {})) if isinstance(strategy, str) else strategy
        init = resolve_size(initial, n, "initial")
        step = resolve_size(budget, n, "budget") if cycles > 1 else 0
        need = init + step * (cycles - 1)
        if need > n:
            raise TodalError(f"The plan needs {need} labels (initial {init} + {cycles - 1} cycles x budget "
                             f"{step}) but the training set has {n} samples; lower the budget, the initial "
                             "size or the number of cycles.")
        if test_set is None:
            raise param_error("test_set", owner, "a dataset to evaluate each cycle on", None,
                              "Hold out part of your labeled data, e.g. todal.data.stratified_split.")
        if train is not None and not isinstance(train, (TrainConfig, dict)):
            raise param_error("train", owner, "a TrainConfig or a dict of its fields", type(train).__name__)
        unknown = sorted(set(train or {}) - {f for f in TrainConfig.__dataclass_fields__}) if isinstance(train, dict) else []
        if unknown:
            raise TodalError(f"Unknown train option {unknown[0]!r}; valid: {', '.join(TrainConfig.__dataclass_fields__)}.")
        tc = train if isinstance(train, TrainConfig) else TrainConfig(**(train or {}))
        given = train.to_dict() if isinstance(train, TrainConfig) else dict(train or {})
        if epochs is not None and "epochs" in given and given["epochs"] != epochs:
            raise TodalError(f"epochs is set twice (epochs={epochs}, train epochs={given['epochs']}); set it in one "
                             "place.")
        for key, value in (("lam", lam), ("score_subset", score_subset)):
            if value is not None and key in (flavor_overrides or {}) and flavor_overrides[key] != value:
                raise TodalError(f"{key} is set twice ({key}={value}, flavor_overrides {key}={flavor_overrides[key]}); "
                                 "set it in one place.")
        if epochs is not None:
            tc = TrainConfig(**{**tc.to_dict(), "epochs": epochs})
        dataset_name = getattr(train_set, "name", "") or type(train_set).__name__
        fl = flavor_for(flavor, dataset_name)
        fl = fl.replace(**{**(flavor_overrides or {}),
                           **({"lam": float(lam)} if lam is not None else {}),
                           **({"score_subset": score_subset} if score_subset is not None else {})})
        check_choice("consistency", owner, fl.consistency, ("eq7", "official", "cyclic"))
        check_choice("consistency_reduction", owner, fl.consistency_reduction, ("sum", "mean"))
        validate(owner, _LOOP_RULES, score_subset=fl.score_subset)
        self.flavor: Flavor = fl
        self.model_fn = model_fn
        task = default_task(train_set) if task is None else task
        self.task = get_task(task, self.num_classes)
        self.dense = isinstance(self.task, Segmentation)
        if self.dense and isinstance(oracle, FileOracle):
            raise TodalError("FileOracle reads class labels from labels.csv and cannot take segmentation masks; "
                             "for task='segmentation' the masks come from the dataset (leave oracle unset).")
        self.oracle = oracle or SimulatedOracle(train_set)
        if eval_batch_size is None:
            eval_batch_size = default_eval_batch_size(train_set, self.dense)
        self.device = distributed.device_for(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise TodalError(f"device={str(device)!r} but this PyTorch sees no CUDA device; pass device='cpu' or "
                             "install a CUDA build of torch on a machine with a GPU.")
        self.progress = progress
        self.keep_checkpoints = bool(keep_checkpoints)
        self.needs_ema = semi_supervised or self.strategy.needs_ema
        model_id = model_fn if isinstance(model_fn, str) else getattr(model_fn, "__qualname__", repr(model_fn))
        if not (augment is None or augment is False or callable(augment)):
            raise param_error("augment", owner, "None (the dataset's default), False (none) or fn(x, generator) -> x",
                              augment)
        if callable(augment) and self.dense:
            raise TodalError("augment= transforms inputs alone, which would misalign segmentation masks; give the "
                             "dataset a train_pair_transform(x, y, generator), or pass augment=False for none.")
        self.augment = augment
        self.config = LoopConfig(
            strategy=self.strategy.name,
            strategy_options=strategy_options or {} if isinstance(strategy, str) else instance_options(strategy),
            semi_supervised=bool(semi_supervised), initial=init, budget=step, cycles=cycles, seed=seed,
            task=task, flavor=asdict(fl), reinit=bool(reinit), ema_decay=float(ema_decay),
            train=tc.to_dict(), model=str(model_id), model_options=dict(model_options or {}),
            eval_batch_size=eval_batch_size,
            dataset={"name": dataset_name, "train_size": n, "test_size": len(test_set),
                     "num_classes": self.num_classes}, model_arch="",
            augment="default" if augment is None else "none" if augment is False else
            getattr(augment, "__qualname__", type(augment).__name__))
        probe = self._new_model("arch")
        self.config.model_arch = architecture(probe)
        self._probe(probe, train_set, test_set)
        self.train_cfg = tc
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="todal-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)

    def _augmentation(self):
        """The `transform` fit() takes: None (the dataset's default), the test transform (no augmentation), or the
        user's function."""
        if self.augment is None:
            return None
        if self.augment is False:
            from .inference import test_transform

            return test_transform(self.train_set)
        return self.augment

    def _probe(self, model: nn.Module, train_set, test_set) -> None:
        """Two samples through the model before anything is trained: the errors a run would hit hours later
        (inputs the model cannot take, fewer outputs than classes, test labels the training set lacks)."""
        from .inference import test_transform

        x = fetch(train_set, torch.arange(min(2, len(train_set))))[0]
        try:
            with torch.no_grad():
                out = model.eval()(test_transform(train_set)(x))
        except Exception as e:  # the user's model: any error, told with the input shape
            raise TodalError(f"The model fails on the training set's inputs of shape {list(x.shape)} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); images must be [N, C, H, W] (channels first: "
                             "x.permute(0, 3, 1, 2) for HWC) and match the model's input.") from None
        if isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[1] != self.num_classes:
            raise TodalError(f"The model outputs {out.shape[1]} scores per sample but the data has {self.num_classes} "
                             f"classes; build it with {self.num_classes} outputs (or pass num_classes=).")
        test_labels = getattr(test_set, "y", None) if not self.dense else None
        if isinstance(test_labels, torch.Tensor) and len(test_labels) and int(test_labels.max()) >= self.num_classes:
            raise TodalError(f"The test set has label {int(test_labels.max())} but the training set only "
                             f"{self.num_classes} classes; pass num_classes={int(test_labels.max()) + 1}.")

    # --- files --------------------------------------------------------------------------------
    def _path(self, *parts: str) -> Path:
        return self.workdir.joinpath(*parts)

    def _ckpt(self, name: str) -> Path:
        return self._path("checkpoints", name)

    def _load(self, name: str) -> dict:
        try:
            return torch.load(self._ckpt(name), map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise TodalError(f"Checkpoint {self._ckpt(name)} is missing, so the run cannot resume; "
                             "delete the run directory to start over.") from None

    def _read_json(self, name: str):
        path = self._path(name)
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise TodalError(f"{path} is corrupted ({e}); restore it or delete the run directory to "
                             "start over.") from None

    def records(self) -> list[dict]:
        """Metrics of the finished cycles (from metrics.jsonl)."""
        path = self._path("metrics.jsonl")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # --- what a run keeps (public) -------------------------------------------------------------
    def pool(self) -> Pool:
        """The labeled pool as it stands: which samples are labeled, in which cycle, with which labels."""
        if not self._path("pool.json").exists():
            raise TodalError(f"{self.workdir} holds no run yet; call run() first.")
        return Pool.load(self._path("pool.json"))

    def model(self, cycle: int | None = None) -> nn.Module:
        """The model as cycle `cycle` left it after training (default: the last trained cycle), in eval mode
        on the loop's device; a new module each call."""
        return self._saved(cycle)[0]

    def teacher(self, cycle: int | None = None) -> nn.Module | None:
        """The EMA teacher after cycle `cycle`'s training (default: the last trained), or None without one."""
        ema = self._saved(cycle)[1]
        return ema.model.eval() if ema is not None else None

    def reference(self, cycle: int) -> nn.Module:
        """What COD compared cycle `cycle`'s model with: the previous cycle's model, or in cycle 0 the
        initial weights (an independently initialized network under `first_reference="independent"`)."""
        if cycle > 0:
            return self.model(cycle - 1)
        init = self._load("init.pt")
        state = init["reference"] if init.get("reference") is not None else init["model"]
        return self._model_with(state).to(self.device).eval()

    def strategy_at(self, cycle: int | None = None) -> Strategy:
        """A copy of the strategy holding the state it had after cycle `cycle`'s training (LL4AL's loss
        module, COD's kept outputs); the loop's own strategy is not touched."""
        state = self._checkpoint(self._trained(cycle))
        strategy = copy.deepcopy(self.strategy)
        strategy.load_state_dict(state.get("strategy") or {})
        return strategy

    def _trained(self, cycle: int | None) -> int:
        if not self._path("progress.json").exists():
            raise TodalError(f"{self.workdir} holds no run yet; call run() first.")
        prog = self._read_json("progress.json")
        last = prog["cycle"] - (prog["stage"] == "train")
        if last < 0:
            raise TodalError(f"No cycle of {self.workdir} has been trained yet; call run() first.")
        if cycle is None:
            return last
        if isinstance(cycle, bool) or not isinstance(cycle, (int, np.integer)) or not 0 <= cycle <= last:
            raise param_error("cycle", "ActiveLoop", f"a trained cycle, 0..{last}", cycle)
        return int(cycle)

    def _checkpoint(self, cycle: int) -> dict:
        if not self._ckpt(f"cycle_{cycle}.pt").exists():
            raise TodalError(f"Cycle {cycle}'s checkpoint is gone: a run keeps only its last two cycles; build the "
                             "loop with keep_checkpoints=True to keep every cycle.")
        return self._load(f"cycle_{cycle}.pt")

    def _saved(self, cycle: int | None) -> tuple[nn.Module, EMA | None]:
        model, ema = self._model_and_teacher(self._checkpoint(self._trained(cycle)))
        return model.eval(), ema

    # --- models -------------------------------------------------------------------------------
    def _new_model(self, *keys) -> nn.Module:
        second = self.config.semi_supervised and self.flavor.consistency == "official"
        with seeded(self.config.seed, "model", *keys):
            if isinstance(self.model_fn, str):
                from . import models

                return models.get(self.model_fn, in_channels=getattr(self.train_set, "in_channels", 1),
                                  num_classes=self.num_classes, second_head=second,
                                  **self.config.model_options)
            model = self.model_fn()
            if second and not hasattr(model, "heads"):  # the official consistency on any model
                from .models import SecondHead

                model = SecondHead(model)
            return model

    def _ema(self, model: nn.Module) -> EMA | None:
        if not self.needs_ema:
            return None
        teacher = self._new_model("teacher") if self.flavor.ema_init == "independent" else None
        # Without the consistency loss nothing runs the teacher, so only averaging keeps its
        # BatchNorm statistics meaningful (EMAOD on a task-only run).
        buffers = self.flavor.ema_buffers or not self.config.semi_supervised
        return EMA(model, self.config.ema_decay, buffers=buffers, teacher=teacher)

    def _model_with(self, weights: dict) -> nn.Module:
        """A model of this run holding `weights` (a state dict)."""
        model = self._new_model("init")
        model.load_state_dict(weights)
        return model

    def _model_and_teacher(self, state: dict) -> tuple[nn.Module, EMA | None]:
        """The model and EMA teacher a checkpoint holds, both on the loop's device."""
        model = self._model_with(state["model"])
        ema = self._ema(model)
        if ema is not None:
            ema.load_state_dict(state["ema"])
            ema.model.to(self.device)  # EMAOD and QBC's snapshot committee run the teacher beside the model
        return model.to(self.device), ema

    def _restore(self, state: dict) -> tuple[nn.Module, EMA | None]:
        """`_model_and_teacher`, with the loop's strategy set to the checkpoint's state (resuming a stage)."""
        self.strategy.load_state_dict(state.get("strategy") or {})
        return self._model_and_teacher(state)

    # --- the run ------------------------------------------------------------------------------
    def _used(self, flavor: dict) -> dict:
        """The flavor choices this run uses: without the TOD loss, none of the loss's or of how the teacher
        runs in it; without an EMA teacher, none of the teacher's."""
        unused = set()
        if not self.config.semi_supervised:
            unused |= {"consistency", "consistency_reduction", "lam", "teacher_train_mode"}
        if not self.needs_ema:
            unused |= {"ema_init", "ema_buffers"}
        return {k: v for k, v in flavor.items() if k not in unused}

    def _start(self) -> Pool:
        cfg = self.config.to_dict()
        if self._path("config.json").exists():
            saved = self._read_json("config.json")
            if isinstance(saved.get("flavor"), dict):  # runs made before a flavor choice existed used its old value
                saved["flavor"] = {**FLAVOR_BEFORE_CHOICES, **saved["flavor"]}
            if isinstance(saved.get("train"), dict):  # runs made before a training option existed ran its default
                saved["train"] = {**TRAIN_BEFORE_OPTIONS, **saved["train"]}
            # flavor choices this run never uses cannot make it differ
            was, now = dict(saved), dict(cfg)
            if isinstance(was.get("flavor"), dict):
                was["flavor"], now["flavor"] = self._used(was["flavor"]), self._used(now["flavor"])
            diff = [k for k in now if was.get(k) != now[k] and k not in EXTENDABLE
                    and not (k in LATER_KEYS and k not in was)]
            if diff:
                k = diff[0]
                raise TodalError(f"{self.workdir} holds a run with a different configuration ({k}: "
                                 f"{was.get(k)!r} there, {now[k]!r} now); use another work directory "
                                 "or delete this one to start over.")
            if any(saved.get(k) != cfg[k] for k in EXTENDABLE):
                self._extend(saved)
        if self._path("progress.json").exists():
            return Pool.load(self._path("pool.json"))
        # A fresh run: initial random set, initial model (and teacher, and COD's reference).
        write_json(self._path("config.json"), cfg)
        pool = Pool(len(self.train_set), self.num_classes, dense=self.dense, ignore_index=self.task.ignore_index)
        perm = torch.randperm(len(self.train_set), generator=generator(self.config.seed, "initial"))
        first = perm[: self.config.initial].sort().values
        if not self._label(pool, first, 0):
            raise TodalError("The oracle has no labels for the initial set yet; label the samples in "
                             "to_label.csv and run again.")
        model = self._new_model("init")
        ema = self._ema(model)
        reference = None
        if self.strategy.needs_previous and self.flavor.first_reference == "independent":
            reference = self._new_model("reference").state_dict()
        torch_save(self._ckpt("init.pt"), {"model": model.state_dict(),
                                           "ema": ema.state_dict() if ema else None,
                                           "reference": reference, "strategy": self.strategy.state_dict()})
        pool.save(self._path("pool.json"))
        write_json(self._path("progress.json"), {"cycle": 0, "stage": "train", "pending": {}})
        return pool

    def _extend(self, saved: dict) -> None:
        """More cycles (or another budget for the selections still to come) on an existing run: what already
        happened stays; a run cannot be cut below the cycle it has reached."""
        reached = self._read_json("progress.json")["cycle"] if self._path("progress.json").exists() else 0
        if self.config.cycles <= reached:
            raise TodalError(f"{self.workdir} has reached cycle {reached + 1} of {saved.get('cycles')}; it cannot be "
                             f"cut to {self.config.cycles} cycles: pass cycles >= {reached + 1}, or use another "
                             "work directory.")
        write_json(self._path("config.json"), {**saved, **{k: self.config.to_dict()[k] for k in EXTENDABLE}})

    def run(self) -> list[dict]:
        """Run (or resume) every cycle; returns one dict of metrics per cycle. A finished run given more
        `cycles` continues from its last cycle's selection. In a data-parallel run (todal/distributed.py)
        every rank runs this; rank 0 writes, and all wait for it after every stage."""
        distributed.barrier()
        pool = self._start()
        distributed.barrier()
        while True:
            prog = self._read_json("progress.json")
            stage = prog["stage"]
            if stage not in (*STAGES, "done"):
                raise TodalError(f"{self._path('progress.json')} names an unknown stage {stage!r}; restore the file or "
                                 "delete the run directory to start over.")
            if stage == "done" and prog["cycle"] < self.config.cycles - 1:
                last = next(r for r in self.records() if r["cycle"] == prog["cycle"])
                write_json(self._path("progress.json"), {"cycle": prog["cycle"], "stage": "select", "pending": last})
                distributed.barrier()
                continue
            if stage == "done":
                return self.records()
            if stage == "reveal" and not self._reveal(pool, prog):
                return self.records()  # a person has to label first
            elif stage != "reveal":
                getattr(self, f"_{stage}")(pool, prog)
            distributed.barrier()

    def _advance(self, prog: dict, stage: str, **pending) -> None:
        prog = {**prog, "stage": stage, "pending": {**prog["pending"], **pending}}
        write_json(self._path("progress.json"), prog)

    def _train(self, pool: Pool, prog: dict) -> None:
        c, seed = prog["cycle"], self.config.seed
        start = self._load("init.pt" if c == 0 else f"cycle_{c - 1}.pt")
        if c > 0:
            start["strategy"] = self._load(f"strategy_{c - 1}.pt")
        model, ema = self._restore(start)
        if self.config.reinit and c > 0:
            model.load_state_dict(self._new_model("reinit", c).state_dict())
        unsup = None
        if self.config.semi_supervised:
            # CyclicOD (Fig. 10): the target is the model as the last cycle left it (none in cycle 0)
            previous = self._model_with(start["model"]).requires_grad_(False) if c > 0 else None
            unsup = self.flavor.consistency_objective(ema.model if ema is not None else None, previous)
        with seeded(seed, "train", c):
            stats = fit(model, self.task, self.given(pool), pool.labeled, cfg=self.train_cfg,
                        generator=generator(seed, "train", c), unlabeled=pool.unlabeled if unsup else None,
                        ema=ema, consistency=unsup,
                        objectives=self.strategy.objectives(), device=self.device, transform=self._augmentation(),
                        progress=f"cycle {c} train" if self.progress else None)
        torch_save(self._ckpt(f"cycle_{c}.pt"), {"model": model.state_dict(),
                                                 "ema": ema.state_dict() if ema else None,
                                                 "strategy": self.strategy.state_dict()})
        if not self.keep_checkpoints:
            for old in (f"cycle_{c - 2}.pt", f"strategy_{c - 2}.pt"):  # COD needs one cycle back, no more
                if distributed.is_main():
                    self._ckpt(old).unlink(missing_ok=True)
        self._advance(prog, "evaluate", train_loss=stats["loss"], train_steps=stats["steps"],
                      train_time_s=round(stats["time_s"], 4),
                      train_epoch_losses=[round(v, 5) for v in stats["epoch_losses"]])

    def _evaluate(self, pool: Pool, prog: dict) -> None:
        c = prog["cycle"]
        model, _ = self._restore(self._load(f"cycle_{c}.pt"))
        m = evaluate(model, self.task, self.test_set, batch_size=self.config.eval_batch_size, device=self.device)
        n = len(pool)
        pending = {"cycle": c, "labeled": n, "labeled_fraction": n / pool.size, **m}
        if c == self.config.cycles - 1:
            self._finish(prog, {**prog["pending"], **pending})
            write_json(self._path("progress.json"), {"cycle": c, "stage": "done", "pending": {}})
        else:
            self._advance(prog, "select", **pending)

    def given(self, pool: Pool) -> PoolLabels:
        """The training set with the labels the oracle gave (the only labels training and selection read):
        class labels from the pool; masks from the oracle, which the pool does not keep."""
        return PoolLabels(self.train_set, self.oracle.label if pool.dense else pool.labels)

    def _context(self, pool: Pool, model: nn.Module, ema: EMA | None, c: int) -> Context:
        seed = self.config.seed
        unlabeled = pool.unlabeled
        candidates = unlabeled
        k = self.flavor.score_subset
        if k is not None and k < len(unlabeled):
            pick = torch.randperm(len(unlabeled), generator=generator(seed, "subset", c))[:k]
            candidates = unlabeled[pick.sort().values]

        def previous() -> nn.Module:
            if c > 0:
                state = self._load(f"cycle_{c - 1}.pt")["model"]
            else:
                init = self._load("init.pt")
                state = init["reference"] if init.get("reference") is not None else init["model"]
            return self._model_with(state)

        labeled = pool.labeled
        labels = LabelMaps(self.given(pool), labeled) if pool.dense else pool.labels[labeled]
        return Context(model=model, task=self.task, dataset=self.train_set, labeled=labeled,
                       unlabeled=unlabeled, labels=labels, generator=generator(seed, "select", c),
                       cycle=c, device=self.device, batch_size=self.config.eval_batch_size,
                       ema_model=ema.model if ema else None, flavor=self.flavor, candidates=candidates,
                       previous=previous, workdir=self.workdir, progress=self.progress)

    def _select(self, pool: Pool, prog: dict) -> None:
        c = prog["cycle"]
        model, ema = self._restore(self._load(f"cycle_{c}.pt"))
        ctx = self._context(pool, model, ema, c)
        t0 = time.perf_counter()
        with seeded(self.config.seed, "select", c):
            chosen = self.strategy.select(ctx, self.config.budget)
        dt = time.perf_counter() - t0
        torch_save(self._ckpt(f"strategy_{c}.pt"), self.strategy.state_dict())
        self._advance({**prog, "selected": chosen.tolist()}, "reveal", select_time_s=round(dt, 4))

    def _reveal(self, pool: Pool, prog: dict) -> bool:
        c, chosen = prog["cycle"], torch.tensor(prog["selected"], dtype=torch.long)
        if not bool((pool.cycle[chosen] == c + 1).all()):  # else: revealed before a crash
            if not self._label(pool, chosen, c + 1):
                return False
            pool.save(self._path("pool.json"))
        self._finish(prog, {**prog["pending"], "selected": chosen.tolist()})
        write_json(self._path("progress.json"), {"cycle": c + 1, "stage": "train", "pending": {}})
        return True

    def _label(self, pool: Pool, indices: Tensor, cycle: int) -> bool:
        """Ask the oracle for the labels of `indices` and add them to the pool; False if it has none yet.

        Dense labels are asked for a batch at a time, each batch of maps checked and dropped (the
        pool keeps no masks); the pool changes only once every batch has been answered.
        """
        if not pool.dense:
            labels = self.oracle.label(indices)
            if labels is None:
                return False
            pool.add(indices, labels, cycle=cycle)
            return True
        for part in chunks(indices, self.config.eval_batch_size):
            maps = self.oracle.label(part)
            if maps is None:
                return False
            pool.check_maps(maps, len(part))
        pool.add(indices, None, cycle=cycle)
        return True

    def _finish(self, prog: dict, record: dict) -> None:
        """Write metrics.jsonl with this cycle's record replacing any earlier one for the cycle."""
        records = [r for r in self.records() if r["cycle"] != prog["cycle"]] + [record]
        write_jsonl(self._path("metrics.jsonl"), sorted(records, key=lambda r: r["cycle"]))
