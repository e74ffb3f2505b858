"""Why does COD's lowest-first pick help classification and hurt segmentation? The first selection, measured.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segmentation_first_cycle.py [--trials 0,1,2]

Why (issue 24): for COD without the TOD loss, the default flavor differs from the paper's only in
`first_cycle_lowest`; on fashion-mnist-scenes the default's COD ended below random while the paper flavor's was
the best arm. In the first cycle COD compares the trained model with its untrained initial weights.

What: for each trial, the `cpu` protocol's first cycle on fashion-mnist-scenes (the bench's own run setup,
`runner.make_loop`, one cycle), then on every unlabeled scene: COD (summed over pixels, the default), the
true per-pixel loss, and the share of the scene's pixels that are items (not background). Reported: Spearman of
COD with the loss and with the item share; the mean loss and item share of the 50 scenes the lowest and the
highest COD would pick, against the pool's. The same for classification (Fashion-MNIST, `cpu` protocol): COD
with the loss, and the loss of the lowest and highest picks.

Writes benchmarks/segmentation-first-cycle/{results.json, README.md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "segmentation-first-cycle"


def first_cycle(dataset: str, trial: int, work: Path) -> dict:
    from todal.bench.analysis import spearman
    from todal.bench.runner import Method, make_loop
    from todal.bench.suite import load_for
    from todal.discrepancy import discrepancy, to_space
    from todal.inference import eval_mode, fetch, test_transform

    p, train, test = load_for("cpu", dataset, ["cycles=1"])
    loop = make_loop(p, Method("cod"), trial, train, test, work)
    loop.run()
    model, reference = loop.model(0), loop.reference(0)
    pool = loop.pool()
    idx = pool.unlabeled
    if len(idx) > 3000:
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(trial))[:3000]].sort().values
    cod, loss, items = [], [], []
    transform = test_transform(loop.data[0])
    with torch.no_grad(), eval_mode(model, reference):
        for chunk in idx.split(256):
            x, y = fetch(loop.data[0], chunk)
            xt = transform(x)
            a, b = model(xt).float(), reference(xt).float()
            cod.append(discrepancy(to_space(a, "probs"), to_space(b, "probs"), measure=loop.flavor.measure,
                                   task=loop.task))
            loss.append(loop.task.per_sample_loss(a, y))
            if y.dim() > 1:
                valid = y != 255
                items.append(((y > 0) & valid).flatten(1).float().sum(1) / valid.flatten(1).sum(1).clamp_min(1))
    cod, loss = torch.cat(cod), torch.cat(loss)
    k = 50
    low, high = torch.argsort(cod)[:k], torch.argsort(cod, descending=True)[:k]
    out = {"trial": trial, "pool": len(idx), "spearman_cod_loss": spearman(cod, loss),
           "loss_pool": float(loss.mean()), "loss_lowest": float(loss[low].mean()), "loss_highest": float(loss[high].mean())}
    if items:
        items = torch.cat(items)
        out.update(spearman_cod_items=spearman(cod, items), items_pool=float(items.mean()),
                   items_lowest=float(items[low].mean()), items_highest=float(items[high].mean()),
                   spearman_loss_items=spearman(loss, items))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", default="0,1,2")
    args = ap.parse_args(argv)
    trials = [int(t) for t in args.trials.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in ("fashion-mnist-scenes", "fashion-mnist"):
            rows[dataset] = [first_cycle(dataset, t, Path(tmp) / dataset) for t in trials]
            print(dataset, rows[dataset], flush=True)

    def mean(dataset, key):
        vals = [r[key] for r in rows[dataset] if key in r]
        return statistics.fmean(vals) if vals else None

    result = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segmentation_first_cycle.py"
                         + (f" --trials {args.trials}" if args.trials != "0,1,2" else ""), "trials": trials, "rows": rows,
              "mean": {d: {k: mean(d, k) for k in rows[d][0] if k != "trial"} for d in rows}}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["mean"]
    seg, cls = m["fashion-mnist-scenes"], m["fashion-mnist"]
    (OUT / "README.md").write_text(
        "# COD's first selection on segmentation and on classification\n\n"
        f"Command: `{result['command']}`. Raw numbers per trial: `results.json`.\n\n"
        "The `cpu` protocol's first cycle (the bench's own setup, one cycle), then COD of every unlabeled sample "
        "(at most 3,000) against the untrained initial model, as the first selection scores it; means over "
        f"{len(trials)} trials. The lowest and highest 50 are what `first_cycle_lowest` True and False pick.\n\n"
        "| | segmentation (fashion-mnist-scenes) | classification (fashion-mnist) |\n|---|---|---|\n"
        f"| Spearman(COD, true loss) | {seg['spearman_cod_loss']:+.3f} | {cls['spearman_cod_loss']:+.3f} |\n"
        f"| mean loss: pool | {seg['loss_pool']:.3f} | {cls['loss_pool']:.3f} |\n"
        f"| mean loss: the 50 lowest COD | {seg['loss_lowest']:.3f} | {cls['loss_lowest']:.3f} |\n"
        f"| mean loss: the 50 highest COD | {seg['loss_highest']:.3f} | {cls['loss_highest']:.3f} |\n"
        f"| Spearman(COD, share of item pixels) | {seg['spearman_cod_items']:+.3f} | - |\n"
        f"| share of item pixels: pool / 50 lowest / 50 highest | {100 * seg['items_pool']:.1f}% / "
        f"{100 * seg['items_lowest']:.1f}% / {100 * seg['items_highest']:.1f}% | - |\n"
        f"| Spearman(true loss, share of item pixels) | {seg['spearman_loss_items']:+.3f} | - |\n")
    print((OUT / "README.md").read_text())
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
