"""A labeling project: a folder of a person's images, the labels they give, and the model that asks.

    project = Project.init("pets", images="photos/", classes=["cat", "dog", "bird"])  # + a random seed batch
    ... a person labels the queue (todal annotate, todal import) ...
    project.step(budget=100, strategy="cod")   # train on the labels so far, evaluate, queue the next 100
    project.status()

Layout of PROJECT/: `project.db` (the state, `todal.project.store`), `cache/` (the images decoded at
the model's input size), `checkpoints/step_<s>.pt` (model and EMA teacher after step s's training),
`checkpoints/strategy_<s>.pt` (what step s's selection kept: COD's outputs, so the next step scores
the pool with one inference pass),
`masks/<id>.png` (segmentation labels), `learning_curve.png`.

Accuracy without a test set: a random slice of the seed batch, and of every step's batch, is marked
*holdout* when it is queued; its labels are never trained on. A step's slice comes from the *validation
reserve*: a fixed random share (`holdout`) of the pool, each sample in or out by a hash of the project seed
and its id (stable as the folder grows), never offered to the strategy. The strategy takes the hard images
from the rest, so what remains there grows easier; the reserve does not, and every validation label is a
uniform draw from the whole pool, so the accuracy on them estimates the accuracy on the pool.

A step is resumable: it records the label snapshot it reads (the newest label row when it started),
so a step killed at any point and run again with the same arguments trains on the same labels and
queues the same samples. Labels given meanwhile count from the next step on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..atomic import write_json, write_with
from ..ema import DEFAULT_DECAY
from ..engine import Checkpoints, Engine, Seeds, derive_seed, generator, seeded
from ..errors import Int, Real, TodalError, check_choice, check_int, validate
from ..flavor import flavor_for
from ..inference import predict
from ..labeled import PoolLabels
from ..models.source import FROZEN_DROPOUT, ModelSource
from ..settings import from_dict
from ..presets import PROJECT_TRAIN
from ..strategies import Strategy
from ..strategies import get as get_strategy
from ..stopping import StopRule, cohen_kappa, criteria, mean_uncertainty, recommend, wilson
from ..strategies.base import LabelMaps
from ..tasks import get_task
from ..train import TrainConfig
from .images import ImageCache, FolderImages, guess_mode, read_files, scan
from .store import DB_NAME, Store

FLUSH_ROWS = 4096  # decoded images held before they are written to the cache

_INIT_RULES = {"size": Int(lo=4, hi=1024, expected="an int in [4, 1024] (pixels)"),
               "holdout": Real(lo=0, hi=1, lo_open=True, hi_open=True), "seed_batch": Int(lo=1)}


@dataclass
class IndexReport:
    """What `init` found in the folder."""

    added: list[str] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)   # (old path, new path)
    changed: list[str] = field(default_factory=list)             # same path, new content
    missing: list[str] = field(default_factory=list)             # gone from the folder
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    unchanged: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"indexed in {self.seconds:.1f}s: {len(self.added)} new, {self.unchanged} unchanged, "
               f"{len(self.moved)} moved, {len(self.changed)} changed, {len(self.missing)} missing, "
               f"{len(self.unreadable)} unreadable"]
        out += [f"  moved: {a} -> {b}" for a, b in self.moved[:20]]
        out += [f"  changed (labels kept; check them): {p}" for p in self.changed[:20]]
        out += [f"  missing (kept in the project, not used until it is back): {p}" for p in self.missing[:20]]
        out += [f"  unreadable (skipped): {p}: {why}" for p, why in self.unreadable[:20]]
        return out


def _classes(classes) -> list[str]:
    if isinstance(classes, str):
        classes = classes.split(",")
    names = [str(c).strip() for c in classes]
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise TodalError(f"Classes must be at least 2 distinct non-empty names, e.g. --classes cat,dog,bird. "
                         f"Got {','.join(names)!r}.")
    from .exchange import check_class_names

    check_class_names(names, "rename it in --classes, e.g. --classes cat,dog,bird.")
    return names


def _model_setup(asked: dict, task: str, num_classes: int, channels: str, images: Path, mode: str | None = None
                 ) -> dict:
    """The project's model and input from what `todal init` was given, checked before any image is decoded: the
    model is built once and run on a blank batch at the input side (the errors a step would hit later: an unknown
    spec, a factory without a module, weights that do not fit, an output that is not [B, C])."""
    source = ModelSource(asked["model"], dict(asked.get("model_options") or {}), weights=asked.get("weights"),
                         frozen=bool(asked.get("frozen")),
                         head_dropout=FROZEN_DROPOUT if asked.get("head_dropout") is None else asked["head_dropout"])
    if source.frozen and task != "classification":
        raise TodalError("A frozen backbone trains a classification head; for segmentation drop --frozen.")
    spec = source.input_spec()
    size = asked.get("size") or (spec.size if spec else 32)
    size = validate("todal init", _INIT_RULES, size=size)["size"]
    if spec is not None:
        mode = "RGB" if spec.channels == 3 else "L"
    elif mode is None:
        mode = guess_mode(images, scan(images)) if channels == "auto" else ("L" if channels == "1" else "RGB")
    in_channels = 1 if mode == "L" else 3
    with seeded(0, "project", "probe"):
        model = source.build(in_channels=in_channels, num_classes=num_classes)
    x = torch.zeros(2, in_channels, size, size)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:  # the user's model: any error, told with the input shape
        raise TodalError(f"The model fails on {size}x{size} images of {in_channels} channel(s) ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''}); pass --size for the side it takes, or "
                         "--channels.") from None
    want = [2, num_classes] if task == "classification" else [2, num_classes, size, size]
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != want:
        raise TodalError(f"The model's output on a batch of 2 images is {got}, not {want} ({num_classes} classes); "
                         f"build it with {num_classes} outputs, returning the logits tensor.")
    return {"model": source.name, "model_options": dict(source.options), "weights": source.weights,
            "weights_sha256": source.recorded_options().get("weights_sha256"), "frozen": source.frozen,
            "head_dropout": source.head_dropout,
            "size": size, "mode": mode, "input": spec.to_dict() if spec else None}


def _interleave(chosen: torch.Tensor, scores, strategy: str, validation: torch.Tensor) -> list[tuple]:
    """The queue `(sample, rank, score, strategy)`: the strategy's picks in their order with the validation slice
    spread evenly among them, so a batch labeled halfway holds its share of validation labels."""
    a = [((i + 0.5) / len(chosen), int(x), None if scores is None else float(scores[i]), strategy)
         for i, x in enumerate(chosen.tolist())]
    b = [((j + 0.5) / len(validation), int(x), None, "validation") for j, x in enumerate(validation.tolist())]
    merged = sorted(a + b, key=lambda t: t[0])
    return [(x, r, score, who) for r, (_, x, score, who) in enumerate(merged)]


def reserve_keys(seed: int, n: int) -> torch.Tensor:
    """`[n]` keys uniform in [0, 1), one per sample id, from the project seed alone (splitmix64 of seed and id):
    sample i is in the validation reserve when its key is below the holdout share, and the reserve is served in
    key order. A sample's key never changes as the pool grows."""
    ids = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = ids * np.uint64(0x9E3779B97F4A7C15) + np.uint64(derive_seed(seed, "validation-reserve"))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) / float(2 ** 53))


