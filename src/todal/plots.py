"""Figures, drawn without touching matplotlib's global state (no pyplot)."""

from __future__ import annotations

import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def learning_curve(summaries: dict[str, dict], path: str | os.PathLike, *, title: str = "",
                   metric: str = "accuracy", ylabel: str = "test accuracy (%)") -> None:
    """Accuracy vs % labeled, one line per strategy, a band of ± one std over seeds."""
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, s in summaries.items():
        x = [100 * c["labeled_fraction"] for c in s["cycles"]]
        m = [100 * c[f"{metric}_mean"] for c in s["cycles"]]
        sd = [100 * c[f"{metric}_std"] for c in s["cycles"]]
        n = len(s["seeds"])
        ax.plot(x, m, marker="o", ms=3, label=f"{name} (n={n})")
        if n > 1:
            ax.fill_between(x, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.2)
    ax.set_xlabel("labeled (% of the training set)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
