"""`run_bench`: the runs, the analyses and the report of one bench, in that order."""

from __future__ import annotations

import json

import dataclasses
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from ..atomic import write_json
from ..errors import TodalError
from ..loop import default_task
from ..results import summarize
from . import analysis
from .protocols import Protocol, check_device, differences, protocol
from .report import write_report
from .runner import ABLATION, Method, expand, make_loop, plan, run_all

METRICS = ("final", "aubc")


def git_commit() -> str | None:
    """The commit of the checkout todal is imported from, with '+dirty' where the package's own files have
    local changes (a bench's outputs, committed or not, don't make the code dirty), else None."""
    here = Path(__file__).resolve().parents[1]  # the todal package
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    """"NVIDIA H100 80GB HBM3", or "cpu: <processor model>, <n> threads" (timings are kept per device)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                  if line.startswith("model name")), None) if info.exists() else None
    return f"cpu: {model or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


TOD = ("cod", "cod+semi", "emaod")


def best_baselines(summaries: dict, labels: list[str], k: int = 3) -> list[str]:
    """The `k` methods of the bench with the highest AUBC that are not TOD's or random (what TOD must beat)."""
    others = [x for x in labels if x.split("+")[0] not in ("cod", "emaod", "random") and "@" not in x
              and x in summaries]
    return sorted(others, key=lambda x: -sum(summaries[x]["aubc_trials"]) / len(summaries[x]["aubc_trials"]))[:k]


def comparisons(labels: list[str], grid: list[str], best: list[str] = ()) -> list[tuple[str, str]]:
    """The paired comparisons the report states: every method against random, TOD's methods (cod, cod+semi,
    emaod) against the `best` baselines, Ours (cod+semi) against every baseline, the Table 1 steps, COD against
    EMAOD (Fig. 9), the CyclicOD loss against the task loss and the EMAOD loss (Fig. 10), each grid cell against
    cod+semi."""
    main = [x for x in labels if x not in grid]
    pairs = [(x, "random") for x in main if x != "random"]
    pairs += [(t, b) for t in TOD for b in best]
    pairs += [("cod+semi", x) for x in main if x not in ("cod+semi", "random")]
    pairs += [("cod+semi", "random+semi"), ("cod", "emaod"), ("cod+cyclic", "cod")] + [(g, "cod+semi") for g in grid]
    out = []
    for a, b in pairs:
        if a in labels and b in labels and (a, b) not in out and (b, a) not in out:
            out.append((a, b))
    return out


def _mean_tree(items: list):
    """Elementwise mean of equally shaped JSON trees (dicts, lists, numbers); strings from the first."""
    first = items[0]
    if isinstance(first, dict):
        return {k: _mean_tree([i[k] for i in items]) for k in first if all(k in i for i in items)}
    if isinstance(first, list):
        if not all(len(i) == len(first) for i in items):
            return first
        return [_mean_tree(list(v)) for v in zip(*items)]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return sum(items) / len(items)
    return first


def loss_analyses(p: Protocol, methods: list[Method], train, test, out: Path, device) -> dict | None:
    """Fig. 3/5/6 on every trial of cod+semi (else cod), LL4AL from the ll4al run of the same trial."""
    labels = {m.label: m for m in methods}
    target = labels.get("cod+semi") or labels.get("cod")
    if target is None:
        return None
    per_trial = {}
    for t in range(p.trials):
        loop = make_loop(p, target, t, train, test, out, device)
        ll = make_loop(p, labels["ll4al"], t, train, test, out, device) if "ll4al" in labels else None
        key = {"run": loop.workdir.name, "limit": p.analysis_pool, "ll4al": ll is not None,
               "version": 1, "cycles": len(loop.records())}
        per_trial[t] = analysis.cached(out / "analysis" / f"{loop.workdir.name}.json", key,
                                       lambda: analysis.loss_estimation(loop, p.analysis_pool, ll))
    rows = [a["cycles"] for a in per_trial.values()]
    n = min(len(r) for r in rows)
    spearman_std = {}
    if n:
        for name in rows[0][0]["spearman"]:
            vals = [[r[c]["spearman"].get(name, float("nan")) for r in rows] for c in range(n)]
            spearman_std[name] = [float(torch.tensor(v).std()) if len(v) > 1 else 0.0 for v in vals]
    return {"run": target.label, "trials": sorted(per_trial), "per_trial": per_trial,
            "fractions": list(analysis.FRACTIONS), "buckets": analysis.bucket_names(),
            "mean": [_mean_tree([r[c] for r in rows]) for c in range(n)], "spearman_std": spearman_std}


def _load(dataset: str, root: str | None, kwargs: dict):
    from ..data import load_dataset

    try:
        return load_dataset(dataset, root=root, **kwargs)
    except TypeError as e:
        raise TodalError(f"The dataset {dataset!r} does not take the options {kwargs} ({e}); set the protocol's "
                         "dataset_options for it, e.g. --set dataset_options={}.") from None


dataset_task = default_task  # the task a dataset asks for: its `task` attribute, else classification


