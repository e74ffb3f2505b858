"""What a semi-supervised training step costs against a plain one, and where the time goes (issue 14 item 5).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/semi_step_cost.py

A step of `fit()` with the TOD loss does, beyond a plain step: fetch and augment an unlabeled batch, run the
teacher on it (no grad), run the student on it with gradients (a second forward and backward), and move the
EMA teacher. So it should cost about 2x a plain step, plus the teacher's forward. The segmentation bench's
per-cycle training times suggested 3-7x. This measures both kinds of step in one process, interleaved
(plain, semi, plain, semi, ...; median of `--repeats`), on the bench's segmentation setting
(fashion-mnist-scenes, seg_cnn width 0.5, batch 32, Adam) and its classification one (Fashion-MNIST,
small_cnn width 0.5, batch 64, SGD), and times each component of a step alone. Writes
benchmarks/semi-step-cost/{results.json, README.md}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from todal import models
from todal.atomic import write_json, write_text
from todal.bench.suite import device_name
from todal.data import load_dataset
from todal.ema import EMA
from todal.inference import fetch
from todal.objectives import Eq7Consistency, tod_consistency
from todal.tasks import get_task
from todal.train import TrainConfig, fit

OUT = Path(__file__).resolve().parent / "semi-step-cost"
SETTINGS = {
    "segmentation": dict(dataset="fashion-mnist-scenes", kwargs={"size": 2000, "test_size": 100}, model="seg_cnn",
                         task="segmentation", cfg=dict(batch_size=32, lr=1e-3, optimizer="adam", weight_decay=0.0,
                                                       lr_drop_at=1.0)),
    "classification": dict(dataset="fashion-mnist", kwargs={}, model="small_cnn", task="classification",
                           cfg=dict(batch_size=64, lr=0.05)),
}


def per_step(train, task, model_name, cfg, semi: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = models.get(model_name, in_channels=train.in_channels, num_classes=train.num_classes, width=0.5)
    ema = EMA(model, 0.999) if semi else None
    labeled = torch.arange(steps * cfg.batch_size)
    unlabeled = torch.arange(len(labeled), min(len(train), len(labeled) + 2000))
    t0 = time.perf_counter()
    stats = fit(model, task, train, labeled, cfg=cfg, generator=torch.Generator().manual_seed(0),
                unlabeled=unlabeled if semi else None, ema=ema,
                consistency=Eq7Consistency(ema.model, reduction="sum", teacher_train_mode=False) if semi else None)
    return (time.perf_counter() - t0) / stats["steps"]


def components(train, task, model_name, cfg, repeats: int) -> dict:
    """Seconds of each part of a step, alone (median of `repeats`)."""
    from todal.inference import train_transform

    g = torch.Generator().manual_seed(0)
    model = models.get(model_name, in_channels=train.in_channels, num_classes=train.num_classes, width=0.5).train()
    ema = EMA(model, 0.999)
    idx = torch.randperm(len(train), generator=g)[: cfg.batch_size]
    pair = getattr(train, "train_pair_transform", None)
    aug = (lambda x, y: pair(x, y, g)) if pair else (lambda x, y: (train_transform(train)(x, g), y))
    x, y = aug(*fetch(train, idx))

    def timed(fn):
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        task.loss(model(x), y).backward()

    def teacher_fwd():
        with torch.no_grad():
            ema.model(x)

    def consistency_fwd_bwd():
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            t = ema.model(x)
        tod_consistency(model(x), t, "sum").backward()

    return {"fetch_batch_s": timed(lambda: fetch(train, idx)), "augment_s": timed(lambda: aug(*fetch(train, idx))),
            "student_forward_backward_s": timed(fwd_bwd), "teacher_forward_s": timed(teacher_fwd),
            "tod_loss_forward_backward_with_teacher_s": timed(consistency_fwd_bwd),
            "ema_update_s": timed(lambda: ema.update(model))}


def bench_spread(runs: Path) -> dict:
    """ms per training step in the segmentation bench's runs (two bench processes shared the 2 cores):
    min / median / max over every cycle of every trial, plain methods against TOD-loss ones."""
    import json

    steps = {"plain": [], "semi": []}
    for d in sorted(runs.glob("*-trial*")):
        kind = "semi" if "+semi" in d.name else "plain" if "+" not in d.name else None
        if kind is None or not (d / "metrics.jsonl").exists():
            continue
        for line in (d / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            steps[kind].append(1000 * r["train_time_s"] / r["train_steps"])
    return {k: {"min": min(v), "median": statistics.median(v), "max": max(v), "n": len(v)} for k, v in steps.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per timed fit()")
    args = ap.parse_args()
    results = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/semi_step_cost.py",
               "device": device_name(torch.device("cpu")), "repeats": args.repeats, "settings": {}}
    for name, s in SETTINGS.items():
        train, _ = load_dataset(s["dataset"], **s["kwargs"])
        task = get_task(s["task"], train.num_classes)
        cfg = TrainConfig(epochs=1, **s["cfg"])
        per_step(train, task, s["model"], cfg, True, 2)  # warm-up
        plain, semi = [], []
        for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
            plain.append(per_step(train, task, s["model"], cfg, False, args.steps))
            semi.append(per_step(train, task, s["model"], cfg, True, args.steps))
        p, q = statistics.median(plain), statistics.median(semi)
        parts = components(train, task, s["model"], cfg, args.repeats * 3)
        expected = (p + parts["fetch_batch_s"] + parts["augment_s"] + parts["tod_loss_forward_backward_with_teacher_s"]
                    + parts["ema_update_s"])
        results["settings"][name] = {
            "dataset": s["dataset"], "model": s["model"], **s["cfg"], "plain_step_s": p, "semi_step_s": q,
            "ratio": q / p, "plain_step_runs_s": plain, "semi_step_runs_s": semi, "components": parts,
            "expected_semi_step_s": expected, "expected_ratio": expected / p}
        print(name, f"plain {p * 1000:.1f} ms, semi {q * 1000:.1f} ms, ratio {q / p:.2f} (expected {expected / p:.2f})",
              flush=True)
    results["segmentation_bench_ms_per_step"] = bench_spread(OUT.parent / "fashion-mnist-scenes-cpu" / "runs")
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "results.json", results)
    write_text(OUT / "README.md", readme(results))


def readme(r: dict) -> str:
    lines = ["# The cost of a semi-supervised step\n",
             f"Command: `{r['command']}` ({r['device']}); median of {r['repeats']} interleaved timings. Raw: "
             "`results.json`.\n",
             "| setting | plain step (ms) | semi step (ms) | ratio | expected from the parts | student fwd+bwd (ms) | "
             "teacher fwd (ms) | TOD loss: teacher fwd + student fwd+bwd (ms) | fetch + augment (ms) | EMA update (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in r["settings"].items():
        c = s["components"]
        lines.append(f"| {name} ({s['dataset']}, {s['model']}, batch {s['batch_size']}) | {1000 * s['plain_step_s']:.1f} | "
                     f"{1000 * s['semi_step_s']:.1f} | {s['ratio']:.2f}x | {s['expected_ratio']:.2f}x | "
                     f"{1000 * c['student_forward_backward_s']:.1f} | {1000 * c['teacher_forward_s']:.1f} | "
                     f"{1000 * c['tod_loss_forward_backward_with_teacher_s']:.1f} | "
                     f"{1000 * c['augment_s']:.1f} | {1000 * c['ema_update_s']:.2f} |")
    lines += ["", "A semi step adds one student forward and backward, one teacher forward, one batch fetched and "
              "augmented and one EMA update to a plain step; 'expected' adds the parts, each timed alone, to the "
              "measured plain step. Both ratios are measured in one process with the two kinds of step "
              "interleaved, so load on the machine affects both alike.", ""]
    b = r.get("segmentation_bench_ms_per_step")
    if b:
        lines += ["Where the 3-7x came from: the segmentation bench's runs (`../fashion-mnist-scenes-cpu/runs`, two bench "
                  "processes sharing the 2 cores) timed whole cycles under changing load. Milliseconds per training step "
                  "there, over every cycle of every trial:", "",
                  "| steps | n | min | median | max |", "|---|---|---|---|---|"]
        for k in ("plain", "semi"):
            if k in b:
                lines.append(f"| {k} ({'task loss only' if k == 'plain' else 'with the TOD loss'}) | {b[k]['n']} | "
                             f"{b[k]['min']:.0f} | {b[k]['median']:.0f} | {b[k]['max']:.0f} |")
        lines += ["", "The same plain step took from the min to the max above in that bench: the load, not the step, "
                  "made the spread. The ratio of the medians is close to the one measured here; a semi cycle "
                  "against the fastest plain one reads as 3-7x.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
