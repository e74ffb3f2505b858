"""Selection cost of every strategy on real Fashion-MNIST (the paper's Table 3, as ratios).

    .venv/bin/python benchmarks/strategy_cost.py                   # every strategy, CPU
    .venv/bin/python benchmarks/strategy_cost.py --device cuda     # the same on a GPU (adds a table)

Setting: the `cpu` protocol's small CNN (width 0.5) trained on 1,000 random labels (6 epochs give the
"previous cycle" model, 6 more the current one, an EMA teacher alongside); the remaining 59,000
images are the unlabeled pool; each strategy selects the protocol's budget of 500 with its default
options. Reported per strategy: selection seconds, the ratio to one plain inference pass over the same
pool (timed in the same process, best of 3), and the peak resident memory the selection added
(VmHWM, reset before each strategy), which shows whether a method's memory grows with N² (it must
not for Core-set). Strategies that train with the model (LL4AL, TA-VAAL) get their own copy of the
previous model trained 6 epochs with their objective first; that training is not timed. COD is timed
in its steady state, the previous cycle's outputs cached (filled, untimed, by scoring with the
previous model), as in the loop from the second cycle on.
Writes benchmarks/strategy-cost/{results.json, README.md}; timings are kept per device.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from todal import TrainConfig, fit, models, strategies
from todal.atomic import write_json, write_text
from todal.bench.suite import device_name
from todal.data import load_dataset
from todal.ema import EMA
from todal.inference import predict
from todal.strategies import Context
from todal.tasks import Classification

LABELED, BUDGET, EPOCHS = 1000, 500, 6
TRAIN = {"batch_size": 64, "lr": 0.05}


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategies", default="all", help="comma-separated names, or all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pool", type=int, default=None, help="score only this many unlabeled images (a quick check)")
    ap.add_argument("--out", default="benchmarks/strategy-cost")
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="only merge the results.json of these folders into --out")
    args = ap.parse_args(argv)
    if args.merge:
        write_report(Path(args.out), [json.loads((Path(d) / "results.json").read_text())["devices"] for d in args.merge])
        return
    command = "python benchmarks/strategy_cost.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = strategies.names() if args.strategies == "all" else args.strategies.split(",")
    for n in names:
        strategies.get(n)  # unknown names fail before any training

    train, _ = load_dataset("fashion-mnist")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(train), generator=g)
    labeled, unlabeled = perm[:LABELED].sort().values, perm[LABELED:][: args.pool].sort().values
    task = Classification(train.num_classes)
    cfg = TrainConfig(epochs=EPOCHS, **TRAIN)
    torch.manual_seed(0)
    previous = models.get("small_cnn", in_channels=train.in_channels, num_classes=train.num_classes, width=0.5)
    ema = EMA(previous)
    fit(previous, task, train, labeled, cfg=cfg, generator=torch.Generator().manual_seed(1), ema=ema, device=device)
    current = copy.deepcopy(previous)
    fit(current, task, train, labeled, cfg=cfg, generator=torch.Generator().manual_seed(2), ema=ema, device=device)

    def inference_pass():
        for _ in predict(current, train, unlabeled, batch_size=512, device=device):
            pass

    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        inference_pass()
        sync()
        times.append(time.perf_counter() - t0)
    t_inf = min(times)

    rows = {}
    for name in names:
        strategy = strategies.get(name)
        model = current
        if strategy.objectives():  # trains with the model: give it its own copy, trained with its objective
            model = copy.deepcopy(previous)
            fit(model, task, train, labeled, cfg=cfg, generator=torch.Generator().manual_seed(2),
                objectives=strategy.objectives(), device=device)
        ctx = Context(model=model, task=task, dataset=train, labeled=labeled, unlabeled=unlabeled,
                      labels=train.y[labeled], generator=torch.Generator().manual_seed(3), cycle=1,
                      device=device, batch_size=512, ema_model=ema.model, previous=lambda: copy.deepcopy(previous))
        if name == "cod":  # the steady state: the previous cycle's outputs are cached (not timed)
            strategy.score(Context(model=previous, task=task, dataset=train, labeled=labeled, unlabeled=unlabeled,
                                   labels=train.y[labeled], generator=torch.Generator().manual_seed(3), cycle=0,
                                   device=device, batch_size=512, previous=lambda: copy.deepcopy(previous)),
                           unlabeled)
        reset_peak_rss()
        base = peak_rss_mb()
        sync()
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4)
            chosen = strategy.select(ctx, BUDGET)
        sync()
        dt = time.perf_counter() - t0
        rows[name] = {"select_s": round(dt, 3), "over_inference": round(dt / t_inf, 2),
                      "inference_pass_s": round(t_inf, 3),
                      "peak_rss_added_mb": round(peak_rss_mb() - base, 1), "selected": len(chosen)}
        print(f"{name:<18} {dt:9.2f} s  {dt / t_inf:8.2f} x inference  +{rows[name]['peak_rss_added_mb']:.0f} MB",
              flush=True)
        # written after every strategy, so an interrupted measurement keeps what it measured
        write_report(Path(args.out), [{device_name(device): {
            "commands": [command], "pool_size": len(unlabeled), "budget": BUDGET, "torch": torch.__version__,
            "strategies": {name: rows[name]}}}])


def merge(devices: dict, new: dict) -> dict:
    """Add `new` per-device results to `devices`: strategies measured again replace the old rows."""
    out = dict(devices)
    for dev, d in new.items():
        old = out.get(dev, {})
        commands = old.get("commands", []) + [c for c in d["commands"] if c not in old.get("commands", [])]
        out[dev] = {**d, "commands": commands, "strategies": {**old.get("strategies", {}), **d["strategies"]}}
    return out


def write_report(out: Path, parts: list[dict]) -> None:
    old = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    devices = old.get("devices", {})
    for part in parts:
        devices = merge(devices, part)
    write_json(out / "results.json", {"setting": __doc__.split("\n\n")[2].strip(), "devices": devices})
    lines = ["# Selection cost per strategy (Fashion-MNIST, small CNN, `cpu` protocol)\n",
             __doc__.split("\n\n")[2].strip() + "\n",
             "The paper's Table 3 (CIFAR-10, 1080Ti): Core-set 91.4 s, VAAL 13.0 s, LL4AL 7.7 s, COD 7.2 s.\n"]
    for dev, d in devices.items():
        commands = "; ".join(f"`{c}`" for c in d["commands"])
        lines += [f"## {dev}\n", f"Commands: {commands} (torch {d['torch']}); pool of {d['pool_size']:,} images, "
                  f"budget {d['budget']}. Each ratio divides by an inference pass timed in the same process.\n",
                  "| strategy | selection (s) | one inference pass (s) | ÷ one inference pass | peak memory added (MB) |",
                  "|---|---|---|---|---|"]
        for name, r in sorted(d["strategies"].items(), key=lambda kv: kv[1]["over_inference"]):
            lines.append(f"| {name} | {r['select_s']:.2f} | {r['inference_pass_s']:.2f} | {r['over_inference']:.2f} | "
                         f"{r['peak_rss_added_mb']:.0f} |")
        lines.append("")
    write_text(out / "README.md", "\n".join(lines))


if __name__ == "__main__":
    main()