def load_for(p: Protocol | str, dataset: str, overrides=None, data_root: str | None = None):
    """`(protocol, train, test)`: the dataset read with the reader's defaults tells the task, which picks the
    protocol family (a name is resolved in it, with `overrides`); the dataset is read again only when the
    protocol has reader options (`dataset_options`, classification's augmentation switch). Without
    augmentation a segmentation dataset's paired crop + flip is dropped."""
    if isinstance(p, str):
        protocol(p, overrides)  # a bad override fails here, before anything is read
    train, test = _load(dataset, data_root, {})
    task = dataset_task(train)
    if isinstance(p, str):
        p = protocol(p, overrides, task=task)
    elif p.task != task:
        raise TodalError(f"The {p.name!r} protocol is for {p.task} but {dataset!r} is a {task} dataset; build it "
                         f"with protocol({p.name!r}, task={task!r}).")
    kwargs = dict(p.dataset_options)
    if not p.augment and task == "classification":
        kwargs.update(crop_padding=0, hflip=False)
    if kwargs:
        train, test = _load(dataset, data_root, kwargs)
    if not p.augment and hasattr(train, "augment"):
        train.augment = None
    return p.for_dataset(getattr(train, "name", "") or type(train).__name__), train, test


def with_strategies(p: Protocol, strategies: list[str] | None) -> Protocol:
    """`p` with the requested methods ("all": every registered strategy) as its `strategies`, so that the
    report's effective configuration names what ran rather than the protocol's default."""
    if strategies is None:
        return p
    return dataclasses.replace(p, strategies=tuple(expand(strategies)))


def comparison_statistics(runs: dict[str, dict[int, list[dict]]], labels: list[str], grid: list[str],
                          key: str) -> dict:
    """What the report states from the runs' records: per-method summaries (with AUBC per trial), the paired
    comparisons with their verdicts, the best baselines, and the labels each method needs to reach random's
    final accuracy."""
    summaries = {k: summarize(v) for k, v in runs.items()}
    for k, v in runs.items():  # AUBC mean ± std over trials (summaries' "aubc" is of the mean curve)
        vals = [analysis.run_metric(recs, "aubc", key) for recs in v.values()]
        summaries[k]["aubc_trials"] = vals
        summaries[k]["aubc_std"] = float(torch.tensor(vals).std()) if len(vals) > 1 else 0.0
    best = best_baselines(summaries, labels)
    paired = [analysis.paired(runs, a, b, m, key) for a, b in comparisons(labels, grid, best) for m in METRICS]
    for c in paired:
        c["verdict"] = analysis.verdict(c)
    savings = [analysis.label_savings(runs, k, "random", key) for k in labels
               if k != "random" and k not in grid] if "random" in runs else []
    return {"summaries": summaries, "paired": paired, "best_baselines": best, "label_savings": savings,
            "stopping": stopping_summary(runs, labels, grid, key)}


def stopping_summary(runs: dict[str, dict[int, list[dict]]], labels: list[str], grid: list[str], key: str) -> dict:
    """Per method, over the trials whose records hold the stopping criteria: where each would have stopped."""
    out = {}
    for k in labels:
        trials = [recs for recs in runs.get(k, {}).values() if len(recs) > 1 and "pool_uncertainty" in recs[-1]]
        if k in grid or not trials:
            continue
        stops = [analysis.where_to_stop(recs, key) for recs in trials]
        out[k] = {"trials": len(trials), "kappa_last": statistics.fmean(
            recs[-1]["stop_kappa"] for recs in trials if recs[-1].get("stop_kappa") is not None)}
        for c in analysis.STOP_CRITERIA:
            hit = [s[c] for s in stops if s[c]]
            out[k][c] = {"stopped": len(hit),
                         "labels_saved": statistics.fmean(h["labels_saved"] for h in hit) if hit else 0.0,
                         "given_up": statistics.fmean(h["given_up"] for h in hit) if hit else 0.0}
    return out


def rewrite_report(out: str | Path, command: str) -> dict:
    """The report of a finished bench rewritten from its results.json (the runs' records are in it), with any
    finished run under `out/runs/` it does not hold yet added (a method or trials run since, e.g. by
    benchmarks/extra_trials.py): its statistics recomputed; the analyses of checkpoints kept as they were."""
    import re

    out = Path(out)
    r = json.loads((out / "results.json").read_text())
    runs = {k: {int(t): recs for t, recs in v.items()} for k, v in r["runs"].items()}
    for run in sorted((out / "runs").glob("*-trial*")):
        m = re.fullmatch(r"(.+)-trial(\d+)", run.name)
        done = run / "progress.json"
        if m and "-lam" not in m.group(1) and done.exists() and json.loads(done.read_text()).get("stage") == "done":
            recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            runs.setdefault(m.group(1), {})[int(m.group(2))] = recs
    labels = r["methods"] + [k for k in runs if k not in r["methods"]]
    key = r.get("metric", "accuracy")
    stats = comparison_statistics(runs, labels, r["grid"], key)
    r.update(stats, runs={k: dict(sorted(v.items())) for k, v in runs.items()}, methods=labels, rewritten_by=command)
    r["protocol"]["strategies"] = list(dict.fromkeys(list(r["protocol"]["strategies"]) +
                                                     [k for k in labels if k not in r["protocol"]["strategies"]
                                                      and "+" not in k and k not in r["grid"]]))
    r["per_class"] = {k: analysis.per_class(runs[k]) for k in labels if key == "accuracy" and
                      all("per_class_accuracy" in x for recs in runs[k].values() for x in recs)}
    times = analysis.selection_times({k: runs[k] for k in labels if k not in r["grid"]})
    for v in times.values():
        v["over_inference"] = v["mean_s"] / r["selection_time"]["inference_pass_s"]
    r["selection_time"]["per_method"] = times
    write_report(out, r)
    return r


