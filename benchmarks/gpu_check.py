"""The GPU path, measured in one short run (issues 13 and 14): for the `device` tool's minutes.

    .venv/bin/python benchmarks/gpu_check.py --data-root data/fashion-mnist          # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --quick                                 # a dry run on a CPU

Three parts, each written to OUT/results.json as soon as it is done (a run cut short keeps what it measured):
1. throughput: ResNet-18 on 32x32x3 images (random uint8, in memory), training images/s through `todal.fit`
   (one epoch after a warm-up epoch) as fp32, bf16 + channels_last (the CUDA default) and that compiled;
   inference images/s through `todal.inference.predict` (fp32, what scoring runs) and a bf16 + channels_last
   forward for comparison.
2. one cycle of the `cpu` protocol (small_cnn width 0.5, 10 epochs, 500 labels + 250, the pool of
   Fashion-MNIST's 60,000) for cod + TOD loss: training and selection seconds.
3. the `paper` protocol's first two cycles on Fashion-MNIST with ResNet-18 (200 epochs, 10% + 5%), random and
   cod + TOD loss, 1 trial, as far as `--budget-s` allows: seconds a cycle and the accuracy.

Writes OUT/results.json (default benchmarks/gpu-check/) with the device's name.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from todal import ActiveLoop, TrainConfig, fit, models
from todal.atomic import write_json
from todal.data import ArrayDataset
from todal.inference import predict
from todal.models import ModelSource
from todal.tasks import Classification

OUT = Path(__file__).resolve().parent / "gpu-check"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(device: torch.device, n: int, batch: int) -> dict:
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (n,), generator=g), num_classes=10, mean=0.5, std=0.25, crop_padding=4,
                        hflip=True)
    rows = {}
    for label, opts in (("fp32", {"precision": "fp32", "channels_last": False}),
                        ("bf16+channels_last", {"precision": "bf16", "channels_last": True}),
                        ("bf16+channels_last+compile", {"precision": "bf16", "channels_last": True, "compile": True})):
        if label.endswith("compile") and device.type != "cuda":
            continue
        torch.manual_seed(0)
        model = models.get("resnet18", in_channels=3, num_classes=10)
        cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.1, **opts)
        try:
            fit(model, Classification(10), data, torch.arange(n), cfg=cfg, generator=torch.Generator().manual_seed(0),
                device=device)  # warm-up (and compilation)
            sync(device)
            t0 = time.perf_counter()
            stats = fit(model, Classification(10), data, torch.arange(n), cfg=cfg,
                        generator=torch.Generator().manual_seed(1), device=device)
            sync(device)
            rows[f"train {label}"] = {"images_per_s": round(n / (time.perf_counter() - t0)), "loss": stats["loss"]}
        except Exception as e:  # noqa: BLE001 - a failing configuration is a result too
            rows[f"train {label}"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    model = models.get("resnet18", in_channels=3, num_classes=10).to(device)
    for _ in predict(model, data, torch.arange(batch), batch_size=batch, device=device):
        pass
    sync(device)
    t0 = time.perf_counter()
    for _ in predict(model, data, torch.arange(n), batch_size=batch, device=device):
        pass
    sync(device)
    rows["inference fp32 (predict)"] = {"images_per_s": round(n / (time.perf_counter() - t0))}
    x = data.x[:batch].float().div(255).to(device).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last).eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        model(x)
        sync(device)
        t0 = time.perf_counter()
        reps = max(1, n // batch)
        for _ in range(reps):
            model(x)
        sync(device)
    rows["inference bf16+channels_last (forward only)"] = {"images_per_s": round(reps * batch / (time.perf_counter() - t0))}
    return rows


def cycles(device: torch.device, root: str | None, strategy: str, semi: bool, *, model: str, options: dict,
           train: dict, initial, budget, n_cycles: int, score_subset: int | None, workdir: Path,
           quick: bool) -> dict:
    from todal.data import read_fashion_mnist

    train_set, test_set = read_fashion_mnist(root, download=False)
    if quick:  # the same path at a size a CPU runs in seconds
        train_set, test_set = train_set.subset(torch.arange(3000)), test_set.subset(torch.arange(300))
    loop = ActiveLoop(ModelSource(model, options), train_set, test_set, strategy=strategy, semi_supervised=semi, initial=initial,
                      budget=budget, cycles=n_cycles, train=train,
                      flavor={"name": "default", **({"score_subset": score_subset} if score_subset else {})},
                      device=device, workdir=workdir, seed=0)
    t0 = time.perf_counter()
    records = loop.run()
    keep = ("cycle", "labeled", "accuracy", "train_time_s", "select_time_s", "train_steps")
    return {"wall_s": round(time.perf_counter() - t0, 1), "records": [{k: r.get(k) for k in keep} for r in records]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=None, help="folder of Fashion-MNIST's four IDX files")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script on a CPU")
    ap.add_argument("--budget-s", type=float, default=480, help="skip part 3's runs once this much time is spent")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    work = out / "runs"
    start = time.perf_counter()
    res = {"command": "benchmarks/gpu_check.py" + (" --quick" if args.quick else ""), "device": device_name(device),
           "torch": torch.__version__, "quick": args.quick, "parts": {}}

    def save():
        write_json(out / "results.json", res)

    n, batch = (256, 64) if args.quick else (25600, 256)
    res["parts"]["throughput"] = throughput(device, n, batch)
    save()
    q = args.quick
    res["parts"]["cpu protocol, cod+semi, cycles 0-1"] = cycles(
        device, args.data_root, "cod", True, model="small_cnn", options={"width": 0.5},
        train={"epochs": 1 if q else 10, "batch_size": 64, "lr": 0.05}, initial=100 if q else 500,
        budget=50 if q else 250, n_cycles=2, score_subset=500 if q else 10000, workdir=work / "cpu-cod+semi",
        quick=q)
    save()
    for strategy, semi in (("random", False), ("cod", True)):
        label = f"paper protocol, resnet18, {strategy}{'+semi' if semi else ''}, cycles 0-1"
        if time.perf_counter() - start > args.budget_s:
            res["parts"][label] = {"skipped": f"past --budget-s {args.budget_s:g}"}
            continue
        res["parts"][label] = cycles(
            device, args.data_root, strategy, semi, model="resnet18", options={},
            train={"epochs": 1 if q else 200, "batch_size": 128, "lr": 0.1}, initial=0.1, budget=0.05,
            n_cycles=2, score_subset=None, workdir=work / f"paper-{strategy}", quick=q)
        save()
    res["total_s"] = round(time.perf_counter() - start, 1)
    save()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
