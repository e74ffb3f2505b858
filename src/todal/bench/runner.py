"""The bench's runs: one `ActiveLoop` per (method, trial) under `<out>/runs/<label>-trial<t>/`.

Each run is an ordinary resumable run directory, so an interrupted bench redoes at most one stage
of one run, and adding a strategy (or a trial) reuses every finished run: a run whose directory
already holds the same configuration is resumed, never restarted.

Several bench processes may share one `--out` (one per GPU, or per core): a run is trained under an
exclusive lock (`<out>/locks/`, released by the OS if the process dies), a process skips the runs another
one holds and waits for them only at the end, so every process still writes the complete report.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import strategies
from .. import distributed
from ..errors import TodalError
from ..flavor import FLAVORS
from ..loop import ActiveLoop
from ..models.source import ModelSource
from .protocols import Protocol

# Table 1 of the paper: the ablation entries and the runs that are them.
ABLATION = {"Base": "random", "Base+Semi": "random+semi", "Base+Active": "cod", "Base+Semi+Active": "cod+semi"}
# Runs whose every cycle's checkpoint the analyses read (Fig. 3, 5, 6).
ANALYZED = ("cod+semi", "cod", "ll4al")


@dataclass(frozen=True)
class Method:
    """One bench method: a strategy, with or without the TOD loss, and optionally its own λ, α and flavor.

    cyclic: the unsupervised loss is against the previous cycle's model (CyclicOD loss, Fig. 10) instead
        of the EMA teacher; implies `semi`.
    flavor: run under this flavor instead of the protocol's (spec `cod+semi@paper`), with that flavor's own
        λ for the dataset unless the method sets one; None: the protocol's.
    """

    strategy: str
    semi: bool = False
    lam: float | None = None
    ema_decay: float | None = None
    cyclic: bool = False
    flavor: str | None = None

    @property
    def label(self) -> str:
        text = f"{self.strategy}+cyclic" if self.cyclic else f"{self.strategy}+semi" if self.semi else self.strategy
        if self.lam is not None:
            text += f" λ={self.lam:g}"
        if self.ema_decay is not None:
            text += f" α={self.ema_decay:g}"
        return text + (f"@{self.flavor}" if self.flavor else "")

    @property
    def slug(self) -> str:
        """The label as a directory name."""
        return self.label.replace(" λ=", "-lam").replace(" α=", "-alpha")


def parse_method(spec: str) -> Method:
    """'cod', 'cod+semi' (EMAOD loss) or 'cod+cyclic' (CyclicOD loss), each optionally '@FLAVOR'
    ('cod+semi@paper') -> Method; unknown strategies and flavors list the valid ones."""
    body, at, flavor = spec.strip().partition("@")
    name, _, suffix = body.partition("+")
    if suffix not in ("", "semi", "cyclic"):
        raise TodalError(f"Strategy spec {spec!r} is not NAME, NAME+semi or NAME+cyclic; write e.g. cod+semi.")
    if at and flavor not in FLAVORS:
        raise TodalError(f"Strategy spec {spec!r} names flavor {flavor!r}; use one of {', '.join(FLAVORS)}, "
                         f"e.g. cod+semi@paper.")
    strategies.get(name)
    return Method(name, suffix in ("semi", "cyclic"), cyclic=suffix == "cyclic", flavor=flavor or None)


def expand(specs) -> list[str]:
    """Method specs with "all" expanded to every registered strategy."""
    return strategies.names() if list(specs) == ["all"] else list(specs)


def plan(p: Protocol, specs: list[str] | tuple | None = None) -> list[Method]:
    """The methods of a bench: the requested ones, the Table 1 ablation, Fig. 9's EMAOD and Fig. 10's
    CyclicOD loss (`fig9`), Fig. 12's grid."""
    out: list[Method] = []

    def add(m: Method) -> None:
        if m not in out:
            out.append(m)

    for spec in expand(p.strategies if specs is None else specs):
        add(parse_method(spec))
    for spec in ABLATION.values():
        add(parse_method(spec))
    if p.fig9:
        add(Method("emaod"))
        add(Method("cod", True, cyclic=True))
    own = p.for_dataset("").lam if p.lam is None else p.lam  # after load_for, λ is the dataset's already
    for lam in p.grid_lams:
        for alpha in p.grid_alphas:
            if (float(lam), float(alpha)) != (own, p.ema_decay):  # that cell is cod+semi itself
                add(Method("cod", True, float(lam), float(alpha)))
    return out


def run_dir(out: Path, method: Method, trial: int) -> Path:
    return Path(out) / "runs" / f"{method.slug}-trial{trial}"


