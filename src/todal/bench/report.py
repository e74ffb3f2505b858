"""`<out>/report.md`, its figures, and `<out>/results.json` (the raw numbers behind every line)."""

from __future__ import annotations

import math
from pathlib import Path

from ..atomic import write_json, write_text
from ..plots import learning_curve
from ..results import compare_table
from . import figures

METRIC_NAMES = {"final": "final accuracy", "aubc": "AUBC"}


def _pm(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if n > 1 else f"{100 * mean:.2f}"


def sentence(c: dict) -> str:
    """One "X beats Y" sentence, or "within noise", with the paired evidence behind it."""
    what = METRIC_NAMES[c["metric"]]
    if c["verdict"] == "within noise":
        return (f"- {c['a']} vs {c['b']}, {what}: **within noise** (mean paired difference {100 * c['mean']:+.2f} "
                f"points, {c['a']} ahead in {c['wins']} of {c['n']} trials; std of the differences "
                f"{100 * c['std']:.2f}).")
    a_wins = c["mean"] > 0
    win, lose = (c["a"], c["b"]) if a_wins else (c["b"], c["a"])
    ahead = c["wins"] if a_wins else sum(d < 0 for d in c["diffs"])
    return (f"- **{win} beats {lose}** on {what}: by {100 * abs(c['mean']):.2f} points on average, ahead in "
            f"{ahead} of {c['n']} paired trials (std of the differences {100 * c['std']:.2f}).")


def _table(headers: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + \
           ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]


def _fmt(v: float, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.{digits}f}"


def write_report(out: Path, r: dict) -> None:
    """Write results.json, the figures and report.md from the results of `run_bench`."""
    out = Path(out)
    runs = {k: {t: [{kk: vv for kk, vv in rec.items() if kk != "selected"} for rec in recs]
                for t, recs in v.items()} for k, v in r["runs"].items()}
    write_json(out / "results.json", {**r, "runs": runs})
    p, env, s = r["protocol"], r["environment"], r["summaries"]
    grid = r["grid"]
    main = [k for k in r["methods"] if k not in grid]
    trials = max(len(v["seeds"]) for v in s.values())
    lines = [f"# `todal bench`: protocol `{p['name']}` on `{r['dataset']}`\n",
             f"Command: `{r['command']}`. Every number below is in `results.json`; each run is a resumable run "
             "directory under `runs/` (its `metrics.jsonl` is the raw per-cycle record).\n",
             *_table(["todal", "git commit", "torch", "device", "wall time of this invocation"],
                     [[env["todal_version"], env["git_commit"] or "-", env["torch_version"], env["device"],
                       f"{env['wall_time_s']:.0f} s ({len(env['runs_ran'])} runs trained, "
                       f"{len(env['runs_reused'])} reused; training + selection in all runs: "
                       f"{env['run_time_s_total']:,.0f} s)"]]), ""]
    lines += ["## Protocol\n", "Effective configuration:\n", "```", *(f"{k} = {v}" for k, v in p.items()), "```\n"]
    diffs = r["differences_from_paper"]
    if diffs:
        lines += ["Differences from the paper's appendix B (`paper` protocol):\n",
                  *_table(["value", "here", "paper"], [[d["key"], d["value"], d["paper"]] for d in diffs]), ""]
    else:
        lines.append("Identical to the paper's appendix B.\n")

    # Fig. 7 and AUBC.
    learning_curve({k: s[k] for k in main}, out / "fig7_learning_curves.png",
                   title=f"{r['dataset']}, {p['name']} protocol (mean ± std over trials)")
    lines += ["## Fig. 7: learning curves\n",
              "Test accuracy (%) per cycle, mean ± std over trials. Ours-Semi = `cod+semi`, Ours-Task = `cod`. "
              "The AUBC row is the area under the mean curve.\n",
              "```", compare_table({k: s[k] for k in main}), "```\n",
              *_table(["method", "trials", "final accuracy (%)", "AUBC (%), mean ± std over trials"],
                      [[k, len(s[k]["seeds"]), _pm(s[k]["final_accuracy_mean"], s[k]["final_accuracy_std"], len(s[k]["seeds"])),
                        _pm(sum(s[k]["aubc_trials"]) / len(s[k]["aubc_trials"]), s[k]["aubc_std"], len(s[k]["seeds"]))]
                       for k in main]),
              "\n![learning curves](fig7_learning_curves.png)\n"]

    # Table 1.
    rows = [[entry, run, _pm(s[run]["final_accuracy_mean"], s[run]["final_accuracy_std"], len(s[run]["seeds"]))]
            for entry, run in r["ablation"].items() if run in s]
    rows += [[f"baseline: {k}", k, _pm(s[k]["final_accuracy_mean"], s[k]["final_accuracy_std"], len(s[k]["seeds"]))]
             for k in main if k not in r["ablation"].values()]
    lines += ["## Table 1: ablation at the last cycle\n", *_table(["entry", "run", "final accuracy (%)"], rows), ""]

    # Paired comparisons.
    lines += ["## Who beats whom (paired over trials)\n",
              "Each comparison pairs the runs of the same trial (same seed, same initial labeled set). A method is "
              "said to beat another only when it is ahead in every trial and the mean difference exceeds the "
              "standard deviation of the per-trial differences; otherwise the difference is reported as within "
              f"noise. With {trials} trial(s), "
              + ("no difference can be called a win." if trials < 2 else "a win needs all of them to agree.") + "\n",
              *(sentence(c) for c in r["paired"]), ""]

    # Fig. 3, 5, 6.
    le = r["loss_estimation"]
    if le and le["mean"]:
        rows_ = le["mean"]
        title = f"{le['run']}, mean over {len(le['trials'])} trial(s)"
        figures.cod_and_loss(rows_, out / "fig3_cod_and_loss.png", title)
        figures.loss_by_bucket(rows_, le["buckets"], out / "fig5_loss_by_cod_rank.png", title)
        figures.recall_curves(rows_, le["fractions"], out / "fig6_loss_recall.png", title)
        est = list(rows_[-1]["recall"])
        lines += [f"## Fig. 3: mean COD and mean true loss of the unlabeled pool ({le['run']})\n",
                  "Computed from every cycle's checkpoint (COD of cycle c: this cycle's model against the "
                  "previous cycle's, softmax outputs; the true loss: cross-entropy against the hidden labels), "
                  f"on at most {p['analysis_pool'] or 'all'} unlabeled samples per cycle; mean over trials.\n",
                  *_table(["% labeled", "samples", "mean COD", "mean true loss"],
                          [[f"{100 * c['labeled_fraction']:.1f}", int(c["n"]), _fmt(c["mean"]["cod"], 1, 4),
                            _fmt(c["mean_loss"], 1, 4)] for c in rows_]),
                  "\n![Fig. 3](fig3_cod_and_loss.png)\n",
                  "## Fig. 5: true loss by COD rank\n",
                  *_table(["% labeled"] + le["buckets"],
                          [[f"{100 * c['labeled_fraction']:.1f}"] + [_fmt(v, 1, 3) for v in c["loss_by_cod_bucket"]]
                           for c in rows_]),
                  "\n![Fig. 5](fig5_loss_by_cod_rank.png)\n",
                  "## Fig. 6: loss estimation\n",
                  "Recall (%) of the k% highest-loss unlabeled samples among the k% highest of each estimator "
                  "(random picking recalls k% on average); mean over cycles and trials. `ll4al` is scored against "
                  "the loss of the `ll4al` run's own model on the same samples; the others against the loss of "
                  f"`{le['run']}`'s model. The last column is Spearman's correlation with the true loss.\n",
                  *_table(["estimator"] + [f"k={100 * f:g}%" for f in le["fractions"]] + ["Spearman (mean over cycles)"],
                          [[e] + [_fmt(sum(c["recall"][e][i] for c in rows_ if e in c["recall"]) /
                                       max(1, sum(e in c["recall"] for c in rows_)), 100, 1)
                                  for i in range(len(le["fractions"]))]
                           + [_fmt(sum(c["spearman"][e] for c in rows_ if e in c["spearman"]) /
                                   max(1, sum(e in c["spearman"] for c in rows_)), 1, 3)] for e in est]),
                  "\nSpearman per cycle (mean ± std over trials):\n",
                  *_table(["% labeled"] + est,
                          [[f"{100 * c['labeled_fraction']:.1f}"] +
                           [f"{_fmt(c['spearman'].get(e, float('nan')))} ± {_fmt(le['spearman_std'].get(e, [0.0] * (i + 1))[i])}"
                            for e in est] for i, c in enumerate(rows_)]),
                  "\n![Fig. 6](fig6_loss_recall.png)\n"]
    else:
        lines += ["## Fig. 3, 5, 6\n", "Not computed: no `cod+semi` or `cod` run with every cycle's checkpoint.\n"]

    # Fig. 9 / 10.
    lines.append("## Fig. 9 / 10: CyclicOD vs EMAOD\n")
    if "emaod" in s and "cod" in s:
        learning_curve({k: s[k] for k in ("cod", "emaod")}, out / "fig9_cod_vs_emaod.png",
                       title="Fig. 9: COD vs EMAOD sampling (task loss only)")
        lines += ["Sampling by COD against sampling by EMAOD, both trained on the task loss only:\n",
                  *(sentence(c) for c in r["paired"] if {c["a"], c["b"]} == {"cod", "emaod"}),
                  "\n![Fig. 9](fig9_cod_vs_emaod.png)\n"]
    lines.append(f"Fig. 10 {r['fig10']}\n")

    # Fig. 12.
    if grid:
        lams = sorted({float(p["lam"])} | {float(x) for x in p["grid_lams"]})
        alphas = sorted({float(p["ema_decay"])} | {float(x) for x in p["grid_alphas"]})
        label = {(float(p["lam"]), float(p["ema_decay"])): "cod+semi"}
        label.update({(lam, a): f"cod+semi λ={lam:g} α={a:g}" for lam in lams for a in alphas
                      if f"cod+semi λ={lam:g} α={a:g}" in s})
        values = [[s[label[(lam, a)]]["final_accuracy_mean"] if (lam, a) in label else float("nan") for a in alphas]
                  for lam in lams]
        figures.grid_heatmap(lams, alphas, values, out / "fig12_lambda_alpha.png", "Fig. 12: cod+semi, final accuracy")
        lines += ["## Fig. 12: sensitivity to λ and α (cod+semi)\n",
                  *_table(["λ \\ α"] + [f"{a:g}" for a in alphas],
                          [[f"{lam:g}"] + [_pm(s[label[(lam, a)]]["final_accuracy_mean"], s[label[(lam, a)]]["final_accuracy_std"],
                                               len(s[label[(lam, a)]]["seeds"])) if (lam, a) in label else "-"
                                           for a in alphas] for lam in lams]),
                  f"\nFinal accuracy (%), mean ± std over trials; the grid cells ran in the first {p['grid_trials']} "
                  "trial(s) only, so their comparisons with cod+semi are paired over that many.\n",
                  *(sentence(c) for c in r["paired"] if c["a"] in grid), "\n![Fig. 12](fig12_lambda_alpha.png)\n"]

    # Table 3.
    st = r["selection_time"]
    lines += ["## Table 3: selection time\n",
              f"Mean `select_time_s` of every selection of every trial (from each run's `metrics.jsonl`, measured "
              f"while it ran), and its ratio to one plain inference pass of the same model over "
              f"{st['pool_size']:,} samples (the mean unlabeled pool), measured in this process: "
              f"{st['inference_pass_s']:.3f} s on {env['device']}. Runs measured on a busy or different machine "
              "inflate their ratio; the selections of reused runs were timed when they ran.\n",
              *_table(["method", "selections", "seconds, mean ± std", "x inference pass"],
                      [[k, v["selections"], f"{v['mean_s']:.3f} ± {v['std_s']:.3f}", f"{v['over_inference']:.2f}"]
                       for k, v in sorted(st["per_method"].items(), key=lambda kv: kv[1]["mean_s"])]), ""]

    # Fig. 11.
    pc = r["per_class"]
    target = "cod+semi" if "cod+semi" in pc else next(iter(pc), None)
    if target:
        figures.per_class_lines(pc[target], out / "fig11_per_class.png", f"Fig. 11: {target}, per-class accuracy")
        d = pc[target]
        lines += [f"## Fig. 11: per-class accuracy across cycles ({target}, mean over {d['trials']} trial(s))\n",
                  *_table(["% labeled"] + [f"class {k}" for k in range(len(d["accuracy"][0]))],
                          [[f"{100 * f:.1f}"] + [f"{100 * v:.1f}" for v in row]
                           for f, row in zip(d["fractions"], d["accuracy"])]),
                  "\n![Fig. 11](fig11_per_class.png)\n"]
    write_text(out / "report.md", "\n".join(lines))