def run_bench(p: Protocol | str, dataset: str, out: str | Path, *, overrides=None, strategies: list[str] | None = None,
              device: str | None = None, data_root: str | None = None, progress: bool = False,
              command: str = "", log_dir: str | Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) every run of the bench, analyse them and write `<out>/report.md` and
    `<out>/results.json` (every number of the report) and the figures. Returns the results.

    `p` is a Protocol, or a protocol name resolved with `overrides` in the family of the dataset's task
    (classification or segmentation: see `load_for`)."""
    t0 = time.perf_counter()
    out = Path(out)
    p, train, test = load_for(p, dataset, overrides, data_root)
    p = with_strategies(p, strategies)
    methods = plan(p)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise TodalError(f"Device {str(dev)!r} is not usable here ({e}); pass --device cpu.") from None
    per_method = [min(p.trials, p.grid_trials) if m.lam is not None else p.trials for m in methods]
    check_device(p, dev, train, runs=sum(per_method), semi_runs=sum(n for m, n in zip(methods, per_method) if m.semi))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "protocol.json", {"protocol": p.to_dict(), "methods": [m.label for m in methods]})
    runs, status = run_all(p, methods, train, test, out, device=dev, progress=progress,
                           log_dir=None if log_dir is None else Path(log_dir), log=log)
    labels = [m.label for m in methods]
    grid = [m.label for m in methods if m.lam is not None]
    key = "miou" if p.task == "segmentation" else "accuracy"
    stats = comparison_statistics(runs, labels, grid, key)
    summaries, paired = stats["summaries"], stats["paired"]
    log("== analyses")
    loss = loss_analyses(p, methods, train, test, out, dev)
    times = analysis.selection_times({k: runs[k] for k in labels if k not in grid})
    cod = next(m for m in methods if m.label == "cod")
    n_pool = int(sum(min(len(train), p.pool_size or len(train)) - r["labeled"] for r in runs["cod"][0][:-1]) / max(1, len(runs["cod"][0]) - 1))
    if p.score_subset is not None:  # the selections scored this many: the pass to compare with covers as many
        n_pool = min(n_pool, p.score_subset)
    inference_s, inference_from = None, "this process"
    earlier = out / "results.json"
    if not status["ran"] and earlier.exists():  # nothing trained now: keep the pass timed beside the selections
        previous = json.loads(earlier.read_text())
        st, old_env = previous.get("selection_time", {}), previous.get("environment", {})
        if st.get("pool_size") == n_pool and old_env.get("device") == device_name(dev) and st.get("inference_pass_s"):
            inference_s = st["inference_pass_s"]
            inference_from = st.get("inference_from") or f"the invocation at commit {old_env.get('git_commit', '?')}"
    if inference_s is None:
        inference_s = analysis.inference_pass_seconds(make_loop(p, cod, 0, train, test, out, dev), n_pool)
    for v in times.values():
        v["over_inference"] = v["mean_s"] / inference_s
    results = {
        "command": command, "dataset": dataset, "protocol": p.to_dict(), "differences_from_paper": differences(p),
        "environment": {"todal_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
                        "python": platform.python_version(), "device": device_name(dev),
                        "wall_time_s": None,
                        "run_time_s_total": sum(rec.get("train_time_s", 0) + rec.get("select_time_s", 0)
                                                for v in runs.values() for recs in v.values() for rec in recs),
                        "runs_reused": status["reused"], "runs_ran": status["ran"]},
        "methods": labels, "grid": grid, "ablation": ABLATION, "summaries": summaries, "runs": runs,
        "paired": paired, "best_baselines": stats["best_baselines"], "loss_estimation": loss,
        "label_savings": stats["label_savings"], "stopping": stats["stopping"],
        "selection_time": {"inference_pass_s": inference_s, "inference_from": inference_from, "pool_size": n_pool,
                           "per_method": times},
        "task": p.task, "metric": key,
        "per_class": {} if p.task == "segmentation" else
                     {k: analysis.per_class(runs[k]) for k in labels
                      if all("per_class_accuracy" in r for recs in runs[k].values() for r in recs)},
        "class_iou": {} if p.task != "segmentation" else
                     {b: analysis.class_iou_with_and_without(runs[b], runs[f"{b}+semi"])
                      for b in ("cod", "random") if b in runs and f"{b}+semi" in runs},
        "class_names": list(getattr(train, "classes", []) or []),
    }
    results["environment"]["wall_time_s"] = time.perf_counter() - t0
    write_report(out, results)
    return results
