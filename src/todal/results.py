"""Aggregate per-cycle metrics over seeds, and format them as a table."""

from __future__ import annotations

import statistics


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def metric_of(records: list[dict]) -> str:
    """The headline metric of a run's records: "miou" for segmentation, else "accuracy"."""
    return "miou" if records and all("miou" in r for r in records) else "accuracy"


def _per_class_mean(rows: list[list | None]) -> list[float | None] | None:
    """Per class, the mean over runs of the values that exist (None: absent from every run)."""
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    out = []
    for values in zip(*rows):
        present = [v for v in values if v is not None]
        out.append(statistics.fmean(present) if present else None)
    return out


def summarize(runs: dict[int, list[dict]]) -> dict:
    """`{seed: [record per cycle]}` -> per-cycle mean/std over seeds plus whole-run figures.

    The area under the budget curve (AUBC) is the trapezoid area of the headline metric over the
    labeled fraction, divided by the fraction range: the mean metric across the budgets, weighted by
    span. The headline metric ("metric") is the accuracy, or the mIoU for segmentation records
    (which also get `miou_*` fields per cycle and overall and `per_class_iou_mean`: per class, the
    mean over the seeds where the class has an IoU, None where it has none); `accuracy_*` is then
    the pixel accuracy.
    """
    seeds = sorted(runs)
    n = min(len(runs[s]) for s in seeds)
    metric = metric_of([r for s in seeds for r in runs[s][:n]])
    cycles = []
    for c in range(n):
        rows = [runs[s][c] for s in seeds]
        acc_m, acc_s = _mean_std([r["accuracy"] for r in rows])
        loss_m, _ = _mean_std([r["loss"] for r in rows])
        cycle = {
            "cycle": c, "labeled": rows[0]["labeled"], "labeled_fraction": rows[0]["labeled_fraction"],
            "accuracy_mean": acc_m, "accuracy_std": acc_s, "accuracy": [r["accuracy"] for r in rows],
            "loss_mean": loss_m,
            "train_time_s_mean": _mean_std([r.get("train_time_s", 0.0) for r in rows])[0],
            "select_time_s_mean": _mean_std([r["select_time_s"] for r in rows if "select_time_s" in r] or [0.0])[0],
        }
        if metric == "miou":
            m, sd = _mean_std([r["miou"] for r in rows])
            cycle.update(miou_mean=m, miou_std=sd, miou=[r["miou"] for r in rows],
                         per_class_iou_mean=_per_class_mean([r.get("per_class_iou") for r in rows]))
        cycles.append(cycle)
    out = {"seeds": seeds, "metric": metric, "cycles": cycles}
    for key in dict.fromkeys(["accuracy", metric]):
        finals = [runs[s][n - 1][key] for s in seeds]
        means = [statistics.fmean(r[key] for r in runs[s][:n]) for s in seeds]
        out.update({f"final_{key}_mean": _mean_std(finals)[0], f"final_{key}_std": _mean_std(finals)[1],
                    f"mean_{key}_mean": _mean_std(means)[0], f"mean_{key}_std": _mean_std(means)[1]})
    out["aubc"] = aubc([c["labeled_fraction"] for c in cycles], [c[f"{metric}_mean"] for c in cycles])
    return out


def aubc(fractions: list[float], accuracies: list[float]) -> float:
    if len(fractions) < 2:
        return accuracies[0] if accuracies else float("nan")
    area = sum((fractions[i + 1] - fractions[i]) * (accuracies[i + 1] + accuracies[i]) / 2
               for i in range(len(fractions) - 1))
    return area / (fractions[-1] - fractions[0])


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [headers] + [[v if isinstance(v, str) else f"{v}" for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_table(records: list[dict]) -> str:
    """Per-cycle metrics of one run (segmentation: mIoU and pixel accuracy)."""
    seg = metric_of(records) == "miou"
    rows = [[r["cycle"], r["labeled"], f"{100 * r['labeled_fraction']:.1f}%"]
            + ([f"{100 * r['miou']:.2f}"] if seg else [])
            + [f"{100 * r['accuracy']:.2f}", f"{r['loss']:.4f}", f"{r.get('train_time_s', 0):.1f}",
               f"{r['select_time_s']:.2f}" if "select_time_s" in r else "-"] for r in records]
    headers = (["cycle", "labeled", "% labeled"] + (["mIoU %", "pixel acc %"] if seg else ["acc %"])
               + ["test loss", "train s", "select s"])
    return format_table(headers, rows)


def compare_table(summaries: dict[str, dict]) -> str:
    """The headline metric (accuracy, or mIoU for segmentation) mean ± std per cycle (std only with
    several seeds), one column per strategy, and the AUBC."""
    names = list(summaries)
    first = summaries[names[0]]["cycles"]
    metric = summaries[names[0]].get("metric", "accuracy")
    rows = []
    for c, base in enumerate(first):
        row = [c, f"{100 * base['labeled_fraction']:.1f}%"]
        for name in names:
            cyc, spread = summaries[name]["cycles"], len(summaries[name]["seeds"]) > 1
            cell = "-"
            if c < len(cyc):
                cell = f"{100 * cyc[c][f'{metric}_mean']:.2f}"
                cell += f" ± {100 * cyc[c][f'{metric}_std']:.2f}" if spread else ""
            row.append(cell)
        rows.append(row)
    rows.append(["AUBC", ""] + [f"{100 * summaries[n]['aubc']:.2f}" for n in names])
    table = format_table(["cycle", "% labeled"] + names, rows)
    return f"mIoU % (test set)\n{table}" if metric == "miou" else table
