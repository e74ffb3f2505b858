"""The bench's runs: one `ActiveLoop` per (method, trial) under `<out>/runs/<label>-trial<t>/`.

Each run is an ordinary resumable run directory, so an interrupted bench redoes at most one stage
of one run, and adding a strategy (or a trial) reuses every finished run: a run whose directory
already holds the same configuration is resumed, never restarted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import strategies
from ..errors import TodalError
from ..loop import ActiveLoop
from .protocols import Protocol

# Table 1 of the paper: the ablation entries and the runs that are them.
ABLATION = {"Base": "random", "Base+Semi": "random+semi", "Base+Active": "cod", "Base+Semi+Active": "cod+semi"}
# Runs whose every cycle's checkpoint the analyses read (Fig. 3, 5, 6).
ANALYZED = ("cod+semi", "cod", "ll4al")


@dataclass(frozen=True)
class Method:
    """One bench method: a strategy, with or without the TOD loss, and optionally its own λ and α."""

    strategy: str
    semi: bool = False
    lam: float | None = None
    ema_decay: float | None = None

    @property
    def label(self) -> str:
        text = f"{self.strategy}+semi" if self.semi else self.strategy
        if self.lam is not None or self.ema_decay is not None:
            text += f" λ={self.lam:g} α={self.ema_decay:g}"
        return text

    @property
    def slug(self) -> str:
        """The label as a directory name."""
        return self.label.replace(" λ=", "-lam").replace(" α=", "-alpha")


def parse_method(spec: str) -> Method:
    """'cod' or 'cod+semi' -> Method; unknown strategies list the valid ones."""
    name, _, suffix = spec.strip().partition("+")
    if suffix not in ("", "semi"):
        raise TodalError(f"Strategy spec {spec!r} is not NAME or NAME+semi; write e.g. cod+semi.")
    strategies.get(name)
    return Method(name, suffix == "semi")


def plan(p: Protocol, specs: list[str] | tuple | None = None) -> list[Method]:
    """The methods of a bench: the requested ones, the Table 1 ablation, Fig. 9's EMAOD, Fig. 12's grid."""
    out: list[Method] = []

    def add(m: Method) -> None:
        if m not in out:
            out.append(m)

    specs = list(p.strategies if specs is None else specs)
    if specs == ["all"]:
        specs = strategies.names()
    for spec in specs:
        add(parse_method(spec))
    for spec in ABLATION.values():
        add(parse_method(spec))
    if p.fig9:
        add(Method("emaod"))
    for lam in p.grid_lams:
        for alpha in p.grid_alphas:
            if (float(lam), float(alpha)) != (p.lam, p.ema_decay):  # that cell is cod+semi itself
                add(Method("cod", True, float(lam), float(alpha)))
    return out


def run_dir(out: Path, method: Method, trial: int) -> Path:
    return Path(out) / "runs" / f"{method.slug}-trial{trial}"


def make_loop(p: Protocol, method: Method, trial: int, train_set, test_set, out: Path,
              device: str | torch.device | None = None, progress: bool = False) -> ActiveLoop:
    """The ActiveLoop of one (method, trial); the trial number is the seed (same initial pool)."""
    return ActiveLoop(p.model, train_set, test_set, strategy=method.strategy, semi_supervised=method.semi,
                      strategy_options=dict(p.strategy_options.get(method.strategy, {})),
                      initial=p.initial, budget=p.budget, cycles=p.cycles, seed=trial, flavor=p.flavor,
                      train=p.train_config(), model_options=dict(p.model_options),
                      lam=p.lam if method.lam is None else method.lam,
                      ema_decay=p.ema_decay if method.ema_decay is None else method.ema_decay,
                      task=p.task, eval_batch_size=p.eval_batch_size,
                      workdir=run_dir(out, method, trial), device=device, progress=progress,
                      keep_checkpoints=method.label in ANALYZED)


def is_done(path: Path) -> bool:
    prog = Path(path) / "progress.json"
    return prog.exists() and json.loads(prog.read_text()).get("stage") == "done"


def run_all(p: Protocol, methods: list[Method], train_set, test_set, out: Path, *,
            device: str | torch.device | None = None, progress: bool = False,
            log: Callable[[str], None] = print) -> tuple[dict[str, dict[int, list[dict]]], dict]:
    """Run (or resume, or reuse) every (method, trial), trial-major so a partial bench already compares
    every method. Returns `{label: {trial: records}}` and `{"reused": [...], "ran": [...]}`."""
    results: dict[str, dict[int, list[dict]]] = {m.label: {} for m in methods}  # grid cells: first grid_trials
    status = {"reused": [], "ran": []}
    for trial in range(p.trials):
        for m in methods:
            if m.lam is not None and trial >= p.grid_trials:
                continue
            loop = make_loop(p, m, trial, train_set, test_set, out, device, progress)
            name = f"{m.slug}-trial{trial}"
            done = is_done(loop.workdir)
            if not done:
                log(f"== {name}")
            results[m.label][trial] = loop.run()
            status["reused" if done else "ran"].append(name)
    return results, status