def _signal_row(m: dict) -> dict:
    """A step's metrics as `todal.stopping.criteria` reads them."""
    return {"labels": m.get("labeled", 0), "kappa": m.get("stop_kappa"), "uncertainty": m.get("pool_uncertainty"),
            "paired": m.get("paired")}


class Project:
    """An open labeling project (see the module docstring). `Project.init(...)` makes one."""

    def __init__(self, root):
        self.root = Path(root)
        db = self.root / DB_NAME
        if not db.is_file():
            raise TodalError(f"{self.root} is not a todal project (no {DB_NAME}); create it with "
                             f"`todal init {self.root} --images DIR --classes a,b,c`.")
        self.store = Store(db)
        self.meta = self.store.meta()
        self.classes: list[str] = self.meta["classes"]
        self.images = Path(self.meta["images"])
        self.task = self.meta["task"]

    # --- creating and indexing ----------------------------------------------------------------
    @classmethod
    def init(cls, root, images, classes, *, labels: str | Path | None = None, model: str | None = None,
             model_options: dict | None = None, weights: str | None = None, frozen: bool | None = None,
             head_dropout: float | None = None, size: int | None = None, seed: int = 0, seed_batch: int = 100,
             holdout: float = 0.2,
             task: str = "classification", channels: str = "auto", train: dict | None = None,
             progress: bool = False) -> tuple["Project", IndexReport]:
        """Create the project (or, when it exists, index the folder again: new files are added,
        moved/changed/missing ones reported) and queue a random seed batch the first time.

        model: a model source (`todal.models.ModelSource`: a built-in name, MODULE:FUNCTION, hf:ID_OR_DIR, ...;
        default small_cnn), with `weights` and `frozen`; its input decides the side and channels the images are
        cached at (a pretrained model's own, else `size`, default 32). On an existing project a model, weights,
        frozen or size given anew replaces the project's: the next step starts that model afresh, and the cache is
        rebuilt at its side."""
        root, images = Path(root), Path(images).expanduser().resolve()
        classes = _classes(classes)
        if not images.is_dir():
            raise TodalError(f"Image folder {images} does not exist; pass --images with a folder of images.")
        given = {k: v for k, v in (("model", model), ("model_options", model_options), ("weights", weights),
                                   ("frozen", frozen), ("head_dropout", head_dropout), ("size", size))
                 if v is not None}
        if (root / DB_NAME).exists():
            project = cls(root)
            if project.classes != classes:
                raise TodalError(f"The class list changed since init (was {','.join(project.classes)}, now "
                                 f"{','.join(classes)}); pass the same --classes, or start a new project for new classes.")
            if project.images != images:
                raise TodalError(f"This project indexes {project.images}, not {images}; pass --images "
                                 f"{project.images}, or start a new project.")
            if given:
                project._change_model(given)
        else:
            check_choice("task", "todal init", task, ("classification", "segmentation"))
            check_choice("channels", "todal init", channels, ("auto", "1", "3"))
            holdout, seed_batch = validate("todal init", _INIT_RULES, holdout=holdout, seed_batch=seed_batch).values()
            TrainConfig(**{**PROJECT_TRAIN, **(train or {})})  # refuses bad settings before anything is written
            setup = _model_setup({"model": "small_cnn", **given}, task, len(classes), channels, images)
            root.mkdir(parents=True, exist_ok=True)
            Store.create(root / DB_NAME, {
                "classes": classes, "task": task, "images": str(images), "name": root.resolve().name, **setup,
                "seed": int(seed), "seed_batch": seed_batch, "holdout": float(holdout),
                "train": {**PROJECT_TRAIN, **(train or {})}, "created": time.time()})
            project = cls(root)
        with project._lock("todal init"):
            report = project.index(progress=progress)
            if labels is not None:
                project.import_csv(labels, source="known")
            if not project.store.steps():
                project._seed_batch()
        return project, report

    def model_line(self) -> str:
        """What `todal init` says of the model and the input it gets."""
        m, spec = self.meta, self.meta.get("input")
        line = (f"model {m['model']}" + (f" with weights {m['weights']}" if m.get("weights") else "")
                + (" (frozen backbone: a head is trained on its embeddings)" if m.get("frozen") else "")
                + f"; images at {m['size']}x{m['size']} {'RGB' if m['mode'] == 'RGB' else 'grayscale'}")
        if spec:
            line += f", normalized with the model's own mean {spec['mean']} and std {spec['std']}"
        if m["mode"] == "RGB" and guess_mode(self.images, scan(self.images)) == "L":
            line += "; the images are grayscale and are converted to RGB for this 3-channel model"
        return line + "."

    def _change_model(self, given: dict) -> None:
        """A model, weights, frozen or side given anew to `todal init` on this project: checked like a new one;
        when it differs, recorded as the project's model from the next step on (which starts it afresh)."""
        keys = ("model", "model_options", "weights", "frozen", "head_dropout", "size")
        now = {k: self.meta.get(k) for k in keys}
        asked = {**now, **given}
        if "model" in given and "model_options" not in given:
            asked["model_options"] = {}
        if "model" in given and "weights" not in given:
            asked["weights"] = None
        if "model" in given and "size" not in given:
            asked["size"] = None  # the new model's own side
        setup = _model_setup(asked, self.task, len(self.classes), "auto", self.images,
                             mode=self.meta["mode"] if "model" not in given else None)
        earlier = {"weights": None, "weights_sha256": None, "frozen": False, "head_dropout": FROZEN_DROPOUT,
                   "input": None}  # what projects made before these existed had
        if all(setup[k] == self.meta.get(k, earlier.get(k)) for k in setup):
            return
        with self._lock("todal init"):
            self.store.set_meta(**setup, model_epoch=int(self.meta.get("model_epoch", 0)) + 1)
        self.meta = self.store.meta()

    @property
    def cache(self) -> ImageCache:
        return ImageCache(self.root / "cache" / f"images-{self.meta['size']}-{self.meta['mode']}.u8",
                          1 if self.meta["mode"] == "L" else 3, self.meta["size"])

    def index(self, progress: bool = False) -> IndexReport:
        """Walk the images folder and bring the samples table and the cache up to date."""
        t0 = time.perf_counter()
        report = IndexReport()
        known = {path: (i, sha, status) for i, path, sha, _, status, _ in self.store.samples()}
        by_sha: dict[str, list[int]] = {}
        for path, (i, sha, _) in known.items():
            by_sha.setdefault(sha, []).append(i)
        on_disk = scan(self.images)
        present = set(on_disk)
        gone = {known[p][0]: p for p in known if p not in present}
        new_rows, updates, pixels = [], [], {}
        size, mode = self.meta["size"], self.meta["mode"]
        blank = np.zeros((1 if mode == "L" else 3, size, size), dtype=np.uint8)
        start = self.store.num_samples()  # new files take the next ids, in folder order
        cache = self.cache
        cached = len(cache)  # rows already decoded at the project's side and mode
        for d in read_files(self.images, on_disk, size, mode, progress=progress):
            status = "ok" if d.pixels is not None else "unreadable"
            if d.error is not None:
                report.unreadable.append((d.path, d.error))
            if d.path in known:
                i, sha, old_status = known[d.path]
                if sha != d.sha256 or old_status != status:
                    if sha != d.sha256 and old_status != "unreadable":
                        report.changed.append(d.path)
                    updates.append((i, d.path, d.sha256, d.bytes, status))
                else:
                    report.unchanged += 1
                if d.pixels is not None and (sha != d.sha256 or old_status != "ok" or i >= cached):
                    pixels[i] = d.pixels  # new content, or a cache at a new side or mode being rebuilt
            else:
                moved_from = next((i for i in by_sha.get(d.sha256, []) if i in gone), None)
                if moved_from is not None:
                    report.moved.append((gone.pop(moved_from), d.path))
                    updates.append((moved_from, d.path, d.sha256, d.bytes, status))
                else:
                    pixels[start + len(new_rows)] = d.pixels if d.pixels is not None else blank
                    new_rows.append(((d.path, d.sha256, d.bytes), status))
            if len(pixels) >= FLUSH_ROWS:  # the decoded pool goes to disk as it comes, never whole in RAM
                cache.write(pixels)
                pixels = {}
        if pixels:
            cache.write(pixels)
        for i, path in gone.items():
            if known[path][2] != "missing":
                report.missing.append(path)
                updates.append((i, path, known[path][1], 0, "missing"))
        if updates:
            self.store.update_samples(updates)
        if new_rows:
            ids = self.store.add_samples([r for r, _ in new_rows], [st for _, st in new_rows])
            if ids[0] != start:
                raise TodalError(f"{self.root} was indexed by another process at the same time; run `todal init` "
                                 "again.")
            report.added = [r[0] for r, _ in new_rows]
        if self.store.num_samples() == 0:
            raise TodalError(f"No images (.png, .jpg, .jpeg, .webp, .bmp) under {self.images}; point --images at "
                             "the folder that holds them (any depth).")
        report.seconds = time.perf_counter() - t0
        return report

    def _seed_batch(self) -> None:
        """Step 0: a random batch (the paper's random initial set); a random slice of it is the holdout."""
        ok = self._status_ids("ok")
        g = generator(self.meta["seed"], "project", "seed")
        pick = ok[torch.randperm(len(ok), generator=g)[: self.meta["seed_batch"]]]
        self.store.begin_step(0, {"strategy": "random", "budget": len(pick)})
        self._queue_random(0, pick, g, metrics={"queued": len(pick)})

    def _queue_random(self, step: int, pick: torch.Tensor, g: torch.Generator, metrics: dict, guesses=None) -> None:
        n_hold = int(round(len(pick) * self.meta["holdout"]))
        holdout = pick[torch.randperm(len(pick), generator=g)[:n_hold]]
        rows = [(int(s), r, None, "random", guesses[r] if guesses else []) for r, s in enumerate(pick)]
        self.store.finish_step(step, {**metrics, "holdout_added": n_hold}, rows, holdout=holdout.tolist())

    def _status_ids(self, status: str) -> torch.Tensor:
        return torch.tensor([i for i, _, _, _, s, _ in self.store.samples() if s == status], dtype=torch.long)

    # --- the step -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, who: str = "todal step"):
        """One `init` or `step` at a time on a project (the OS drops the lock if the process dies)."""
        path = self.root / "step.lock"
        with open(path, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TodalError(f"Another `todal init` or `todal step` is running on {self.root}; wait for it to "
                                 f"finish, then run {who} again.") from None
            yield

    def _dataset(self) -> FolderImages:
        spec = self.meta.get("input")
        return FolderImages(self.cache, len(self.classes), classes=self.classes, name=self.meta["name"],
                            task=self.task, stats=(spec["mean"], spec["std"]) if spec else None)

    @property
    def source(self) -> ModelSource:
        """Where the project's models come from (`todal init --model`, `--weights`, `--frozen`)."""
        return ModelSource(self.meta["model"], dict(self.meta["model_options"]), weights=self.meta.get("weights"),
                           frozen=bool(self.meta.get("frozen", False)),
                           head_dropout=self.meta.get("head_dropout", FROZEN_DROPOUT))

    @property
    def in_channels(self) -> int:
        return 1 if self.meta["mode"] == "L" else 3

    def engine(self, strategy: Strategy, *, semi: bool = False, train: TrainConfig | None = None,
               device: torch.device | None = None, progress: bool = False, source=None) -> Engine:
        """The engine's cycle for this project: the default flavor, its models (`source`, default the project's;
        a frozen backbone's head source), the random streams its steps have always used."""
        return Engine(source or self.source, get_task(self.task, len(self.classes)), strategy,
                      flavor=flavor_for("default", task=self.task),  # todal.flavor says why
                      train=train or TrainConfig(**self.meta["train"]), semi=semi,
                      seeds=Seeds(self.meta["seed"], models="project", prefix="project-"),
                      in_channels=self.in_channels, num_classes=len(self.classes),
                      ema_decay=DEFAULT_DECAY, device=device or torch.device("cpu"), batch_size=256,
                      workdir=self.root, progress=progress, unit="step")

    def backbone(self) -> nn.Module:
        """The project's model as built from its source (a frozen project: the backbone that embeds the images)."""
        with seeded(self.meta["seed"], "project", "backbone"):
            return self.source.build(in_channels=self.in_channels, num_classes=len(self.classes))

    def embedded(self, device: torch.device | None = None, progress: bool = False):
        """A frozen project's images as the backbone's features, `(Embedded dataset, head source)`: computed once
        per image into `cache/embed-<key>.npy` (the key: the backbone, its weights and input), only for images
        new or changed since."""
        import json as _json

        from ..models.frozen import Embedded, HeadSource, cache_key, embed_rows, probe_dim

        device = device or torch.device("cpu")
        data = self._dataset()
        key = cache_key(self.source, {"size": self.meta["size"], "mode": self.meta["mode"],
                                      "input": self.meta.get("input")})
        folder = self.root / "cache"
        path, side = folder / f"embed-{key}.npy", folder / f"embed-{key}.json"
        samples = self.store.samples()
        digests = [sha[:16] if st == "ok" else "" for _, _, sha, _, st, _ in samples]
        done = _json.loads(side.read_text())["rows"] if side.exists() and path.exists() else []
        todo = [i for i, d in enumerate(digests) if d and (i >= len(done) or done[i] != d)]
        if todo:
            backbone = self.backbone()
            dim = np.load(path, mmap_mode="r").shape[1] if path.exists() else probe_dim(backbone, data, device)
            if not path.exists() or np.load(path, mmap_mode="r").shape[0] < len(samples):
                grown = folder / f".embed-{key}.grow.npy"
                out = np.lib.format.open_memmap(grown, mode="w+", dtype=np.float32, shape=(len(samples), dim))
                if path.exists():
                    old = np.load(path, mmap_mode="r")
                    out[: len(old)] = old
                out.flush()
                del out
                os.replace(grown, path)
            out = np.load(path, mmap_mode="r+")
            embed_rows(backbone, data, torch.tensor(todo), out, batch_size=256, device=device, progress=progress)
            out.flush()
            del out
            write_json(side, {"key": key, "rows": [d if i >= len(done) or i in set(todo) else done[i]
                                                   for i, d in enumerate(digests)]})
            for stale in folder.glob("embed-*.npy"):  # another backbone's: rebuilt if it ever comes back
                if stale != path:
                    stale.unlink(missing_ok=True)
                    stale.with_suffix(".json").unlink(missing_ok=True)
        features = np.load(path, mmap_mode="r")
        return Embedded(data, features), HeadSource(self.source, int(features.shape[1]), self.source.head_dropout)

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.root / "checkpoints")

    def _load(self, step: int) -> dict:
        return self.checkpoints.load(f"step_{step}.pt", f"Checkpoint {self._checkpoint(step)} is missing; restore "
                                                        f"it, or delete the steps after {step - 1} to retrain.")

    def _checkpoint(self, step: int) -> Path:
        return self.checkpoints.path(f"step_{step}.pt")

    def labels(self, snapshot: int | None = None):
        """The labels of the snapshot: `(labels [N] class or -1, masks {id: path})`."""
        n = self.store.num_samples()
        y = torch.full((n,), -1, dtype=torch.long)
        masks = {}
        for sample, (kind, cls, mask, _) in self.store.current(snapshot).items():
            if kind != "label":
                continue
            if self.task == "segmentation":
                if mask is not None:
                    masks[sample] = mask
                    y[sample] = 0
            elif cls is not None:
                y[sample] = cls
        return y, masks

    def _mask_reader(self, masks: dict[int, str]):
        """`read(idx [B]) -> int64 [B, S, S]`: the labeled masks, decoded once at the model's input size."""
        import numpy as np
        from PIL import Image

        size, n = self.meta["size"], self.store.num_samples()
        ids = sorted(masks)
        maps = torch.empty(len(ids), size, size, dtype=torch.uint8)
        for j, i in enumerate(ids):  # once per step, not per batch
            with Image.open(self.root / masks[i]) as im:
                maps[j] = torch.from_numpy(np.array(im.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8))
        pos = torch.full((n,), -1, dtype=torch.long)
        pos[torch.tensor(ids, dtype=torch.long)] = torch.arange(len(ids))

        def read(idx: torch.Tensor) -> torch.Tensor:
            return maps[pos[idx]].long()

        return read

    def step(self, *, budget: int = 100, strategy: str = "cod", semi: bool = False, options: dict | None = None,
             train: dict | None = None, device: str | None = None, progress: bool = False,
             log_dir: str | Path | None = None) -> dict:
        """Train on the labels so far (warm start), evaluate on the holdout, score, queue the top `budget`.
        `train`: training settings of this step over the project's (e.g. {"epochs": 5}); `log_dir`: TensorBoard
        event files the step adds itself to (its metrics, the curve, the images it queued).

        Returns the step's metrics. Run again after a crash: the step resumes from where it stopped.
        """
        budget = check_int("budget", "todal step", budget, lo=1)
        strat = get_strategy(strategy, **(options or {}))
        train = {**self.meta["train"], **(train or {})}
        from_dict(TrainConfig, train, "train")  # a bad setting is refused before anything is written
        config = {"strategy": strategy, "options": dict(options or {}), "budget": budget, "semi": bool(semi),
                  "train": train}
        epoch = int(self.meta.get("model_epoch", 0))
        if epoch:  # the project's model was replaced (todal init --model ...): the steps since train it
            config["model_epoch"] = epoch
        dev = distributed.device_for(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))

        def begin() -> tuple[int, dict]:
            steps = self.store.steps()
            s = max((r["step"] for r in steps if r["state"] == "done"), default=-1) + 1
            row = next((r for r in steps if r["step"] == s), None)
            if row is not None and row["config"] != config:
                raise TodalError(f"Step {s} was started with {row['config']} and did not finish; run it again with "
                                 "the same options to finish it.")
            if row is None:
                y, masks = self.labels()
                if not bool(((y >= 0) & ~self._holdout_mask()).any()):
                    raise TodalError("No labels to train on yet: label the queue first (`todal annotate "
                                     f"{self.root}` or `todal import {self.root} FILE`).")
                self.store.begin_step(s, config)
                row = next(r for r in self.store.steps() if r["step"] == s)
            return s, row

        # Under torchrun rank 0 alone holds the lock and writes the database (todal/distributed.py).
        with contextlib.ExitStack() as held:
            distributed.on_main(lambda: held.enter_context(self._lock()) and None)
            s, row = distributed.on_main(begin)
            metrics = self._run_step(s, row, strat, semi, TrainConfig(**train), budget, dev, progress)
            distributed.barrier()
            if log_dir is not None and distributed.is_main():
                from ..tensorboard import Recorder

                recorder = Recorder(log_dir)
                queued = torch.tensor([it.sample for it in self.store.queued() if it.step == s], dtype=torch.long)
                recorder.record(s, metrics, labels=metrics["labeled"],
                                images=self.cache.batch(queued[:64]) if len(queued) else None)
                recorder.close()
            return metrics

    def _holdout_mask(self) -> torch.Tensor:
        return torch.tensor([bool(h) for *_, h in self.store.samples()], dtype=torch.bool)

    def _run_step(self, s, row, strat, semi, train_cfg, budget, dev, progress) -> dict:
        t0 = time.perf_counter()
        source, data = None, self._dataset()
        if self.meta.get("frozen"):
            data, source = self.embedded(dev, progress)
        embed_time = time.perf_counter() - t0
        engine = self.engine(strat, semi=semi, train=train_cfg, device=dev, progress=progress, source=source)
        y, masks = self.labels(row["snapshot"])
        samples = self.store.samples()
        ok = torch.tensor([st == "ok" for _, _, _, _, st, _ in samples], dtype=torch.bool)
        holdout = torch.tensor([bool(h) for *_, h in samples], dtype=torch.bool)
        labeled = (y >= 0) & ok
        train_ids = (labeled & ~holdout).nonzero().flatten()
        val_ids = (labeled & holdout).nonzero().flatten()
        given = PoolLabels(data, self._mask_reader(masks) if self.task == "segmentation" else y)
        dense = self.task == "segmentation"
        # the model starts afresh at the first step and at the first after the project's model was replaced
        epoch = row["config"].get("model_epoch", 0)
        before = next((r for r in self.store.steps() if r["step"] == s - 1), None)
        fresh = s == 1 or before is None or before["config"].get("model_epoch", 0) != epoch
        start_name = "step_0.pt" if s == 1 else f"start_{s}.pt"
        if row["state"] == "started":
            if fresh:
                start = engine.initial()
                self.checkpoints.save(start_name, start)
            else:
                start = self._load(s - 1)
            kept = f"strategy_{s - 1}.pt"
            last = self.checkpoints.load(kept) if self.checkpoints.exists(kept) and not fresh else None
            # what the last selection kept (COD: its outputs), if the same strategy made it; else a fresh strategy
            start = {**start, "strategy": last["state"] if last is not None and last["name"] == strat.name else None}
            model, ema = engine.restore(start)
            unlabeled = (ok & (y < 0) & ~holdout).nonzero().flatten()
            stats = engine.train(model, ema, given, train_ids, unlabeled, n=s)
            self.checkpoints.save(f"step_{s}.pt", engine.state(model, ema))
            train_metrics = {"train_loss": stats["loss"], "train_steps": stats["steps"],
                             "train_time_s": round(stats["time_s"], 3), "trained_on": len(train_ids)}
            if self.meta.get("frozen"):
                train_metrics["embed_time_s"] = round(embed_time, 3)
            if distributed.is_main():
                self.store.step_trained(s, str(self._checkpoint(s).relative_to(self.root)), train_metrics)
            distributed.barrier()  # the checkpoint is written before any rank reads it
        else:
            train_metrics = dict(row["metrics"] or {})
        model, ema = engine.restore(self._load(s))

        t1 = time.perf_counter()
        val = self._validate(engine, model, given, val_ids)
        signals = {} if dense else self._signals(model, data, given, val_ids, s, dev)
        t_val = time.perf_counter() - t1
        # Score: every readable sample with no answer, not queued and waiting, not held out.
        answered = torch.zeros(len(samples), dtype=torch.bool)
        for sample, (kind, *_rest) in self.store.current(row["snapshot"]).items():
            answered[sample] = kind != "undo"
        waiting = torch.zeros(len(samples), dtype=torch.bool)
        for st, sample, _ in self.store.pending():
            if st < s:
                waiting[sample] = True
        free = ok & ~answered & ~waiting & ~holdout
        # every step's batch carries a validation slice, never trained on, from the reserve the strategy never
        # sees (module docstring): the estimate narrows and stays a uniform sample of the pool
        keys = reserve_keys(self.meta["seed"], len(samples))
        in_reserve = keys < self.meta["holdout"]
        spare = (free & in_reserve).nonzero().flatten()
        n_val = min(len(spare), int(round(self.meta["holdout"] * budget)))
        validation = spare[keys[spare].argsort()[:n_val]].sort().values
        rest = (free & ~in_reserve).nonzero().flatten()
        k = min(budget - n_val, len(rest))
        chosen, scores, scores_time = torch.empty(0, dtype=torch.long), None, 0.0
        if k > 0:
            t2 = time.perf_counter()
            previous = self.checkpoints.load(start_name)["model"] if fresh else self._load(s - 1)["model"]
            labels = LabelMaps(given, train_ids) if dense else y[train_ids]
            picked = engine.select(model, ema, data, labeled=train_ids, labels=labels, unlabeled=rest, budget=k,
                                   cycle=0 if fresh else s - 1, n=s, previous=lambda: engine.model_with(previous))
            chosen, scores = picked.indices, picked.scores
            scores_time = time.perf_counter() - t2
        queue = _interleave(chosen, scores, strat.name, validation)
        ids = torch.tensor([q[0] for q in queue], dtype=torch.long)
        guesses = self._guesses(model, data, ids, dev) if not dense and len(ids) else [[] for _ in queue]
        queue = [(i, r, score, who, guesses[r]) for i, r, score, who in queue]
        metrics = {**train_metrics, **val, **signals, "labeled": int(labeled.sum()), "queued": len(queue),
                   "strategy": strat.name, "semi": row["config"]["semi"], "validate_time_s": round(t_val, 3),
                   "score_time_s": round(scores_time, 3), "holdout_added": len(validation)}
        history = [_signal_row(r["metrics"]) for r in self.store.steps() if r["state"] == "done" and r["step"] > 0
                   and r["step"] < s] + [_signal_row(metrics)]
        if not dense:
            rule = StopRule()
            metrics["recommendation"] = recommend(criteria(history, rule), rule)[1]
        holdout_new = validation.tolist()
        t4 = time.perf_counter()
        self.checkpoints.save(f"strategy_{s}.pt", {"name": strat.name, "state": strat.state_dict()})
        if distributed.is_main():
            self.store.finish_step(s, metrics, queue, holdout=holdout_new)
        metrics["queue_time_s"] = round(time.perf_counter() - t4, 4)
        metrics["step"] = s
        if distributed.is_main():
            self._plot()
        return metrics

    def stop_set(self) -> torch.Tensor:
        """The fixed stop set: a seeded random sample (1,000 at most) of the images drawn at the first step, whose
        predictions by consecutive models stabilizing predictions compares (labels are never needed)."""
        if "stop_set" not in self.meta:
            ok = torch.tensor([i for i, _, _, _, st, _ in self.store.samples() if st == "ok"], dtype=torch.long)
            pick = ok[torch.randperm(len(ok), generator=generator(self.meta["seed"], "project-stopset"))[:1000]]
            if distributed.is_main():
                self.store.set_meta(stop_set=pick.sort().values.tolist())
            distributed.barrier()
            self.meta = self.store.meta()
        return torch.tensor(self.meta["stop_set"], dtype=torch.long)

    @torch.no_grad()
    def _signals(self, model, data, given, val_ids, s: int, dev) -> dict:
        """What the stopping criteria read of step s: κ between this model's and the last step's predictions on
        the stop set, the mean normalized entropy there, and on the validation items both steps had the counts
        newly right and newly wrong. Each step's predictions are kept (`checkpoints/stop_<s>.pt`, `val_<s>.pt`)."""
        stop = self.stop_set()
        outs = torch.cat([o for _, o in predict(model, data, stop, batch_size=256, device=dev)])
        preds = outs.argmax(1)
        correct = torch.zeros(0, dtype=torch.bool)
        if len(val_ids):
            val_out = torch.cat([o for _, o in predict(model, given, val_ids, batch_size=256, device=dev)])
            correct = val_out.argmax(1) == given.batch(val_ids)[1]
        self.checkpoints.save(f"stop_{s}.pt", {"ids": stop, "preds": preds})
        self.checkpoints.save(f"val_{s}.pt", {"ids": val_ids.clone(), "correct": correct})
        out = {"pool_uncertainty": round(mean_uncertainty(outs.softmax(1)), 6), "stop_kappa": None, "paired": None}
        if self.checkpoints.exists(f"stop_{s - 1}.pt"):
            before = self.checkpoints.load(f"stop_{s - 1}.pt")
            if torch.equal(before["ids"], stop):
                out["stop_kappa"] = round(cohen_kappa(before["preds"], preds, len(self.classes)), 6)
        if self.checkpoints.exists(f"val_{s - 1}.pt"):
            before = self.checkpoints.load(f"val_{s - 1}.pt")
            common, here, there = np.intersect1d(val_ids.numpy(), before["ids"].numpy(), return_indices=True)
            now, then = correct[torch.from_numpy(here)], before["correct"][torch.from_numpy(there)]
            out["paired"] = [int((now & ~then).sum()), int((~now & then).sum()), len(common)]
        return out

    def model(self, step: int | None = None) -> nn.Module:
        """The model a step trained (default: the latest finished step), on the CPU, in eval mode."""
        done = [r["step"] for r in self.store.steps() if r["state"] in ("trained", "done") and r["step"] > 0]
        if not done:
            raise TodalError(f"No step has trained a model yet; run `todal step {self.root}`.")
        step = max(done) if step is None else int(step)
        weights = self._load(step)["model"]
        if self.meta.get("frozen"):  # the backbone and the head the step trained on its features, as one model
            from ..models.frozen import FrozenHead, FrozenModel

            head = FrozenHead(weights["head.weight"].shape[1], len(self.classes), dropout=self.source.head_dropout)
            head.load_state_dict(weights)
            return FrozenModel(self.backbone(), head).eval()
        return self.engine(get_strategy("random")).model_with(weights).eval()

    def dataset(self) -> FolderImages:
        """The project's images as a todal dataset (inputs from the cache; labels come from the store)."""
        return self._dataset()

    @torch.no_grad()
    def _guesses(self, model, data, ids, dev, k: int = 3) -> list[list]:
        out = []
        for _, logits in predict(model, data, ids, batch_size=256, device=dev):
            p, c = logits.softmax(1).topk(min(k, logits.shape[1]), dim=1)
            out += [[[int(ci), round(float(pi), 4)] for ci, pi in zip(cr, pr)] for cr, pr in zip(c, p)]
        return out

    def _validate(self, engine: Engine, model, given, val_ids) -> dict:
        """Accuracy (or mIoU) on the held-out human labels, with its 95% interval and size."""
        n = len(val_ids)
        if n == 0:
            return {"val_size": 0, "val_accuracy": None, "val_low": None, "val_high": None}
        m = engine.evaluate(model, given, val_ids)
        if self.task == "segmentation":
            return {"val_size": n, "val_miou": m["miou"], "val_loss": m["loss"]}
        correct = int(round(m["accuracy"] * n))
        lo, hi = wilson(correct, n)
        return {"val_size": n, "val_accuracy": correct / n, "val_low": lo, "val_high": hi, "val_loss": m["loss"]}

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pts = [(r["metrics"]["labeled"], r["metrics"].get("val_accuracy"), r["metrics"].get("val_low"),
                r["metrics"].get("val_high"), r["metrics"]["val_size"]) for r in self.store.steps()
               if r["state"] == "done" and r["step"] > 0 and r["metrics"].get("val_accuracy") is not None]
        if not pts:
            return
        x, acc, lo, hi, n = zip(*pts)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.fill_between(x, [100 * v for v in lo], [100 * v for v in hi], alpha=0.2, label="95% interval")
        ax.plot(x, [100 * v for v in acc], marker="o", label=f"accuracy on the {n[-1]} held-out labels")
        ax.set_xlabel("labels (all, the held-out ones included)")
        ax.set_ylabel("holdout accuracy (%)")
        ax.set_title(self.meta["name"])
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        write_with(self.root / "learning_curve.png", lambda f: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)

    # --- labels in and out --------------------------------------------------------------------
    def import_csv(self, path, *, source: str = "csv") -> dict:
        """Labels from a CSV of `path,label` / `id,label` rows; returns counts and the rows it could not use."""
        from .exchange import read_csv

        if self.task == "segmentation":
            raise TodalError("A segmentation project takes masks, not class labels: "
                             f"`todal import {self.root} MASK_DIR --format masks`.")
        rows, problems = read_csv(path, self)
        return self._record(rows, problems, source)

    def import_masks(self, folder) -> dict:
        """Segmentation labels: PNG masks named like the images (pixel = class id, 255 = ignore)."""
        from .exchange import read_masks

        if self.task != "segmentation":
            raise TodalError("Masks are for segmentation projects; this one classifies images: import a CSV of "
                             "path,label rows (--format csv).")
        rows, problems = read_masks(folder, self)
        return self._record(rows, problems, "masks")

    def import_label_studio(self, path) -> dict:
        """Labels from Label Studio's JSON export (choices)."""
        from .labelstudio import read_export

        rows, problems = read_export(path, self.store)
        return self._record(rows, problems, "label-studio")

    def _record(self, rows: list[dict], problems: list[str], source: str) -> dict:
        written, duplicates = self.store.add_labels(rows, source=source) if rows else (0, 0)
        return {"imported": written, "duplicates": duplicates, "problems": problems}

    def export(self, fmt: str, out, **options) -> int:
        """Write the queue (`csv`, `label-studio`) or the labeled images (`imagefolder`) to `out`."""
        check_choice("format", "todal export", fmt, ("csv", "label-studio", "imagefolder"))
        if fmt == "csv":
            from .exchange import export_csv

            return export_csv(self.store, out, self.classes)
        if fmt == "label-studio":
            from .labelstudio import export_tasks

            return export_tasks(self.store, out, **options)
        if self.task == "segmentation":
            raise TodalError("imagefolder export is for classification projects; the masks are in "
                             f"{self.root / 'masks'}.")
        from .exchange import export_imagefolder

        return export_imagefolder(self.store, self.images, out, self.classes)

    # --- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        """Labels so far, per class, the queue, and per step the holdout accuracy with its interval and size, and
        how often the model's top guess on the queued images was the label the person then gave."""
        prog = self.store.progress()
        samples = self.store.samples()
        counts = {st: 0 for st in ("ok", "missing", "unreadable")}
        for *_, st, _ in samples:
            counts[st] += 1
        steps, hits = [], self.store.guess_hits()
        for r in self.store.steps():
            m = r["metrics"] or {}
            answered, right = hits.get(r["step"], (0, 0))
            steps.append({"step": r["step"], "state": r["state"], "strategy": r["config"].get("strategy"),
                          "labeled": m.get("labeled"), "queued": m.get("queued"),
                          **{k: m.get(k) for k in ("val_accuracy", "val_low", "val_high", "val_size", "val_miou")
                             if k in m},
                          "train_time_s": m.get("train_time_s"), "score_time_s": m.get("score_time_s"),
                          **{k: m.get(k) for k in ("stop_kappa", "pool_uncertainty", "paired") if k in m},
                          "guesses_answered": answered,
                          "guess_accuracy": right / answered if answered else None,
                          "guess_low": wilson(right, answered)[0] if answered else None,
                          "guess_high": wilson(right, answered)[1] if answered else None})
        done = [r["metrics"] for r in self.store.steps() if r["state"] == "done" and r["step"] > 0]
        rule, recommendation = StopRule(), None
        if done and self.task == "classification":
            c = criteria([_signal_row(m) for m in done], rule)
            verdict, text = recommend(c, rule)
            last = done[-1]
            recommendation = {"verdict": verdict, "text": text, **c, "rule": rule.to_dict(),
                              "estimate": {k: last.get(k) for k in ("val_accuracy", "val_low", "val_high", "val_size")}}
        return {"project": str(self.root), "images": str(self.images), "task": self.task, "classes": self.classes,
                "recommendation": recommendation, "samples": counts, "labeled": prog["labeled"], "unsure": prog["unsure"],
                "holdout_labeled": sum(1 for s, (k, *_r) in self.store.current().items()
                                       if k == "label" and samples[s][5]),
                "per_class": prog["per_class"], "per_annotator": prog["per_annotator"],
                "queue": {"waiting": prog["queued"], "batch": prog["batch"]}, "steps": steps,
                "learning_curve": str(self.root / "learning_curve.png")
                if (self.root / "learning_curve.png").exists() else None,
                "unmatched": self.store.unmatched()}
