"""ActiveLoop: the engine's cycle (todal/engine.py) driven over a run directory.
pool -> train -> evaluate -> select -> label -> pool.

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
                    strategy_<c>.pt (strategy state after selection); weights only
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed
from .atomic import write_json, write_jsonl
from .ema import DEFAULT_DECAY, EMA
from .engine import Checkpoints, Engine, Seeds, generator
from .errors import Bool, Int, Real, TodalError, param_error, validate
from .flavor import DEFAULT_SEMI, FLAVOR_BEFORE_CHOICES, Flavor, resolve
from .inference import chunks, fetch
from .labeled import PoolLabels
from .models.source import ModelSource, model_source
from .oracle import FileOracle, SimulatedOracle
from .pool import Pool
from .settings import from_dict
from .stopping import StopRule, cohen_kappa, criteria, should_stop
from .strategies import Strategy
from .strategies import get as get_strategy
from .strategies.base import LabelMaps
from .tasks import Segmentation, Task, get_task
from .train import TrainConfig

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


def _plain(value):
    """numpy integers and floats as Python's (bools stay bools)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


_LOOP_RULES = {
    "cycles": Int(lo=1), "seed": Int(), "ema_decay": Real(lo=0, hi=1, hi_open=True),
    "eval_batch_size": Int(lo=1, optional=True), "num_classes": Int(lo=1, optional=True),
    "semi_supervised": Bool(optional=True), "reinit": Bool(), "keep_checkpoints": Bool(), "progress": Bool(),
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
    stop: dict | None = None  # the StopRule that may end the run early (None: it runs every cycle)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# LoopConfig keys added after runs were already made: a saved config without one is not compared on it
LATER_KEYS = ("model_arch", "augment", "stop")
# TrainConfig fields added after runs were made, with the behaviour those runs had
TRAIN_BEFORE_OPTIONS = {"precision": "auto", "channels_last": None, "compile": False, "sync_bn": False,
                        "backbone_lr": None}
# configuration values a finished or running run may change: they only shape the cycles still to come
EXTENDABLE = ("cycles", "budget")


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


def _json(value):
    try:
        return json.loads(json.dumps(value))
    except TypeError:
        return repr(value)


def strategy_options(strategy: Strategy) -> dict:
    """The options a strategy instance was built with that differ from its defaults (and its class, when it is
    not the registered one), recorded so a run resumed with a differently configured strategy is refused."""
    from .strategies import REGISTRY, _init_params

    if strategy.name not in REGISTRY:
        return {"class": f"{type(strategy).__module__}.{type(strategy).__qualname__}"}
    out = {}
    if type(strategy) is not REGISTRY.get(strategy.name):
        out["class"] = f"{type(strategy).__module__}.{type(strategy).__qualname__}"
    for key, param in _init_params(strategy.name).items():
        value = _json(getattr(strategy, key, getattr(strategy, f"_{key}", None)))
        if param.default is param.empty or value != _json(param.default):
            out[key] = value
    return out


def _signal_row(record: dict) -> dict:
    """A cycle's record as `todal.stopping.criteria` reads it."""
    return {"labels": record["labeled"], "kappa": record.get("stop_kappa"), "uncertainty": record.get("pool_uncertainty"),
            "paired": record.get("paired")}


def architecture(model: nn.Module) -> str:
    """A short hash of the model's parameter and buffer names, shapes and dtypes."""
    text = ";".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ActiveLoop:
    """Active learning with TOD (or any registered strategy) on a training and a test set.

    The constructor stores and checks its arguments; `run()` does the work (and resumes a run directory).

    What to run:
        model: a model name of `todal.models`, a callable returning a fresh `nn.Module`, or a
            `todal.models.ModelSource` (a name with its options, ...).
        train_set, test_set: indexable datasets of `(x, y)`; indices of `train_set` identify samples.
        strategy: a strategy name or instance (`todal.strategies.get(name, **options)`).
        semi_supervised: add the TOD loss of Eq. 7 (Eq. 9); None: the task's default (`todal.flavor.DEFAULT_SEMI`,
            off: the evidence says COD sampling does as well or better without it).
        initial, budget: fractions of the training set in (0, 1] or counts. cycles: training cycles (the last
            one is not followed by a selection). seed: every random draw of the run.
        task: "classification" or "segmentation" (None: `default_task(train_set)`).
    Training: `train` (a `TrainConfig` or a dict of its fields; `epochs` may be given alone), `reinit`
        (re-initialize the model every cycle instead of continuing), `augment` (None: the dataset's default
        crop and flip; False: none; or `fn(x, generator) -> x`, not for segmentation masks).
    TOD's choices: `flavor` ("default", "paper", "official", a `todal.flavor.Flavor`, or a dict of single
        choices over one: `{"name": "paper", "lam": 0.1}`), `ema_decay` (α of Eq. 6).
    Labels and resources: `oracle` (who labels; default: the dataset's own labels), `device`, `num_classes`
        (else counted from the labels), `eval_batch_size` (evaluation and scoring; None: 512, fewer for
        large dense outputs), `workdir` (the run directory; None: a temporary one), `keep_checkpoints` (every
        cycle's; by default the last two, all that resuming and COD need), `progress` (progress bars on a
        terminal, a line per epoch elsewhere).
    When to stop: every cycle records the stopping criteria (`todal.stopping`: κ between consecutive models on
        a fixed stop set, the overall uncertainty, the paired gain per 100 labels on the test set); `stop` (a
        `StopRule`, a criterion's name "kappa", "uncertainty", "plateau", "any", or a dict of StopRule fields)
        ends the run early when its criterion says so, and the last record says why (`stopped`).
    `log_dir`: TensorBoard event files of every cycle (`todal.tensorboard`).
    """

    def __init__(self, model: str | Callable[[], nn.Module] | ModelSource, train_set, test_set, *,
                 strategy: str | Strategy = "cod", semi_supervised: bool | None = None, initial=0.1, budget=0.05,
                 cycles: int = 7, epochs: int | None = None, workdir=None, seed: int = 0, task: str | None = None,
                 train: TrainConfig | dict | None = None, flavor: str | Flavor | dict = "default",
                 ema_decay: float = DEFAULT_DECAY, reinit: bool = False, augment: Callable | bool | None = None,
                 oracle=None, device: str | torch.device | None = None, num_classes: int | None = None,
                 eval_batch_size: int | None = None, keep_checkpoints: bool = False, progress: bool = False,
                 stop: StopRule | str | dict | None = None, log_dir: str | Path | None = None):
        owner = "ActiveLoop"
        initial, budget = _plain(initial), _plain(budget)  # numpy scalars are ints and floats too
        n = len(train_set)
        if n < 2:
            raise param_error("train_set", owner, "a dataset of at least 2 samples", f"{n} samples")
        if test_set is None:
            raise param_error("test_set", owner, "a dataset to evaluate each cycle on", None,
                              "Hold out part of your labeled data, e.g. todal.data.stratified_split.")
        checked = validate(owner, _LOOP_RULES, cycles=cycles, seed=seed, ema_decay=ema_decay,
                           eval_batch_size=eval_batch_size, num_classes=num_classes,
                           semi_supervised=semi_supervised, reinit=reinit, keep_checkpoints=keep_checkpoints,
                           progress=progress)
        self.cycles, self.seed, self.ema_decay = checked["cycles"], checked["seed"], checked["ema_decay"]
        self.semi_supervised, self.reinit = checked["semi_supervised"], checked["reinit"]
        self.keep_checkpoints, self.progress = checked["keep_checkpoints"], checked["progress"]
        self.eval_batch_size, self.num_classes_given = checked["eval_batch_size"], checked["num_classes"]
        self.source = model_source(model)
        self.train_set, self.test_set = train_set, test_set
        if isinstance(strategy, str):
            strategy = get_strategy(strategy)
        elif not isinstance(strategy, Strategy):
            raise param_error("strategy", owner, "a strategy name or a todal Strategy", type(strategy).__name__)
        self.strategy = strategy
        self.initial = resolve_size(initial, n, "initial")
        self.budget = resolve_size(budget, n, "budget") if self.cycles > 1 else 0
        need = self.initial + self.budget * (self.cycles - 1)
        if need > n:
            raise TodalError(f"The plan needs {need} labels (initial {self.initial} + {self.cycles - 1} cycles x "
                             f"budget {self.budget}) but the training set has {n} samples; lower the budget, the "
                             "initial size or the number of cycles.")
        if train is not None and not isinstance(train, (TrainConfig, dict)):
            raise param_error("train", owner, "a TrainConfig or a dict of its fields", type(train).__name__)
        cfg = train if isinstance(train, TrainConfig) else from_dict(TrainConfig, train, "train")
        if epochs is not None:
            given = train.to_dict() if isinstance(train, TrainConfig) else dict(train or {})
            if "epochs" in given and given["epochs"] != epochs:
                raise TodalError(f"epochs is set twice (epochs={epochs}, train epochs={given['epochs']}); set it in "
                                 "one place.")
            cfg = TrainConfig(**{**cfg.to_dict(), "epochs": epochs})
        self.train_cfg = cfg
        self.dataset_name = getattr(train_set, "name", "") or type(train_set).__name__
        self.task_name = default_task(train_set) if task is None else task
        get_task(self.task_name, 1)  # an unknown task names the valid ones now
        self.flavor: Flavor = resolve(flavor, self.dataset_name, task=self.task_name)
        if self.semi_supervised is None:
            self.semi_supervised = DEFAULT_SEMI[self.task_name]
        if self.task_name == "segmentation" and isinstance(oracle, FileOracle):
            raise TodalError("FileOracle reads class labels from labels.csv and cannot take segmentation masks; "
                             "for task='segmentation' the masks come from the dataset (leave oracle unset).")
        self.oracle = oracle or SimulatedOracle(train_set)
        if not (augment is None or augment is False or callable(augment)):
            raise param_error("augment", owner, "None (the dataset's default), False (none) or fn(x, generator) -> x",
                              augment)
        if callable(augment) and self.task_name == "segmentation":
            raise TodalError("augment= transforms inputs alone, which would misalign segmentation masks; give the "
                             "dataset a train_pair_transform(x, y, generator), or pass augment=False for none.")
        self.augment = augment
        self.device = distributed.device_for(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise TodalError(f"device={str(device)!r} but this PyTorch sees no CUDA device; pass device='cpu' or "
                             "install a CUDA build of torch on a machine with a GPU.")
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="todal-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.checkpoints = Checkpoints(self.workdir / "checkpoints")
        if self.source.frozen and self.task_name == "segmentation":
            raise TodalError("A frozen backbone trains a classification head on one feature vector per image; for "
                             "segmentation train the whole model (frozen=False).")
        if isinstance(stop, str):
            stop = StopRule(criterion=stop)
        elif isinstance(stop, dict):
            stop = from_dict(StopRule, stop, "stop")
        elif stop is not None and not isinstance(stop, StopRule):
            raise param_error("stop", owner, "None, a StopRule, a criterion (kappa, uncertainty, plateau, any) or a "
                              "dict of StopRule fields", stop)
        if stop is not None and self.task_name == "segmentation":
            raise TodalError("The stopping criteria compare class predictions; for segmentation leave stop=None.")
        self.stop, self.log_dir = stop, None if log_dir is None else Path(log_dir)
        self._recorder = None
        self._engine: Engine | None = None
        self._config: LoopConfig | None = None
        self._num_classes: int | None = None
        self._data: tuple | None = None

    # --- what run() resolves first ----------------------------------------------------------------
    @property
    def needs_ema(self) -> bool:
        return self.semi_supervised or self.strategy.needs_ema

    @property
    def task(self) -> Task:
        return self.engine.task

    @property
    def dense(self) -> bool:
        return self.task_name == "segmentation"

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = int(self.num_classes_given or getattr(self.train_set, "num_classes", 0)
                                    or infer_num_classes(self.train_set))
        return self._num_classes

    @property
    def data(self) -> tuple:
        """`(train, test)` as the models read them: the datasets, or with a frozen backbone their embeddings."""
        self.engine  # noqa: B018 - a frozen backbone embeds the data when the engine is built
        return self._data

    @property
    def engine(self) -> Engine:
        """The cycle's pieces for this run (built on first use: counts the classes; a frozen backbone embeds
        every sample once, into `workdir/embeddings/`)."""
        if self._engine is None:
            task = get_task(self.task_name, self.num_classes)
            batch = self.eval_batch_size or default_eval_batch_size(self.train_set, isinstance(task, Segmentation))
            source, in_channels = self.source, getattr(self.train_set, "in_channels", 1)
            self._data = (self.train_set, self.test_set)
            if self.source.frozen:
                source, self._data = self._embed(in_channels, batch)
            self._engine = Engine(source, task, self.strategy, flavor=self.flavor, train=self.train_cfg,
                                  semi=self.semi_supervised, seeds=Seeds(self.seed, models="model"),
                                  in_channels=in_channels, num_classes=self.num_classes, ema_decay=self.ema_decay,
                                  device=self.device, batch_size=batch, augment=self._augmentation(),
                                  workdir=self.workdir, progress=self.progress)
        return self._engine

    def _embed(self, in_channels: int, batch: int):
        """The frozen backbone's head source and the embedded train and test sets (cached in the run directory)."""
        from .engine import seeded
        from .models.frozen import Embedded, HeadSource, cache_key, embed_dataset

        with seeded(self.seed, "model", "backbone"):
            backbone = self.source.build(in_channels=in_channels, num_classes=self.num_classes)
        key = cache_key(self.source, {"dataset": self.dataset_name, "train": len(self.train_set),
                                      "test": len(self.test_set)})
        folder = self.workdir / "embeddings"
        parts = [Embedded(ds, embed_dataset(backbone, ds, folder / f"{key}-{split}.npy", batch_size=batch,
                                            device=self.device, progress=self.progress))
                 for ds, split in ((self.train_set, "train"), (self.test_set, "test"))]
        return HeadSource(self.source, int(parts[0].features.shape[1]), self.source.head_dropout), tuple(parts)

    @property
    def config(self) -> LoopConfig:
        """The resolved configuration (config.json); the first call builds the model once, to check that it
        takes the data (`_probe`) and to record its architecture."""
        if self._config is None:
            engine = self.engine
            probe = engine.new_model("arch")
            self._probe(probe)
            augment = self.augment
            self._config = LoopConfig(
                strategy=self.strategy.name, strategy_options=strategy_options(self.strategy),
                semi_supervised=self.semi_supervised, initial=self.initial, budget=self.budget, cycles=self.cycles,
                seed=self.seed, task=self.task_name, flavor=asdict(self.flavor), reinit=self.reinit,
                ema_decay=self.ema_decay, train=self.train_cfg.to_dict(), model=self.source.name,
                model_options=self.source.recorded_options(), eval_batch_size=engine.batch_size,
                dataset={"name": self.dataset_name, "train_size": len(self.train_set), "test_size": len(self.test_set),
                         "num_classes": engine.num_classes},
                model_arch=architecture(probe),
                augment="default" if augment is None else "none" if augment is False else
                getattr(augment, "__qualname__", type(augment).__name__),
                stop=self.stop.to_dict() if self.stop else None)
        return self._config

    def _augmentation(self):
        """The `transform` fit() takes: None (the dataset's default), the test transform (no augmentation), or the
        user's function."""
        if self.augment is None:
            return None
        if self.augment is False:
            from .inference import test_transform

            return test_transform(self._data[0])
        return self.augment

    def _probe(self, model: nn.Module) -> None:
        """Two samples through the model before anything is trained: the errors a run would hit hours later
        (inputs the model cannot take, fewer outputs than classes, test labels the training set lacks)."""
        from .inference import test_transform

        train = self.data[0]
        x = fetch(train, torch.arange(min(2, len(train))))[0]
        try:
            with torch.no_grad():
                out = model.eval()(test_transform(train)(x))
        except Exception as e:  # the user's model: any error, told with the input shape
            raise TodalError(f"The model fails on the training set's inputs of shape {list(x.shape)} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); images must be [N, C, H, W] (channels first: "
                             "x.permute(0, 3, 1, 2) for HWC) and match the model's input.") from None
        num_classes = self.num_classes
        if not self.dense and (not isinstance(out, torch.Tensor) or out.dim() != 2):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TodalError(f"The model's output is {got}, not [B, C] logits; a classifier must return one row of "
                             f"{num_classes} class scores per sample (wrap it: return its logits tensor).")
        if isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[1] != num_classes:
            raise TodalError(f"The model outputs {out.shape[1]} scores per sample but the data has {num_classes} "
                             f"classes; build it with {num_classes} outputs (or pass num_classes=).")
        test_labels = getattr(self.test_set, "y", None) if not self.dense else None
        if isinstance(test_labels, torch.Tensor) and len(test_labels) and int(test_labels.max()) >= num_classes:
            raise TodalError(f"The test set has label {int(test_labels.max())} but the training set only "
                             f"{num_classes} classes; pass num_classes={int(test_labels.max()) + 1}.")

    # --- files --------------------------------------------------------------------------------
    def _path(self, *parts: str) -> Path:
        return self.workdir.joinpath(*parts)

    def _load(self, name: str) -> dict:
        return self.checkpoints.load(name, f"Checkpoint {self.checkpoints.path(name)} is missing, so the run cannot "
                                           "resume; delete the run directory to start over.")

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
        return self.engine.model_with(state).to(self.device).eval()

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
        if not self.checkpoints.exists(f"cycle_{cycle}.pt"):
            raise TodalError(f"Cycle {cycle}'s checkpoint is gone: a run keeps only its last two cycles; build the "
                             "loop with keep_checkpoints=True to keep every cycle.")
        return self._load(f"cycle_{cycle}.pt")

    def _saved(self, cycle: int | None) -> tuple[nn.Module, EMA | None]:
        strategy = self.engine.strategy.state_dict()  # reading a checkpoint leaves the loop's strategy as it was
        model, ema = self.engine.restore(self._checkpoint(self._trained(cycle)))
        self.engine.strategy.load_state_dict(strategy)
        return model.eval(), ema

    # --- the run ------------------------------------------------------------------------------
    def _used(self, flavor: dict) -> dict:
        """The flavor choices this run uses: without the TOD loss, none of the loss's or of how the teacher
        runs in it; without an EMA teacher, none of the teacher's."""
        unused = set()
        if not self.semi_supervised:
            unused |= {"consistency", "consistency_reduction", "lam", "teacher_train_mode"}
        if not self.needs_ema:
            unused |= {"ema_init", "ema_buffers"}
        return {k: v for k, v in flavor.items() if k not in unused}

    def _comparable(self, saved: dict) -> dict:
        """A saved config.json in today's terms: values added since it was written take the behaviour its run
        had, and a strategy instance's options are those that differ from the defaults."""
        saved = dict(saved)
        if isinstance(saved.get("flavor"), dict):  # runs made before a flavor choice existed used its old value
            saved["flavor"] = {**FLAVOR_BEFORE_CHOICES, **saved["flavor"]}
        if isinstance(saved.get("train"), dict):  # runs made before a training option existed ran its default
            saved["train"] = {**TRAIN_BEFORE_OPTIONS, **saved["train"]}
        options = saved.get("strategy_options")
        if isinstance(options, dict) and "class" in options:  # recorded in full by earlier versions
            saved["strategy_options"] = strategy_options(self.strategy) if all(
                options.get(k) == v for k, v in strategy_options(self.strategy).items()) and \
                options["class"] == f"{type(self.strategy).__module__}.{type(self.strategy).__qualname__}" \
                else options
        return saved

    def _start(self) -> Pool:
        cfg = self.config.to_dict()
        if self._path("config.json").exists():
            saved = self._comparable(self._read_json("config.json"))
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
        perm = torch.randperm(len(self.train_set), generator=generator(self.seed, "initial"))
        first = perm[: self.initial].sort().values
        if not self._label(pool, first, 0):
            raise TodalError("The oracle has no labels for the initial set yet; label the samples in "
                             "to_label.csv and run again.")
        self.checkpoints.save("init.pt", self.engine.initial())
        pool.save(self._path("pool.json"))
        write_json(self._path("progress.json"), {"cycle": 0, "stage": "train", "pending": {}})
        return pool

    def _extend(self, saved: dict) -> None:
        """More cycles (or another budget for the selections still to come) on an existing run: what already
        happened stays; a run cannot be cut below the cycle it has reached."""
        reached = self._read_json("progress.json")["cycle"] if self._path("progress.json").exists() else 0
        if self.cycles <= reached:
            raise TodalError(f"{self.workdir} has reached cycle {reached + 1} of {saved.get('cycles')}; it cannot be "
                             f"cut to {self.cycles} cycles: pass cycles >= {reached + 1}, or use another "
                             "work directory.")
        write_json(self._path("config.json"), {**saved, **{k: self.config.to_dict()[k] for k in EXTENDABLE}})

    def run(self) -> list[dict]:
        """Run (or resume) every cycle; returns one dict of metrics per cycle. A finished run given more
        `cycles` continues from its last cycle's selection. In a data-parallel run (todal/distributed.py)
        every rank runs this; rank 0 writes, and all wait for it after every stage."""
        distributed.check_shared(self.workdir)
        distributed.barrier()
        pool = self._start()
        distributed.barrier()
        while True:
            prog = self._read_json("progress.json")
            stage = prog["stage"]
            if stage not in (*STAGES, "done"):
                raise TodalError(f"{self._path('progress.json')} names an unknown stage {stage!r}; restore the file or "
                                 "delete the run directory to start over.")
            if stage == "done" and prog["cycle"] < self.cycles - 1 and not prog.get("stopped"):
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

    def given(self, pool: Pool) -> PoolLabels:
        """The training set with the labels the oracle gave (the only labels training and selection read):
        class labels from the pool; masks from the oracle, which the pool does not keep."""
        return PoolLabels(self.data[0], self.oracle.label if pool.dense else pool.labels)

    def _train(self, pool: Pool, prog: dict) -> None:
        c, engine = prog["cycle"], self.engine
        start = self._load("init.pt" if c == 0 else f"cycle_{c - 1}.pt")
        if c > 0:
            start["strategy"] = self._load(f"strategy_{c - 1}.pt")
        model, ema = engine.restore(start)
        if self.reinit and c > 0:
            model.load_state_dict(engine.new_model("reinit", c).state_dict())
        stats = engine.train(model, ema, self.given(pool), pool.labeled, pool.unlabeled, n=c,
                             previous=start["model"] if c > 0 else None)
        self.checkpoints.save(f"cycle_{c}.pt", engine.state(model, ema))
        if not self.keep_checkpoints and distributed.is_main():
            for old in (f"cycle_{c - 2}.pt", f"strategy_{c - 2}.pt"):  # COD needs one cycle back, no more
                self.checkpoints.remove(old)
        self._advance(prog, "evaluate", train_loss=stats["loss"], train_steps=stats["steps"],
                      train_time_s=round(stats["time_s"], 4),
                      train_epoch_losses=[round(v, 5) for v in stats["epoch_losses"]])

    def _evaluate(self, pool: Pool, prog: dict) -> None:
        c = prog["cycle"]
        model, _ = self.engine.restore(self._load(f"cycle_{c}.pt"))
        n = len(pool)
        pending = {"cycle": c, "labeled": n, "labeled_fraction": n / pool.size}
        if self.dense:
            pending.update(self.engine.evaluate(model, self.data[1]))
        else:
            m, correct = self.engine.evaluate(model, self.data[1], per_item=True)
            pending.update(m, **self._signals(model, correct, c))
        stopped = None
        if self.stop is not None and c < self.cycles - 1:
            history = [_signal_row(r) for r in self.records() if r["cycle"] < c] + [_signal_row(pending)]
            stopped = should_stop(criteria(history, self.stop), self.stop)
        if c == self.cycles - 1 or stopped:
            self._finish(prog, {**prog["pending"], **pending, **({"stopped": stopped} if stopped else {})})
            write_json(self._path("progress.json"), {"cycle": c, "stage": "done", "pending": {},
                                                     **({"stopped": stopped} if stopped else {})})
        else:
            self._advance(prog, "select", **pending)

    def stop_set(self) -> Tensor:
        """The fixed stop set: a seeded random sample of the training set (StopRule.stop_set, 1,000) whose
        predictions by consecutive models the stabilizing-predictions criterion compares."""
        size = (self.stop or StopRule()).stop_set
        return torch.randperm(len(self.train_set), generator=generator(self.seed, "stopset"))[:size].sort().values

    def _signals(self, model: nn.Module, correct: Tensor, c: int) -> dict:
        """The stopping criteria's inputs of cycle c; this cycle's predictions kept (`checkpoints/signals_<c>.pt`)
        for the next cycle's κ and paired gain."""
        preds, uncertainty = self.engine.signals(model, self.data[0], self.stop_set())
        self.checkpoints.save(f"signals_{c}.pt", {"stop_preds": preds, "test_correct": correct})
        out = {"pool_uncertainty": round(uncertainty, 6), "stop_kappa": None, "paired": None}
        if c > 0 and self.checkpoints.exists(f"signals_{c - 1}.pt"):
            before = self.checkpoints.load(f"signals_{c - 1}.pt")
            out["stop_kappa"] = round(cohen_kappa(before["stop_preds"], preds, self.num_classes), 6)
            then = before["test_correct"]
            out["paired"] = [int((correct & ~then).sum()), int((~correct & then).sum()), len(correct)]
        return out

    def _previous(self, c: int) -> Callable[[], nn.Module]:
        """COD's reference for cycle c: the previous cycle's model, in cycle 0 the flavor's initial reference."""
        def build() -> nn.Module:
            if c > 0:
                return self.engine.model_with(self._load(f"cycle_{c - 1}.pt")["model"])
            init = self._load("init.pt")
            return self.engine.model_with(init["reference"] if init.get("reference") is not None else init["model"])

        return build

    def _select(self, pool: Pool, prog: dict) -> None:
        c, engine = prog["cycle"], self.engine
        model, ema = engine.restore(self._load(f"cycle_{c}.pt"))
        labeled = pool.labeled
        labels = LabelMaps(self.given(pool), labeled) if pool.dense else pool.labels[labeled]
        t0 = time.perf_counter()
        chosen = engine.select(model, ema, self.data[0], labeled=labeled, labels=labels, unlabeled=pool.unlabeled,
                               budget=self.budget, cycle=c, n=c, previous=self._previous(c)).indices
        dt = time.perf_counter() - t0
        self.checkpoints.save(f"strategy_{c}.pt", engine.strategy.state_dict())
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
        for part in chunks(indices, self.engine.batch_size):
            maps = self.oracle.label(part)
            if maps is None:
                return False
            pool.check_maps(maps, len(part))
        pool.add(indices, None, cycle=cycle)
        return True

    def _finish(self, prog: dict, record: dict) -> None:
        """Write metrics.jsonl with this cycle's record replacing any earlier one for the cycle (and, with a
        `log_dir`, the cycle's TensorBoard events); one line per cycle when progress is on."""
        records = [r for r in self.records() if r["cycle"] != prog["cycle"]] + [record]
        write_jsonl(self._path("metrics.jsonl"), sorted(records, key=lambda r: r["cycle"]))
        if self.progress:
            metric = "miou" if self.dense else "accuracy"
            print(f"cycle {record['cycle']}: {record['labeled']} labels, test {metric} {100 * record[metric]:.2f}%"
                  + (f", κ {record['stop_kappa']:.4f}" if record.get("stop_kappa") is not None else "")
                  + (f"; stopped: {record['stopped']}" if record.get("stopped") else ""), file=sys.stderr, flush=True)
        if self.log_dir is not None and distributed.is_main():
            if self._recorder is None:
                from .tensorboard import Recorder

                self._recorder = Recorder(self.log_dir)
            chosen = torch.tensor(record.get("selected") or [], dtype=torch.long)
            images = fetch(self.train_set, chosen[:64])[0] if len(chosen) else None
            self._recorder.record(record["cycle"], record, labels=record["labeled"], images=images)
