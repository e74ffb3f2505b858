"""COD's first selection: does picking the LOWEST discrepancy in cycle 0, as the authors' code does, fix COD's lag?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cod_first_cycle.py              # trials 0, 1, 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cod_first_cycle.py --trials 0    # one

Why: in benchmarks/fashion-mnist-cpu (`todal bench --protocol cpu`), COD trails random most right
after its first selection, and Fig. 6 there shows why. In cycle 0 there is no previous cycle, so COD
measures the trained model against its own untrained initial weights (the paper flavor's
`first_reference="initial"`), and that discrepancy ranks the pool almost in reverse of the true loss
(Spearman about -0.86): the samples the model moved furthest from its initial output are the ones it
now predicts confidently. Taking the top of that ranking labels easy samples. The authors' released
code takes the BOTTOM of the ranking in the first cycle (`todal.flavor`: `first_cycle_lowest`).

What: the bench's `cod` with that one change (`flavor_overrides={"first_cycle_lowest": True}`), the
same `cpu` protocol and seeds (trial t = seed t: the same initial pool and cycle-0 model), paired
with the bench's own `cod` and `random` runs, which are read from benchmarks/fashion-mnist-cpu/runs
(they must be finished there). Reports accuracy per cycle, final accuracy and AUBC, with the bench's
verdict rule (a win only when the 95% confidence interval of the mean paired difference excludes zero).

Writes benchmarks/cod-first-cycle/{results.json, README.md}; its runs are resumable run directories
under benchmarks/cod-first-cycle/runs/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from todal.atomic import write_json, write_text
from todal.bench import analysis
from todal.bench.runner import Method, is_done, make_loop
from todal.bench.suite import device_name, git_commit, load_for

HERE = Path(__file__).resolve().parent
BENCH = HERE / "fashion-mnist-cpu"
OUT = HERE / "cod-first-cycle"
VARIANT = "cod, lowest first"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", default="0,1,2", help="comma-separated trials (seeds) of the bench to pair with")
    args = ap.parse_args(argv)
    trials = [int(t) for t in args.trials.split(",")]
    commit = git_commit()  # of the code this process runs
    p, train, test = load_for("cpu", "fashion-mnist", ["flavor=paper"])  # the committed bench's flavor
    runs: dict[str, dict[int, list[dict]]] = {"random": {}, "cod": {}, VARIANT: {}}
    for t in trials:
        for name in ("random", "cod"):
            loop = make_loop(p, Method(name), t, train, test, BENCH)
            if not is_done(loop.workdir):
                sys.exit(f"{loop.workdir} is not a finished run; run the bench first: todal bench --protocol cpu --set flavor=paper "
                         f"--dataset fashion-mnist --strategies all --out {BENCH.relative_to(HERE.parent)}")
            runs[name][t] = loop.run()
        print(f"== {VARIANT}, trial {t}", flush=True)
        loop = make_loop(p, Method("cod"), t, train, test, OUT, flavor_overrides={"first_cycle_lowest": True})
        runs[VARIANT][t] = loop.run()
    cycles = len(runs["cod"][trials[0]])
    curves = {k: {"labeled": [r["labeled"] for r in v[trials[0]]],
                  "accuracy_mean": [statistics.fmean(v[t][c]["accuracy"] for t in trials) for c in range(cycles)]}
              for k, v in runs.items()}
    first_two = {k: {t: recs[:2] for t, recs in v.items()} for k, v in runs.items()}
    paired = []
    for a, b in ((VARIANT, "cod"), (VARIANT, "random"), ("cod", "random")):
        for metric in ("final", "aubc"):
            c = analysis.paired(runs, a, b, metric)
            c["verdict"] = analysis.verdict(c)
            paired.append(c)
        # right after the first selection: the final accuracy of the runs cut after cycle 1
        c = analysis.paired(first_two, a, b, "final")
        paired.append({**c, "metric": "cycle 1", "verdict": analysis.verdict(c)})
    bench = json.loads((BENCH / "results.json").read_text())
    spearman0 = bench["loss_estimation"]["mean"][0]["spearman"]["cod"]
    results = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cod_first_cycle.py"
                          + (f" --trials {args.trials}" if argv else ""),
               "protocol": p.to_dict(), "trials": trials, "variant": {"strategy": "cod",
               "flavor_overrides": {"first_cycle_lowest": True}}, "cycle0_spearman_cod_vs_loss": spearman0,
               "environment": {"git_commit": commit, "device": device_name(loop.device)},
               "curves": curves, "paired": paired, "runs": runs}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "results.json", results)
    write_text(OUT / "README.md", readme(results))
    print(readme(results))
    return results


def readme(r: dict) -> str:
    names = list(r["curves"])
    lines = ["# COD's first selection: highest (paper) or lowest (authors' code) discrepancy\n",
             f"Command: `{r['command']}` (commit {r['environment']['git_commit']}, "
             f"{r['environment']['device']}). Raw numbers: `results.json`; the runs: `runs/`.\n",
             "Same `cpu` protocol and seeds as [`../fashion-mnist-cpu`](../fashion-mnist-cpu/report.md); `cod` and "
             "`random` are that bench's runs, `cod, lowest first` is `cod` with one flavor change, "
             "`first_cycle_lowest=True`: in cycle 0 only, the budget goes to the lowest discrepancy instead of "
             "the highest. In cycle 0 COD compares the trained model with its untrained initial weights; the "
             f"bench measured that ranking's Spearman correlation with the true loss at "
             f"{r['cycle0_spearman_cod_vs_loss']:.2f} (Fig. 6).\n",
             f"Accuracy (%) per cycle, mean over {len(r['trials'])} trial(s):\n",
             "| labeled | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for c, n in enumerate(r["curves"][names[0]]["labeled"]):
        lines.append(f"| {n:,} | " + " | ".join(f"{100 * r['curves'][k]['accuracy_mean'][c]:.2f}" for k in names)
                     + " |")
    lines += ["", "Paired over trials (points; 'cycle 1' is the accuracy right after the first selection):\n",
              "| a vs b | metric | mean difference [95% CI] | paired t-test p | a ahead | verdict |",
              "|---|---|---|---|---|---|"]
    for c in r["paired"]:
        lines.append(f"| {c['a']} vs {c['b']} | {c['metric']} | {100 * c['mean']:+.2f} [{100 * c['low']:+.2f}, "
                     f"{100 * c['high']:+.2f}] | {c['p']:.3g} | {c['wins']} of {c['n']} | {c['verdict']} |")
    lines += ["", "A verdict other than 'within noise' needs the interval (t distribution) to exclude zero."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:] or None)
