"""The bench's figures, drawn on Agg figures without pyplot (no global matplotlib state)."""

from __future__ import annotations

import math
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(ncols: int = 1, width: float = 6.4):
    fig = Figure(figsize=(width * ncols, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, ax_list, path) -> None:
    for ax in ax_list:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def cod_and_loss(cycles: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Fig. 3: mean COD and mean true loss of the unlabeled pool vs % labeled (two y axes)."""
    fig, (ax,) = _figure()
    x = [100 * c["labeled_fraction"] for c in cycles]
    ax.plot(x, [c["mean"]["cod"] for c in cycles], marker="o", color="tab:blue", label="mean COD")
    ax.set_ylabel("mean COD", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(x, [c["mean_loss"] for c in cycles], marker="s", color="tab:red", label="mean true loss")
    ax2.set_ylabel("mean true loss", color="tab:red")
    ax.set_xlabel("labeled (% of the training set)")
    ax.set_title(title)
    _save(fig, [ax], path)


def loss_by_bucket(cycles: list[dict], buckets: list[str], path: str | os.PathLike, title: str = "") -> None:
    """Fig. 5: mean true loss per COD-rank bucket, one line per cycle."""
    fig, (ax,) = _figure()
    for c in cycles:
        ax.plot(range(len(buckets)), c["loss_by_cod_bucket"], marker="o", ms=3,
                label=f"{100 * c['labeled_fraction']:.1f}% labeled")
    ax.set_xticks(range(len(buckets)), buckets, rotation=45, fontsize=7)
    ax.set_xlabel("unlabeled samples by COD rank (highest first)")
    ax.set_ylabel("mean true loss")
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(fig, [ax], path)


def recall_curves(cycles: list[dict], fractions: list[float], path: str | os.PathLike, title: str = "") -> None:
    """Fig. 6: recall of the highest-loss samples vs k, per estimator: mean over cycles, and the last cycle."""
    fig, axes = _figure(2, 5.2)
    names = list(cycles[-1]["recall"])
    x = [100 * f for f in fractions]
    for ax, rows, sub in ((axes[0], cycles, "mean over cycles"), (axes[1], cycles[-1:], "last cycle")):
        for name in names:
            curves = [c["recall"][name] for c in rows if name in c["recall"]]
            ax.plot(x, [100 * sum(v) / len(v) for v in zip(*curves)], marker="o", ms=3, label=name)
        ax.plot(x, x, ls=":", color="gray", label="random (expected)")
        ax.set_xlabel("k (% of the unlabeled pool)")
        ax.set_ylabel("top-k loss samples recalled (%)")
        ax.set_title(f"{title} ({sub})")
        ax.legend(fontsize=7)
    _save(fig, axes, path)


def per_class_lines(data: dict, path: str | os.PathLike, title: str = "") -> None:
    """Fig. 11: per-class test accuracy vs % labeled, one line per class."""
    fig, (ax,) = _figure()
    x = [100 * f for f in data["fractions"]]
    for k, ys in enumerate(zip(*data["accuracy"])):
        ax.plot(x, [100 * y for y in ys], marker="o", ms=3, label=f"class {k}")
    ax.set_xlabel("labeled (% of the training set)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    _save(fig, [ax], path)


def grid_heatmap(lams: list[float], alphas: list[float], values: list[list[float]], path: str | os.PathLike,
                 title: str = "") -> None:
    """Fig. 12: final accuracy over the λ x α grid (rows λ, columns α); nan cells are blank."""
    fig, (ax,) = _figure(1, 5.0)
    im = ax.imshow([[100 * v for v in row] for row in values], cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(lams)), [f"{v:g}" for v in lams])
    ax.set_xlabel("EMA decay α")
    ax.set_ylabel("λ")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{100 * v:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="final accuracy (%)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)


TOD_COLOURS = {"cod": "tab:blue", "cod+semi": "tab:orange", "emaod": "tab:red", "cod+cyclic": "tab:purple",
               "random+semi": "tab:green"}  # the same colour for a method in every report


def _is_tod(method: str) -> bool:
    """TOD's own methods: COD/EMAOD sampling, and anything trained with a TOD loss (+semi, +cyclic)."""
    name, _, suffix = method.partition("+")
    return name in ("cod", "emaod") or suffix.startswith(("semi", "cyclic"))


def _per_trial_aubc(summary: dict, key: str) -> dict:
    """{seed: AUBC of that trial's curve} from a `todal.results.summarize` summary."""
    from ..results import aubc

    x = [c["labeled_fraction"] for c in summary["cycles"]]
    return {seed: aubc(x, [c[key][i] for c in summary["cycles"]]) for i, seed in enumerate(summary["seeds"])}


def headline(summaries: dict[str, dict], path: str | os.PathLike, *, key: str = "accuracy", name: str = "accuracy",
             title: str = "", baseline: str = "random") -> None:
    """Fig. 7 / Fig. 8 at a glance. Left: mean curves, TOD's methods in colour, the other baselines in grey,
    `baseline` in black. Right: each method's AUBC minus the baseline's, paired by trial, mean and the std
    of the per-trial differences, sorted; a dot right of zero beats the baseline."""
    fig = Figure(figsize=(13.5, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
    spare = iter(["tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"])
    tod_colour = {m: TOD_COLOURS.get(m) or next(spare, "tab:gray") for m in summaries if _is_tod(m)}
    grey_done = False
    for m, s in summaries.items():
        x = [100 * c["labeled_fraction"] for c in s["cycles"]]
        y = [100 * c[f"{key}_mean"] for c in s["cycles"]]
        if m == baseline:
            ax.plot(x, y, color="black", lw=2, ls="--", marker="o", ms=3, label=f"{m} (baseline)", zorder=4)
        elif m in tod_colour:
            ax.plot(x, y, color=tod_colour[m], lw=2, marker="o", ms=3, label=m, zorder=3)
        else:
            ax.plot(x, y, color="0.72", lw=1, zorder=1, label=None if grey_done else "other baselines")
            grey_done = True
    ax.set_xlabel("labeled (% of the training set)")
    ax.set_ylabel(f"test {name} (%), mean over trials")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)

    if baseline in summaries:
        base = _per_trial_aubc(summaries[baseline], key)
        rows = []
        for m, s in summaries.items():
            if m == baseline:
                continue
            mine = _per_trial_aubc(s, key)
            diffs = [100 * (mine[t] - base[t]) for t in mine if t in base]
            if diffs:
                mean = sum(diffs) / len(diffs)
                sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5 if len(diffs) > 1 else 0.0
                rows.append((mean, sd, m, len(diffs)))
        rows.sort()
        for i, (mean, sd, m, n) in enumerate(rows):
            colour = tod_colour.get(m, "0.55")
            ax2.errorbar(mean, i, xerr=sd, fmt="o", color=colour, ms=6 if m in tod_colour else 4, capsize=3)
        ax2.set_yticks(range(len(rows)), [f"{m} (n={n})" for _, _, m, n in rows], fontsize=8)
        for tick, (_, _, m, _) in zip(ax2.get_yticklabels(), rows):
            tick.set_color(tod_colour.get(m, "0.35"))
            tick.set_fontweight("bold" if m in tod_colour else "normal")
        ax2.axvline(0, color="black", ls="--", lw=1)
        ax2.set_xlabel(f"AUBC − {baseline}'s, points of {name}\n(paired by trial: mean ± std)")
        ax2.set_title(f"against {baseline}")
        ax2.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