def make_loop(p: Protocol, method: Method, trial: int, train_set, test_set, out: Path,
              device: str | torch.device | None = None, progress: bool = False,
              flavor_overrides: dict | None = None, log_dir: Path | None = None) -> ActiveLoop:
    """The ActiveLoop of one (method, trial); the trial number is the seed (same initial pool).
    `flavor_overrides` change single flavor fields (a diagnostic's variant of a method). With a `pool_size`,
    the trial's pool is its own seeded random subset of `train_set` (the same for every method)."""
    own_flavor = method.flavor is not None and method.flavor != p.flavor
    lam = method.lam if method.lam is not None or own_flavor else p.lam
    flavor = {"name": method.flavor or p.flavor, **p.flavor_overrides,
              **({"consistency": "cyclic"} if method.cyclic else {}), **(flavor_overrides or {}),
              **({"lam": float(lam)} if lam is not None else {}),
              **({"score_subset": p.score_subset} if p.score_subset is not None else {})}
    source = ModelSource(p.model, dict(p.model_options), weights=p.model_weights, frozen=p.frozen)
    return ActiveLoop(source, trial_pool(p, train_set, trial), test_set,
                      strategy=strategies.get(method.strategy, **p.strategy_options.get(method.strategy, {})),
                      semi_supervised=method.semi, initial=p.initial, budget=p.budget, cycles=p.cycles, seed=trial,
                      flavor=flavor, train=p.train,
                      ema_decay=p.ema_decay if method.ema_decay is None else method.ema_decay,
                      task=p.task, eval_batch_size=p.eval_batch_size,
                      workdir=run_dir(out, method, trial), device=device, progress=progress,
                      keep_checkpoints=method.label in ANALYZED,
                      log_dir=None if log_dir is None else Path(log_dir) / f"{method.slug}-trial{trial}")


def trial_pool(p: Protocol, train_set, trial: int):
    """`train_set`, or with `p.pool_size` the trial's seeded random subset of that many samples."""
    if p.pool_size is None or p.pool_size >= len(train_set):
        return train_set
    if not hasattr(train_set, "subset"):
        raise TodalError(f"pool_size={p.pool_size} needs a dataset with .subset(idx) (an ArrayDataset); "
                         f"{type(train_set).__name__} has none: drop pool_size or load the data as arrays.")
    g = torch.Generator().manual_seed(10_000 + trial)
    return train_set.subset(torch.randperm(len(train_set), generator=g)[: p.pool_size].sort().values)


def is_done(path: Path) -> bool:
    prog = Path(path) / "progress.json"
    return prog.exists() and json.loads(prog.read_text()).get("stage") == "done"


class RunLock:
    """An exclusive, non-blocking-first lock on one run (`flock`: the OS drops it when the holder dies)."""

    def __init__(self, out: Path, name: str):
        folder = Path(out) / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, wait: bool) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        os.close(self.fd)  # closing drops the flock


def run_all(p: Protocol, methods: list[Method], train_set, test_set, out: Path, *,
            device: str | torch.device | None = None, progress: bool = False, log_dir: Path | None = None,
            log: Callable[[str], None] = print) -> tuple[dict[str, dict[int, list[dict]]], dict]:
    """Run (or resume, or reuse) every (method, trial), trial-major so a partial bench already compares
    every method; runs another process holds are skipped, then waited for at the end. Finished runs of trials
    beyond the protocol's (added with benchmarks/extra_trials.py) are read and reported too. Returns
    `{label: {trial: records}}` and `{"reused": [...], "ran": [...]}`."""
    results: dict[str, dict[int, list[dict]]] = {m.label: {} for m in methods}  # grid cells: first grid_trials
    status = {"reused": [], "ran": []}
    todo = [(trial, m) for trial in range(p.trials) for m in methods
            if m.lam is None or trial < p.grid_trials]
    for wait in (False, True):
        held = []
        for trial, m in todo:
            loop = make_loop(p, m, trial, train_set, test_set, out, device, progress, log_dir=log_dir)
            name = f"{m.slug}-trial{trial}"
            lock = None
            # torchrun: all ranks train each run together, in the same order; rank 0 decides on the lock
            together = distributed.active()
            if not distributed.broadcast(is_done(loop.workdir)):
                lock = RunLock(out, name) if distributed.is_main() else None
                got = lock.acquire(wait) if lock is not None else None
                if together:
                    got = distributed.broadcast(got)
                if not got:
                    if lock is not None:
                        lock.release()
                    log(f"== {name}: another process is running it; later")
                    held.append((trial, m))
                    continue
            try:
                done = distributed.broadcast(is_done(loop.workdir))  # another process may have finished it meanwhile
                if not done:
                    log(f"== {name}")
                results[m.label][trial] = loop.run()
            finally:
                if lock is not None:
                    lock.release()
            status["reused" if done else "ran"].append(name)
        todo = held
    # trials beyond the protocol's, finished beside its runs (benchmarks/extra_trials.py): reported too
    for m in methods:
        t = p.trials if m.lam is None else p.grid_trials
        while is_done(run_dir(out, m, t)):
            path = run_dir(out, m, t) / "metrics.jsonl"
            results[m.label][t] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            status["reused"].append(f"{m.slug}-trial{t}")
            t += 1
    # back in plan order, trial-major
    ordered = {m.label: dict(sorted(results[m.label].items())) for m in methods}
    return ordered, status
