"""`<out>/report.md`, its figures, and `<out>/results.json` (the raw numbers behind every line)."""

from __future__ import annotations

import math
from pathlib import Path

from ..atomic import write_json, write_text
from ..plots import learning_curve
from ..results import compare_table
from . import figures

METRIC_NAMES = {"final": "final {}", "aubc": "AUBC of {}"}
KEY_NAMES = {"accuracy": "accuracy", "miou": "mIoU"}


def _pm(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if n > 1 else f"{100 * mean:.2f}"


def evidence(c: dict) -> str:
    """"+1.69 points (95% CI +1.07 to +2.30, paired t-test p = 0.007; ahead in 3 of 3 trials)"."""
    if c["n"] < 2:
        return f"{100 * c['mean']:+.2f} points (one trial: no interval)"
    return (f"{100 * c['mean']:+.2f} points (95% CI {100 * c['low']:+.2f} to {100 * c['high']:+.2f}, paired t-test "
            f"p = {c['p']:.3g}; {c['a']} ahead in {c['wins']} of {c['n']} trials)")


def sentence(c: dict) -> str:
    """One "X beats Y" sentence, or "within noise", with the paired evidence behind it."""
    what = METRIC_NAMES[c["metric"]].format(KEY_NAMES[c.get("key", "accuracy")])
    if c["verdict"] == "within noise":
        return f"- {c['a']} vs {c['b']}, {what}: **within noise**: {evidence(c)}."
    if c["mean"] < 0:  # told from the winner's side
        c = {**c, "a": c["b"], "b": c["a"], "mean": -c["mean"], "low": -c["high"], "high": -c["low"],
             "wins": sum(d < 0 for d in c["diffs"])}
    return f"- **{c['a']} beats {c['b']}** on {what}: {c['a']} - {c['b']} = {evidence(c)}."


def _table(headers: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + \
           ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]


def _fmt(v: float, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.{digits}f}"


def _table2(r: dict) -> list[str]:
    """Table 2's analogue: per-class IoU at the last cycle without and with the TOD loss, and each class's
    share of the test pixels."""
    lines = ["## Table 2: per-class IoU with and without the TOD loss\n"]
    names = r.get("class_names") or []
    for base, t in r["class_iou"].items():
        if not t["trials"]:
            continue
        k = len(t["trials"])
        lines += [f"`{base}` ('T', task loss only) against `{base}+semi` ('T + U', with the TOD loss of Eq. 9) at "
                  f"the last cycle ({100 * t['labeled_fraction']:.1f}% labeled; the paper's Table 2: 40%), IoU (%) "
                  f"per class, mean over {k} paired trial(s). 'Proportion' is the class's share of the test "
                  "pixels. '-': the class appears in neither the truth nor the predictions.\n",
                  *_table(["class", "proportion (%)", "T", "T + U", "T + U - T"],
                          [[f"{c} {names[c]}" if c < len(names) else str(c), _fmt(t["proportion"][c], 100, 1),
                            _fmt(t["without"][c], 100, 1), _fmt(t["with"][c], 100, 1),
                            "-" if t["diff"][c] is None else f"{100 * t['diff'][c]:+.1f}"] for c in range(t["classes"])]
                          + [["mIoU", "-", _fmt(t["miou_without"], 100, 1), _fmt(t["miou_with"], 100, 1),
                              f"{100 * (t['miou_with'] - t['miou_without']):+.1f}"]]),
                  f"\nThe TOD loss gives a higher IoU on {t['better']} of {t['compared']} classes; mean change "
                  f"{_fmt(t['gain_minority'], 100, 1)} points on the {t['minority']} rarest of them, "
                  f"{_fmt(t['gain_majority'], 100, 1)} on the others (the paper: larger gains on minority classes)"
                  + (" (one trial: no claim beyond this run)." if k < 2 else
                     "; the mIoU comparison paired over trials is in the section below.") + "\n"]
    if len(lines) == 1:
        lines.append("Not computed: it needs `cod` and `cod+semi` (or `random` and `random+semi`) runs.\n")
    return lines


def write_report(out: Path, r: dict) -> None:
    """Write results.json, the figures and report.md from the results of `run_bench`."""
    out = Path(out)
    runs = {k: {t: [{kk: vv for kk, vv in rec.items() if kk != "selected"} for rec in recs]
                for t, recs in v.items()} for k, v in r["runs"].items()}
    write_json(out / "results.json", {**r, "runs": runs})
    p, env, s = r["protocol"], r["environment"], r["summaries"]
    key = r.get("metric", "accuracy")
    seg = key == "miou"
    name = KEY_NAMES[key]
    grid = r["grid"]
    main = [k for k in r["methods"] if k not in grid]
    trials = max(len(v["seeds"]) for v in s.values())
    lines = [f"# `todal bench`: protocol `{p['name']}` on `{r['dataset']}`\n",
             f"Command: `{r['command']}`"
             + (f"; runs added since (trials beyond the protocol's, e.g. by `benchmarks/extra_trials.py`) and the "
                f"report rewritten from all {sum(len(v) for v in r['runs'].values())} runs by `{r['rewritten_by']}` (the "
                f"table below describes the first invocation)" if r.get("rewritten_by") else "")
             + ". Every number below is in `results.json`; each run is a resumable run "
             "directory under `runs/` (its `metrics.jsonl` is the raw per-cycle record).\n",
             *_table(["todal", "git commit", "torch", "device", "wall time of this invocation"],
                     [[env["todal_version"], env["git_commit"] or "-", env["torch_version"], env["device"],
                       f"{env['wall_time_s']:.0f} s ({len(env['runs_ran'])} runs trained, "
                       f"{len(env['runs_reused'])} reused; training + selection in all runs: "
                       f"{env['run_time_s_total']:,.0f} s)"]]), ""]
    lines += ["## Protocol\n", "Effective configuration:\n", "```", *(f"{k} = {v}" for k, v in p.items()), "```\n"]
    diffs = r["differences_from_paper"]
    setting = ("the paper's Cityscapes setting (Sec. 5.3, appendix B.2, Table 5: DRN-D-22 on 688x688 crops of the "
               "2,975 train images, mIoU on the 500 val images)" if seg else "the paper's appendix B")
    if seg and r["dataset"] != "cityscapes":
        lines.append(f"Dataset: `{r['dataset']}` stands in for Cityscapes (the paper's: 19 classes, 2,975 train and "
                     "500 val driving frames of 2048x1024, heavy class imbalance, trained on random 688x688 crops "
                     "with flips, evaluated whole); its sizes are `dataset_options` below, its inputs and training "
                     "augmentation are the reader's own (fashion-mnist-scenes: 64x64 scenes, 11 classes with "
                     "background, crops of the 4-pixel zero-padded scene and flips).\n")
    if diffs:
        lines += [f"Differences from {setting} (`paper` protocol):\n",
                  *_table(["value", "here", "paper"], [[d["key"], d["value"], d["paper"]] for d in diffs]), ""]
    else:
        lines.append(f"Identical to {setting}.\n")

    # Fig. 7 (segmentation: Fig. 8) and AUBC.
    fig = "fig8_miou" if seg else "fig7_learning_curves"
    figures.headline({k: s[k] for k in main}, out / f"{fig}.png", key=key, name=name,
                     title=f"{r['dataset']}, {p['name']} protocol")
    lines += ["## Fig. 8: mIoU vs % labeled\n" if seg else "## Fig. 7: learning curves\n",
              f"Test {name} (%) per cycle, mean ± std over trials. Ours-Semi = `cod+semi`, Ours-Task = `cod`. "
              "The AUBC row is the area under the mean curve"
              + (" of mIoU; pixel accuracy is in `results.json`.\n" if seg else ".\n"),
              "```", compare_table({k: s[k] for k in main}), "```\n",
              *_table(["method", "trials", f"final {name} (%)", f"AUBC of {name} (%), mean ± std over trials"],
                      [[k, len(s[k]["seeds"]),
                        _pm(s[k][f"final_{key}_mean"], s[k][f"final_{key}_std"], len(s[k]["seeds"])),
                        _pm(sum(s[k]["aubc_trials"]) / len(s[k]["aubc_trials"]), s[k]["aubc_std"], len(s[k]["seeds"]))]
                       for k in main]),
              f"\n![learning curves]({fig}.png)\n"]

    # Table 1.
    rows = [[entry, run, _pm(s[run][f"final_{key}_mean"], s[run][f"final_{key}_std"], len(s[run]["seeds"]))]
            for entry, run in r["ablation"].items() if run in s]
    rows += [[f"baseline: {k}", k, _pm(s[k][f"final_{key}_mean"], s[k][f"final_{key}_std"], len(s[k]["seeds"]))]
             for k in main if k not in r["ablation"].values()]
    lines += ["## Table 1: ablation at the last cycle\n", *_table(["entry", "run", f"final {name} (%)"], rows), ""]
    if seg:
        lines += _table2(r)

    # Paired comparisons.
    lines += ["## Who beats whom (paired over trials)\n",
              "Each comparison pairs the runs of the same trial (same seed, same initial labeled set), over the "
              "trials both methods have. A method is said to beat another only when the 95% confidence interval of "
              "the mean paired difference (t distribution) excludes zero, i.e. the paired t-test gives p < 0.05; "
              "otherwise the difference is reported as within noise. The comparisons: every method against random, "
              "TOD's methods against the best baselines of this bench (by AUBC), and the paper's ablations."
              + (" With one trial no difference can be called a win." if trials < 2 else "") + "\n",
              *(sentence(c) for c in r["paired"]), ""]
    if r.get("label_savings"):
        ref = r["label_savings"][0]["reference"]
        lines += [f"## Labels to reach {ref}'s final {name}\n",
                  f"The share of {ref}'s labels each method needs to reach {ref}'s final {name} (the paper's "
                  "headline form: the same accuracy with fewer labels), linear between cycles: on the mean curves, "
                  f"and per trial against the same trial's {ref} (mean ± std over the trials that get there).\n",
                  *_table(["method", "share of the labels (mean curve)", "per trial", "trials that get there"],
                          [[x["method"], "not reached" if x["share"] is None else f"{100 * x['share']:.1f}%",
                            "-" if not x["reached"] else
                            f"{100 * sum(v for v in x['per_trial'] if v is not None) / x['reached']:.1f}% ± "
                            f"{100 * x['std']:.1f}",
                            f"{x['reached']} of {len(x['per_trial'])}"] for x in r["label_savings"]]), ""]

    # When to stop.
    if r.get("stopping"):
        lines += ["## When to stop\n",
                  "Where each stopping criterion at its default (`todal.stopping.StopRule`; κ: mean >= 0.99 over 3 "
                  "cycles on a fixed stop set of 1,000 training samples; uncertainty: the pool's mean normalized "
                  "entropy < 0.05; plateau: the paired gain's upper bound < 1 point per 100 labels) would have "
                  "ended each run (`ActiveLoop(stop=...)`): trials stopped of those that recorded the criteria, "
                  f"then the mean labels saved and {name} given up (points) against labeling to the end.\n",
                  *_table(["method", "trials", "κ at the last cycle", "κ", "uncertainty", "plateau"],
                          [[m, v["trials"], _fmt(v["kappa_last"], 1, 3)] +
                           [("never" if not v[c]["stopped"] else
                             f"{v[c]['stopped']}/{v['trials']}: {v[c]['labels_saved']:.0f} labels saved, "
                             f"{100 * v[c]['given_up']:+.2f} given up") for c in ("kappa", "uncertainty", "plateau")]
                           for m, v in r["stopping"].items()]), ""]

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
                  f"on at most {p['analysis_pool'] or 'all'} unlabeled samples per cycle; mean over trials."
                  + (" Segmentation, per image: the true loss is the per-pixel cross-entropy averaged over the "
                     "image's pixels, COD and EMAOD are summed over its pixels, entropy is its pixel mean; recall "
                     "and Spearman below rank images by these numbers.\n" if seg else "\n"),
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
        learning_curve({k: s[k] for k in ("cod", "emaod")}, out / "fig9_cod_vs_emaod.png", metric=key,
                       ylabel=f"test {name} (%)", title="Fig. 9: COD vs EMAOD sampling (task loss only)")
        lines += ["Sampling by COD against sampling by EMAOD, both trained on the task loss only:\n",
                  *(sentence(c) for c in r["paired"] if {c["a"], c["b"]} == {"cod", "emaod"}),
                  "\n![Fig. 9](fig9_cod_vs_emaod.png)\n"]
    fig10 = [k for k in ("cod", "cod+cyclic", "cod+semi") if k in s]
    if "cod+cyclic" in s:
        learning_curve({k: s[k] for k in fig10}, out / "fig10_unsupervised_loss.png", metric=key,
                       ylabel=f"test {name} (%)", title="Fig. 10: unsupervised loss (COD sampling)")
        lines += ["Fig. 10, the unsupervised loss, all sampling by COD: `cod` (task loss only), `cod+cyclic` (task "
                  "loss + λ·Eq. 7 against the previous cycle's model, the CyclicOD loss; the first cycle has no "
                  "previous model and trains on the task loss alone) and `cod+semi` (+ λ·Eq. 7 against the EMA "
                  "teacher, the EMAOD loss, Ours). The paper's LL4AL-loss entry is not a separate run here: the "
                  "`ll4al` run trains with that loss but also samples by it.\n",
                  *_table(["method", f"final {name} (%)", "AUBC (%)"],
                          [[k, _pm(s[k][f"final_{key}_mean"], s[k][f"final_{key}_std"], len(s[k]["seeds"])),
                            _pm(sum(s[k]["aubc_trials"]) / len(s[k]["aubc_trials"]), s[k]["aubc_std"],
                                len(s[k]["seeds"]))] for k in fig10]),
                  "",
                  *(sentence(c) for c in r["paired"] if {c["a"], c["b"]} <= set(fig10) and "cod+cyclic" in
                    (c["a"], c["b"])),
                  "\n![Fig. 10](fig10_unsupervised_loss.png)\n"]
    else:
        lines.append("Fig. 10 not run: no `cod+cyclic` run (the protocol's `fig9` is off).\n")

    # Fig. 12.
    if grid:
        lams = sorted({float(p["lam"])} | {float(x) for x in p["grid_lams"]})
        alphas = sorted({float(p["ema_decay"])} | {float(x) for x in p["grid_alphas"]})
        label = {(float(p["lam"]), float(p["ema_decay"])): "cod+semi"}
        label.update({(lam, a): f"cod+semi λ={lam:g} α={a:g}" for lam in lams for a in alphas
                      if f"cod+semi λ={lam:g} α={a:g}" in s})
        values = [[s[label[(lam, a)]][f"final_{key}_mean"] if (lam, a) in label else float("nan") for a in alphas]
                  for lam in lams]
        figures.grid_heatmap(lams, alphas, values, out / "fig12_lambda_alpha.png", f"Fig. 12: cod+semi, final {name}")
        lines += ["## Fig. 12: sensitivity to λ and α (cod+semi)\n",
                  *_table(["λ \\ α"] + [f"{a:g}" for a in alphas],
                          [[f"{lam:g}"] + [_pm(s[label[(lam, a)]][f"final_{key}_mean"],
                                               s[label[(lam, a)]][f"final_{key}_std"],
                                               len(s[label[(lam, a)]]["seeds"])) if (lam, a) in label else "-"
                                           for a in alphas] for lam in lams]),
                  f"\nFinal {name} (%), mean ± std over trials; the grid cells ran in the first {p['grid_trials']} "
                  "trial(s) only, so their comparisons with cod+semi are paired over that many.\n",
                  *(sentence(c) for c in r["paired"] if c["a"] in grid), "\n![Fig. 12](fig12_lambda_alpha.png)\n"]

    # Table 3.
    st = r["selection_time"]
    lines += ["## Table 3: selection time\n",
              f"Mean `select_time_s` of every selection of every trial (from each run's `metrics.jsonl`, measured "
              f"while it ran), and its ratio to one plain inference pass of the same model over "
              f"{st['pool_size']:,} samples (the mean unlabeled pool, or the scored subset where the protocol sets "
              f"`score_subset`), measured in {st.get('inference_from', 'this process')}: "
              f"{st['inference_pass_s']:.3f} s on {env['device']}. Runs measured on a busy or different machine "
              "inflate their ratio; the selections of reused runs were timed when they ran.\n",
              *_table(["method", "selections", "seconds, mean ± std", "x inference pass"],
                      [[k, v["selections"], f"{v['mean_s']:.3f} ± {v['std_s']:.3f}", f"{v['over_inference']:.2f}"]
                       for k, v in sorted(st["per_method"].items(), key=lambda kv: kv[1]["mean_s"])]), ""]

    # Fig. 11.
    if seg:
        lines += ["## Fig. 11: per-class accuracy across cycles\n",
                  "Skipped for segmentation: Fig. 11 is a classification figure; the per-class view here is "
                  "Table 2's per-class IoU above (every cycle's per-class IoU and pixel recall are in "
                  "`results.json`, `runs`).\n"]
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
