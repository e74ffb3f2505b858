"""Aggregate per-cycle metrics over seeds, and format them as a table."""

from __future__ import annotations

import statistics


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: dict[int, list[dict]]) -> dict:
    """`{seed: [record per cycle]}` -> per-cycle mean/std over seeds plus whole-run figures.

    The area under the budget curve (AUBC) is the trapezoid area of accuracy over the labeled
    fraction, divided by the fraction range: the mean accuracy across the budgets, weighted by span.
    """
    seeds = sorted(runs)
    n = min(len(runs[s]) for s in seeds)
    cycles = []
    for c in range(n):
        rows = [runs[s][c] for s in seeds]
        acc_m, acc_s = _mean_std([r["accuracy"] for r in rows])
        loss_m, _ = _mean_std([r["loss"] for r in rows])
        cycles.append({
            "cycle": c, "labeled": rows[0]["labeled"], "labeled_fraction": rows[0]["labeled_fraction"],
            "accuracy_mean": acc_m, "accuracy_std": acc_s, "accuracy": [r["accuracy"] for r in rows],
            "loss_mean": loss_m,
            "train_time_s_mean": _mean_std([r.get("train_time_s", 0.0) for r in rows])[0],
            "select_time_s_mean": _mean_std([r["select_time_s"] for r in rows if "select_time_s" in r] or [0.0])[0],
        })
    finals = [runs[s][n - 1]["accuracy"] for s in seeds]
    means = [statistics.fmean(r["accuracy"] for r in runs[s][:n]) for s in seeds]
    out = {"seeds": seeds, "cycles": cycles,
           "final_accuracy_mean": _mean_std(finals)[0], "final_accuracy_std": _mean_std(finals)[1],
           "mean_accuracy_mean": _mean_std(means)[0], "mean_accuracy_std": _mean_std(means)[1],
           "aubc": aubc([c["labeled_fraction"] for c in cycles], [c["accuracy_mean"] for c in cycles])}
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
    """Per-cycle metrics of one run."""
    rows = [[r["cycle"], r["labeled"], f"{100 * r['labeled_fraction']:.1f}%", f"{100 * r['accuracy']:.2f}",
             f"{r['loss']:.4f}", f"{r.get('train_time_s', 0):.1f}",
             f"{r['select_time_s']:.2f}" if "select_time_s" in r else "-"] for r in records]
    return format_table(["cycle", "labeled", "% labeled", "acc %", "test loss", "train s", "select s"], rows)


def compare_table(summaries: dict[str, dict]) -> str:
    """Accuracy mean ± std per cycle (std only with several seeds), one column per strategy."""
    names = list(summaries)
    first = summaries[names[0]]["cycles"]
    rows = []
    for c, base in enumerate(first):
        row = [c, f"{100 * base['labeled_fraction']:.1f}%"]
        for name in names:
            cyc, spread = summaries[name]["cycles"], len(summaries[name]["seeds"]) > 1
            cell = "-"
            if c < len(cyc):
                cell = f"{100 * cyc[c]['accuracy_mean']:.2f}"
                cell += f" ± {100 * cyc[c]['accuracy_std']:.2f}" if spread else ""
            row.append(cell)
        rows.append(row)
    rows.append(["AUBC", ""] + [f"{100 * summaries[n]['aubc']:.2f}" for n in names])
    return format_table(["cycle", "% labeled"] + names, rows)
