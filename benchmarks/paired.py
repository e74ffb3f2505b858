"""Paired differences between any two methods of a `todal bench` report (results.json), per trial.

    python3 benchmarks/paired.py benchmarks/fashion-mnist-converged cod:margin cod:entropy cod+semi:qbc

The report compares every method with random; this compares the pairs you name (e.g. against the best
baselines): final metric and AUBC (trapezoid over the labeled fraction, as the report), mean difference,
trials ahead, std of the differences. Prints markdown and writes it to OUT/paired.md.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def per_trial(summary: dict) -> list[tuple[float, float]]:
    metric = summary["metric"]
    cycles = summary["cycles"]
    xs = [c["labeled_fraction"] for c in cycles]
    out = []
    for curve in zip(*[c[metric] for c in cycles]):
        a = [100 * v for v in curve]
        aubc = sum((xs[i + 1] - xs[i]) * (a[i] + a[i + 1]) / 2 for i in range(len(xs) - 1)) / (xs[-1] - xs[0])
        out.append((a[-1], aubc))
    return out


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    summaries = json.loads((out / "results.json").read_text())["summaries"]
    lines = [f"# Paired differences (`python3 benchmarks/paired.py {' '.join(argv)}`)", "",
             "| pair | final: mean (ahead, std) | AUBC: mean (ahead, std) |", "|---|---|---|"]
    for pair in argv[1:]:
        a, b = pair.split(":")
        cells = []
        for k in (0, 1):
            d = [x[k] - y[k] for x, y in zip(per_trial(summaries[a]), per_trial(summaries[b]))]
            cells.append(f"{statistics.mean(d):+.2f} ({sum(v > 0 for v in d)}/{len(d)}, {statistics.stdev(d):.2f})")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "paired.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
