"""The numbers behind the report: loss-estimation analyses (Fig. 3, 5, 6), paired comparisons,
selection cost (Table 3) and per-class accuracy (Fig. 11).

The pure functions (`rankdata`, `spearman`, `recall_at`, `bucket_means`, `paired`, `verdict`) work
on tensors or lists and are tested on hand-computed cases; `loss_estimation` runs them over the
checkpoints of a run directory.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import write_json
from ..discrepancy import discrepancy, to_space
from ..inference import fetch, predict
from ..engine import derive_seed
from ..loop import ActiveLoop
from ..pool import Pool
from ..results import aubc
from ..strategies import Context
from ..strategies.uncertainty import entropy_score

FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)  # k of Fig. 6, as a fraction of the pool
EDGES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # Fig. 5's rank buckets: 0-5%, 5-10%, ...


# --- pure statistics -------------------------------------------------------------------------------
def rankdata(x: Tensor) -> Tensor:
    """1-based ranks `[n]`, ties get the mean of the ranks they span (scipy.stats.rankdata's 'average')."""
    from scipy.stats import rankdata as ranks

    return torch.from_numpy(ranks(x.double().numpy(), method="average"))


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two `[n]` tensors (scipy.stats.spearmanr); nan if either is constant."""
    import warnings

    from scipy.stats import spearmanr

    a, b = a.flatten().double().numpy(), b.flatten().double().numpy()
    if len(a) < 2 or a.min() == a.max() or b.min() == b.max():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def _order(scores: Tensor) -> Tensor:
    """Positions by descending score, ties in index order (as `top_k`)."""
    return torch.sort(scores.double(), descending=True, stable=True).indices


def recall_at(scores: Tensor, losses: Tensor, fractions=FRACTIONS) -> list[float]:
    """Fig. 6: for each k = ceil(f·n), the fraction of the k highest-loss samples among the k highest scores."""
    n = len(scores)
    loss_rank = torch.empty(n, dtype=torch.long)
    loss_rank[_order(losses)] = torch.arange(n)  # 0 = highest loss
    by_score = loss_rank[_order(scores)]  # (n,) loss rank of the samples in score order
    out = []
    for f in fractions:
        k = max(1, -(-int(round(f * n * 1e6)) // 1_000_000))  # ceil, robust to 0.07 * 100 = 7.000000000000001
        out.append(float((by_score[:k] < k).sum()) / k)
    return out


def bucket_means(scores: Tensor, losses: Tensor, edges=EDGES) -> list[float]:
    """Fig. 5: mean loss of the samples in each score-rank bucket, highest scores first
    (edges 0.05, 0.1: "0-5%", "5-10%", ...); a bucket is [round(lo·n), round(hi·n)); nan if empty."""
    n = len(scores)
    sorted_losses = losses.double()[_order(scores)]
    cuts = [0] + [int(round(e * n)) for e in edges]
    return [float(sorted_losses[a:b].mean()) if b > a else float("nan") for a, b in zip(cuts[:-1], cuts[1:])]


def bucket_names(edges=EDGES) -> list[str]:
    lo = (0.0,) + tuple(edges[:-1])
    return [f"{100 * a:g}-{100 * b:g}%" for a, b in zip(lo, edges)]


def run_metric(records: list[dict], metric: str, key: str = "accuracy") -> float:
    """One number per run from the per-cycle `key` ("accuracy", or "miou" for segmentation): its
    'final' value, its 'mean' over cycles, or its 'aubc'."""
    if metric == "final":
        return records[-1][key]
    if metric == "mean":
        return statistics.fmean(r[key] for r in records)
    return aubc([r["labeled_fraction"] for r in records], [r[key] for r in records])


def paired(runs: dict[str, dict[int, list[dict]]], a: str, b: str, metric: str, key: str = "accuracy") -> dict:
    """Per-trial differences a - b of `run_metric(..., metric, key)` over the trials both have (the runs of a
    trial share the seed, hence the initial pool), with their mean, a 95% confidence interval of the mean (t
    distribution) and the two-sided p-value of the paired t-test (scipy.stats.ttest_rel)."""
    trials = sorted(set(runs[a]) & set(runs[b]))
    xs = [run_metric(runs[a][t], metric, key) for t in trials]
    ys = [run_metric(runs[b][t], metric, key) for t in trials]
    diffs = [x - y for x, y in zip(xs, ys)]
    out = {"a": a, "b": b, "metric": metric, "key": key, "n": len(diffs), "trials": trials, "diffs": diffs,
           "mean": statistics.fmean(diffs) if diffs else float("nan"), "wins": sum(d > 0 for d in diffs),
           "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0, "low": float("nan"), "high": float("nan"),
           "p": float("nan")}
    if len(diffs) > 1:
        from scipy import stats

        if out["std"] == 0:  # every trial the same difference: the interval is that point
            out.update(low=out["mean"], high=out["mean"], p=0.0 if out["mean"] != 0 else 1.0)
        else:
            sem = out["std"] / len(diffs) ** 0.5
            low, high = stats.t.interval(0.95, len(diffs) - 1, loc=out["mean"], scale=sem)
            out.update(low=float(low), high=float(high), p=float(stats.ttest_rel(xs, ys).pvalue))
    return out


def verdict(c: dict) -> str:
    """"a better" or "b better" when the 95% confidence interval of the mean paired difference excludes 0
    (the paired t-test's p < 0.05), else "within noise"; one trial is never enough."""
    if c["n"] < 2 or not (c["low"] > 0 or c["high"] < 0):
        return "within noise"
    return f"{c['a']} better" if c["mean"] > 0 else f"{c['b']} better"


def labels_to_reach(fractions: list[float], curve: list[float], target: float) -> float | None:
    """The labeled fraction where `curve` (over `fractions`) first reaches `target`, linear between cycles; None if
    it never does."""
    for (f0, a0), (f1, a1) in zip(zip(fractions, curve), zip(fractions[1:], curve[1:])):
        if a0 >= target:
            return f0
        if a1 >= target:
            return f0 + (target - a0) / (a1 - a0) * (f1 - f0)
    return fractions[0] if curve and curve[0] >= target else None


def label_savings(runs: dict[str, dict[int, list[dict]]], method: str, reference: str = "random",
                  key: str = "accuracy") -> dict:
    """The labels `method` needs to reach `reference`'s final accuracy, as a share of `reference`'s labels: on the
    mean curves (the headline), and per trial (each trial's curve against the reference's same trial) for the
    spread; None where it never gets there."""
    def mean_curve(name):
        recs = list(runs[name].values())
        cycles = min(len(r) for r in recs)
        return ([recs[0][c]["labeled_fraction"] for c in range(cycles)],
                [statistics.fmean(r[c][key] for r in recs) for c in range(cycles)])

    fr, curve = mean_curve(method)
    rfr, rcurve = mean_curve(reference)
    at = labels_to_reach(fr, curve, rcurve[-1])
    per_trial = []
    for t in sorted(set(runs[method]) & set(runs[reference])):
        m, r = runs[method][t], runs[reference][t]
        x = labels_to_reach([c["labeled_fraction"] for c in m], [c[key] for c in m], r[-1][key])
        per_trial.append(None if x is None else x / r[-1]["labeled_fraction"])
    reached = [v for v in per_trial if v is not None]
    return {"method": method, "reference": reference, "share": None if at is None else at / rfr[-1],
            "per_trial": per_trial, "reached": len(reached),
            "std": statistics.stdev(reached) if len(reached) > 1 else 0.0}


STOP_CRITERIA = ("kappa", "uncertainty", "plateau")


def where_to_stop(records: list[dict], key: str = "accuracy") -> dict[str, dict | None]:
    """For each stopping criterion at its default (`todal.stopping.StopRule`), the first cycle at which
    `ActiveLoop(stop=criterion)` would have ended this run, the labels that saves and the `key` it gives up against
    labeling to the end; None where it would have run every cycle. `records` hold what ActiveLoop records per
    cycle (`stop_kappa`, `pool_uncertainty`, `paired`)."""
    from ..loop import _signal_row
    from ..stopping import StopRule, criteria, should_stop

    history = [_signal_row(r) for r in records]
    out = {}
    for name in STOP_CRITERIA:
        rule = StopRule(criterion=name)
        at = next((c for c in range(len(records) - 1) if should_stop(criteria(history[:c + 1], rule), rule)), None)
        out[name] = None if at is None else {
            "cycle": at, "labels": records[at]["labeled"], "labels_saved": records[-1]["labeled"] - records[at]["labeled"],
            "given_up": records[-1][key] - records[at][key]}
    return out


# --- loss estimation over the checkpoints of a run (Fig. 3, 5, 6) ----------------------------------------
def _outputs(model, dataset, idx: Tensor, loop: ActiveLoop) -> Tensor:
    return torch.cat([o for _, o in predict(model, dataset, idx, batch_size=loop.config.eval_batch_size,
                                            device=loop.device)])


def unlabeled_at(pool: Pool, cycle: int) -> Tensor:
    """The samples not yet labeled when cycle `cycle` trained (labeled later, or never)."""
    return ((pool.cycle < 0) | (pool.cycle > cycle)).nonzero().flatten()


def _subset(idx: Tensor, limit: int | None, seed: int, cycle: int) -> Tensor:
    if limit is None or len(idx) <= limit:
        return idx
    g = torch.Generator().manual_seed(derive_seed(seed, "bench-analysis", cycle))
    return idx[torch.randperm(len(idx), generator=g)[:limit].sort().values]


def cycle_estimates(loop: ActiveLoop, cycle: int, idx: Tensor) -> dict[str, Tensor]:
    """True loss and the estimators of cycle `cycle`'s model on `idx`, one inference pass per model.

    cod: ||p(x; w_c) - p(x; w_{c-1})|| (Eq. 5, softmax outputs, the flavor's measure; cycle 0 against
    the initial weights); emaod: against the EMA teacher (when the run has one); entropy of p(x; w_c).
    Segmentation: the true loss is the per-pixel cross-entropy averaged over the valid pixels, COD and
    EMAOD reduce over pixels as the task does (sum by default), entropy is the pixel mean. The pass
    runs a batch at a time and keeps only the per-sample numbers, so dense outputs never pile up.
    """
    model, teacher, prev = loop.model(cycle), loop.teacher(cycle), loop.reference(cycle)
    measure, task = loop.flavor.measure, loop.task
    parts: dict[str, list[Tensor]] = {"loss": [], "cod": [], "entropy": []}
    if teacher is not None:
        parts["emaod"] = []
    for chunk in idx.split(loop.config.eval_batch_size):
        y = fetch(loop.train_set, chunk)[1]
        out = _outputs(model, loop.train_set, chunk, loop)
        probs = to_space(out, "probs")
        parts["loss"].append(task.per_sample_loss(out, y))
        parts["cod"].append(discrepancy(probs, to_space(_outputs(prev, loop.train_set, chunk, loop), "probs"),
                                        measure=measure, task=task))
        parts["entropy"].append(entropy_score(probs))
        if teacher is not None:
            t = to_space(_outputs(teacher, loop.train_set, chunk, loop), "probs")
            parts["emaod"].append(discrepancy(probs, t, measure=measure, task=task))
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()}


def predicted_loss(loop: ActiveLoop, pool: Pool, cycle: int, idx: Tensor) -> dict[str, Tensor]:
    """LL4AL (a run of strategy 'll4al'): its module's predicted loss and its own model's true loss on `idx`."""
    model, strategy = loop.model(cycle), loop.strategy_at(cycle)  # the loss module as that cycle left it
    ctx = Context(model=model, task=loop.task, dataset=loop.train_set, labeled=pool.labeled, unlabeled=idx,
                  labels=pool.labels[pool.labeled], generator=torch.Generator().manual_seed(0), cycle=cycle,
                  device=loop.device, batch_size=loop.config.eval_batch_size)
    y = fetch(loop.train_set, idx)[1]
    return {"ll4al": strategy.predicted_loss(ctx, idx),
            "loss": loop.task.per_sample_loss(_outputs(model, loop.train_set, idx, loop), y)}


def summarize_estimates(loss: Tensor, estimators: dict[str, Tensor], fractions=FRACTIONS, edges=EDGES) -> dict:
    """Per-cycle numbers: mean loss, mean of each estimator, loss by COD-rank bucket, recall, Spearman."""
    out = {"n": len(loss), "mean_loss": float(loss.mean()),
           "mean": {k: float(v.mean()) for k, v in estimators.items()},
           "recall": {k: recall_at(v, loss, fractions) for k, v in estimators.items()},
           "spearman": {k: spearman(v, loss) for k, v in estimators.items()}}
    if "cod" in estimators:
        out["loss_by_cod_bucket"] = bucket_means(estimators["cod"], loss, edges)
    return out


def loss_estimation(loop: ActiveLoop, limit: int | None = None, ll4al: ActiveLoop | None = None) -> dict:
    """Fig. 3, 5, 6 for every cycle of a finished run with all its checkpoints (`keep_checkpoints=True`).

    Each estimator is scored against the true loss of the model it estimates: COD, EMAOD and entropy
    against this run's model; LL4AL's predicted loss against the `ll4al` run's own model, on the same
    samples (this run's unlabeled pool of that cycle). Cycles whose checkpoints are gone are skipped.
    """
    pool = Pool.load(loop.workdir / "pool.json")
    cycles, skipped = [], []
    for c in range(loop.config.cycles):
        if not (loop.workdir / "checkpoints" / f"cycle_{c}.pt").exists() or \
                (c > 0 and not (loop.workdir / "checkpoints" / f"cycle_{c - 1}.pt").exists()):
            skipped.append(c)
            continue
        idx = _subset(unlabeled_at(pool, c), limit, loop.config.seed, c)
        est = cycle_estimates(loop, c, idx)
        loss = est.pop("loss")
        row = {"cycle": c, "labeled_fraction": 1 - len(unlabeled_at(pool, c)) / pool.size,
               **summarize_estimates(loss, est)}
        if ll4al is not None and (ll4al.workdir / "checkpoints" / f"cycle_{c}.pt").exists():
            ll = predicted_loss(ll4al, Pool.load(ll4al.workdir / "pool.json"), c, idx)
            row["recall"]["ll4al"] = recall_at(ll["ll4al"], ll["loss"])
            row["spearman"]["ll4al"] = spearman(ll["ll4al"], ll["loss"])
            row["mean"]["ll4al"] = float(ll["ll4al"].mean())
        cycles.append(row)
    return {"run": loop.workdir.name, "fractions": list(FRACTIONS), "buckets": bucket_names(),
            "cycles": cycles, "skipped_cycles": skipped, "limit": limit}


def cached(path: Path, key: dict, compute) -> dict:
    """`compute()`'s JSON result, reused from `path` while `key` is unchanged."""
    path = Path(path)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["value"]
    value = compute()
    write_json(path, {"key": key, "value": value})
    return value


# --- Table 3 and Fig. 11 -------------------------------------------------------------------------------
def inference_pass_seconds(loop: ActiveLoop, n: int, repeats: int = 3) -> float:
    """Best-of-`repeats` seconds of one plain inference pass of the protocol's model over n samples (a freshly
    built one: the time does not depend on the weights, and a fresh clone has no checkpoints)."""
    model = loop.engine.new_model("timing")
    idx = torch.arange(min(n, len(loop.train_set)))
    sync = torch.cuda.synchronize if loop.device.type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in predict(model, loop.train_set, idx, batch_size=loop.config.eval_batch_size, device=loop.device):
            pass
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def selection_times(runs: dict[str, dict[int, list[dict]]]) -> dict[str, dict]:
    """Mean and std of `select_time_s` per method over every selection of every trial, and the mean pool size."""
    out = {}
    for label, trials in runs.items():
        rows = [r for recs in trials.values() for r in recs if "select_time_s" in r]
        if rows:
            t = [r["select_time_s"] for r in rows]
            out[label] = {"mean_s": statistics.fmean(t), "std_s": statistics.stdev(t) if len(t) > 1 else 0.0,
                          "selections": len(t)}
    return out


def class_iou_with_and_without(without: dict[int, list[dict]], with_: dict[int, list[dict]]) -> dict:
    """Table 2: per-class IoU at the last cycle trained without ('T') and with ('T + U') the TOD loss.

    Both take `{trial: records}` of segmentation runs; the trials both have are paired, at the last
    cycle both reached. Per class, the mean IoU over those trials where the class has one (None where
    it has none in any trial); "proportion" is the class's share of the test pixels (the records'
    `class_proportion`, the same for every run), "diff" = with - without, "better" counts the classes
    where the TOD loss helps, of those with both values ("compared"). "gain_minority" is the mean diff
    over the rarest half (floor) of the compared classes by proportion, "gain_majority" over the rest
    (Table 2's point: larger gains on minority classes). mIoU: the mean over trials of each run's mIoU.
    """
    trials = sorted(set(without) & set(with_))
    if not trials:
        return {"trials": [], "classes": 0}
    n = min(min(len(without[t]), len(with_[t])) for t in trials)
    last_t, last_u = [without[t][n - 1] for t in trials], [with_[t][n - 1] for t in trials]

    def mean_iou(rows):
        out = []
        for values in zip(*(r["per_class_iou"] for r in rows)):
            present = [v for v in values if v is not None]
            out.append(statistics.fmean(present) if present else None)
        return out

    t, u = mean_iou(last_t), mean_iou(last_u)
    proportion = [statistics.fmean(v) for v in zip(*(r["class_proportion"] for r in last_t))]
    diff = [b - a if a is not None and b is not None else None for a, b in zip(t, u)]
    by_rarity = sorted((c for c, d in enumerate(diff) if d is not None), key=lambda c: (proportion[c], c))
    half = len(by_rarity) // 2
    gain = [statistics.fmean(diff[c] for c in part) if part else float("nan")
            for part in (by_rarity[:half], by_rarity[half:])]
    return {"trials": trials, "cycle": n - 1, "labeled_fraction": last_t[0]["labeled_fraction"],
            "classes": len(t), "proportion": proportion, "without": t, "with": u, "diff": diff,
            "miou_without": statistics.fmean(r["miou"] for r in last_t),
            "miou_with": statistics.fmean(r["miou"] for r in last_u),
            "better": sum(d > 0 for d in diff if d is not None), "compared": len(by_rarity),
            "minority": half, "gain_minority": gain[0], "gain_majority": gain[1]}


def per_class(records_by_trial: dict[int, list[dict]]) -> dict:
    """Fig. 11: per-class test accuracy per cycle, mean over trials: `{"fractions": [...], "accuracy": [[C] per cycle]}`."""
    trials = sorted(records_by_trial)
    n = min(len(records_by_trial[t]) for t in trials)
    acc = torch.tensor([[records_by_trial[t][c]["per_class_accuracy"] for c in range(n)] for t in trials])
    return {"fractions": [records_by_trial[trials[0]][c]["labeled_fraction"] for c in range(n)],
            "accuracy": acc.mean(0).tolist(), "trials": len(trials)}
