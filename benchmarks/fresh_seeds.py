"""Does a verdict hold on seeds nothing was chosen on? The same paired comparisons on trials 0-2 and on 3-5.

    .venv/bin/python benchmarks/fresh_seeds.py

Why (issue 24): the default flavor was picked from trials 0-2 of the flavor ablation (cpu protocol) and scored on
the same trials; the converged protocol's verdicts rested on those 3 trials too. Trials 3-5 (seeds 3-5: other
initial pools, other initial models; the converged protocol also draws another 6,000-image pool per trial) were
run afterwards with `benchmarks/extra_trials.py`, choosing nothing on them.

What: from the runs' own `metrics.jsonl`, each pair's paired difference (final accuracy and AUBC) with its 95%
confidence interval and the paired t-test (`todal.bench.analysis.paired`), on trials 0-2, on the fresh 3-5, and
on all six.

Writes benchmarks/fresh-seeds/{results.json, README.md}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "fresh-seeds"
BENCHES = {
    "cpu protocol, default flavor": ("fashion-mnist-cpu-default",
                                     [("cod+semi", "random"), ("cod", "random"), ("cod+semi", "cod"),
                                      ("cod", "margin"), ("cod+semi", "margin"), ("random+semi", "random")]),
    "converged protocol": ("fashion-mnist-converged",
                           [("cod", "random"), ("cod+semi", "random"), ("cod+semi", "cod"), ("cod", "margin"),
                            ("cod", "entropy"), ("margin", "random"), ("entropy", "random")]),
}
SPLITS = {"trials 0-2 (chosen on)": [0, 1, 2], "trials 3-5 (fresh)": [3, 4, 5], "all 6": [0, 1, 2, 3, 4, 5]}


def records(folder: Path, method: str, trials: list[int]) -> dict[int, list[dict]]:
    out = {}
    for t in trials:
        run = folder / "runs" / f"{method}-trial{t}"
        prog = run / "progress.json"
        if prog.exists() and json.loads(prog.read_text()).get("stage") == "done":
            out[t] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return out


def main() -> dict:
    from todal.bench.analysis import paired, verdict
    from todal.bench.report import evidence

    result = {"command": ".venv/bin/python benchmarks/fresh_seeds.py", "benches": {}}
    lines = ["# Verdicts on fresh seeds\n", f"Command: `{result['command']}`. Raw numbers: `results.json`.\n",
             "Each cell: the paired difference in points (a - b) with its 95% confidence interval and the paired "
             "t-test, and the verdict (a win only when the interval excludes zero).\n"]
    for name, (folder, pairs) in BENCHES.items():
        rows = []
        for a, b in pairs:
            for metric in ("final", "aubc"):
                row = {"a": a, "b": b, "metric": metric}
                for split, trials in SPLITS.items():
                    runs = {a: records(HERE / folder, a, trials), b: records(HERE / folder, b, trials)}
                    c = paired(runs, a, b, metric)
                    row[split] = {**c, "verdict": verdict(c)} if c["n"] else None
                rows.append(row)
        result["benches"][name] = {"folder": folder, "rows": rows}
        lines += [f"## {name} ([`{folder}`](../{folder}/report.md))\n",
                  "| a - b | metric | " + " | ".join(SPLITS) + " |", "|---|---|" + "---|" * len(SPLITS)]
        for row in rows:
            cells = ["-" if row[s] is None else f"{evidence(row[s])}: **{row[s]['verdict']}**" for s in SPLITS]
            lines.append(f"| {row['a']} - {row['b']} | {row['metric']} | " + " | ".join(cells) + " |")
        lines.append("")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print((OUT / "README.md").read_text())
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
