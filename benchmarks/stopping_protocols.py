"""Where would each stopping criterion have ended the bench's runs, what would it have saved, and what given up?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stopping_protocols.py

Why (issue 23): the `cpu` and `converged` protocols' records hold no predictions, so the criteria are computed
here from every cycle's kept model (the runs made with `benchmarks/extra_trials.py --keep-checkpoints`: the
converged protocol's trials 3-5 of random, COD, margin, entropy and COD + TOD loss; the default-flavor cpu
protocol's trials 0-5 of random, COD, COD + TOD loss, margin and random + TOD loss).

What: for every cycle's model, exactly what `ActiveLoop` now records (`todal.stopping`): Cohen's κ against the
previous cycle's model on the run's fixed stop set (1,000 seeded training samples), the overall uncertainty
there, and the paired gain on the test set; then, for each criterion at its default (κ: mean >= 0.99 over 3
cycles; uncertainty < 0.05; plateau: the gain's upper bound < 1 point per 100 labels), the first cycle at which
`ActiveLoop(stop=...)` would have ended the run. Labels saved = the run's final labels - the labels at that
cycle; accuracy given up = the final test accuracy - the accuracy there.

Writes benchmarks/stopping-protocols/{results.json, README.md}.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "stopping-protocols"
BENCHES = {
    "converged": ("fashion-mnist-converged", [], ["random", "cod", "margin", "entropy", "cod+semi"], [3, 4, 5]),
    "cpu (default flavor)": ("fashion-mnist-cpu-default", ["fig9=false", "grid_lams=[]"],
                             ["random", "cod", "margin", "cod+semi", "random+semi"], [0, 1, 2, 3, 4, 5]),
}
CRITERIA = ("kappa", "uncertainty", "plateau")  # todal.bench.analysis.STOP_CRITERIA


def analyse(protocol: str, folder: str, overrides: list[str], methods: list[str], trials: list[int]) -> list[dict]:
    """Each run's records with what ActiveLoop now records per cycle, from its kept models, and where each
    criterion would have stopped it (`todal.bench.analysis.where_to_stop`)."""
    from todal.bench.analysis import where_to_stop
    from todal.bench.runner import is_done, make_loop, parse_method
    from todal.bench.suite import load_for
    from todal.stopping import cohen_kappa

    p, train, test = load_for(protocol.split()[0], "fashion-mnist", overrides)
    rows = []
    for spec in methods:
        for trial in trials:
            loop = make_loop(p, parse_method(spec), trial, train, test, HERE / folder)
            if not is_done(loop.workdir) or not (loop.workdir / "checkpoints" / "cycle_0.pt").exists():
                print(f"skip {spec} trial {trial}: not finished with every cycle kept", flush=True)
                continue
            stop_set, records, before = loop.stop_set(), [], None
            for r in loop.records():
                model = loop.model(r["cycle"])
                preds, uncertainty = loop.engine.signals(model, loop.data[0], stop_set)
                _, correct = loop.engine.evaluate(model, loop.data[1], per_item=True)
                rec = {"cycle": r["cycle"], "labeled": r["labeled"], "accuracy": r["accuracy"],
                       "pool_uncertainty": uncertainty, "stop_kappa": None, "paired": None}
                if before is not None:
                    rec["stop_kappa"] = cohen_kappa(before[0], preds, loop.num_classes)
                    rec["paired"] = [int((correct & ~before[1]).sum()), int((~correct & before[1]).sum()), len(correct)]
                records.append(rec)
                before = (preds, correct)
            stops = where_to_stop(records)
            rows.append({"protocol": protocol, "method": spec, "trial": trial, "records": records, "stops": stops})
            print(f"{protocol} {spec} trial {trial}: κ {[None if x['stop_kappa'] is None else round(x['stop_kappa'], 3) for x in records]}"
                  f"; stops {[(k, v and v['cycle']) for k, v in stops.items()]}", flush=True)
    return rows


def main() -> dict:
    rows = [r for protocol, (folder, overrides, methods, trials) in BENCHES.items()
            for r in analyse(protocol, folder, overrides, methods, trials)]
    summary = []
    for protocol in BENCHES:
        for method in dict.fromkeys(r["method"] for r in rows if r["protocol"] == protocol):
            runs = [r for r in rows if r["protocol"] == protocol and r["method"] == method]
            entry = {"protocol": protocol, "method": method, "trials": len(runs),
                     "final_labels": runs[0]["records"][-1]["labeled"],
                     "kappa_last": statistics.fmean(r["records"][-1]["stop_kappa"] for r in runs),
                     "uncertainty_last": statistics.fmean(r["records"][-1]["pool_uncertainty"] for r in runs)}
            for crit in CRITERIA:
                hit = [r["stops"][crit] for r in runs if r["stops"][crit]]
                entry[crit] = {"stopped": len(hit),
                               "labels_saved": statistics.fmean(h["labels_saved"] for h in hit) if hit else 0.0,
                               "accuracy_given_up": statistics.fmean(h["given_up"] for h in hit) if hit else 0.0}
            summary.append(entry)
    result = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stopping_protocols.py", "summary": summary,
              "runs": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Where the stopping criteria would have ended the bench's runs\n",
             f"Command: `{result['command']}`. Raw numbers (every cycle's κ, uncertainty and paired gain): "
             "`results.json`.\n",
             "Criteria at their defaults (`todal.stopping.StopRule`): κ = stabilizing predictions (mean κ >= 0.99 "
             "over the last 3 cycles, on 1,000 fixed training samples), uncertainty = overall uncertainty < 0.05, "
             "plateau = the paired gain's upper bound below 1 point per 100 labels. A cell: trials stopped / trials, "
             "then the mean labels saved and accuracy given up (points) over the trials that stopped.\n",
             "| protocol | method | final labels | κ at the end | uncertainty at the end | κ | uncertainty | plateau |",
             "|---|---|---|---|---|---|---|---|"]
    for e in summary:
        def cell(c):
            x = e[c]
            return "never" if not x["stopped"] else (f"{x['stopped']}/{e['trials']}: {x['labels_saved']:.0f} saved, "
                                                      f"{100 * x['accuracy_given_up']:+.2f}")
        lines.append(f"| {e['protocol']} | {e['method']} | {e['final_labels']} | {e['kappa_last']:.3f} | "
                     f"{e['uncertainty_last']:.3f} | {cell('kappa')} | {cell('uncertainty')} | {cell('plateau')} |")
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print((OUT / "README.md").read_text())
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
