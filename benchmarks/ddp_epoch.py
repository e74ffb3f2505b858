"""One process against two on this machine's 2 cores: the time of a training epoch under torchrun (gloo).

    .venv/bin/python benchmarks/ddp_epoch.py

The `cpu` protocol's setting: Fashion-MNIST, `small_cnn` width 0.5, 2,000 labeled images, batch 64, the TOD
loss on as many unlabeled ones (one unlabeled batch per labeled batch). Three configurations, each a fresh
process group running `fit` for 3 epochs (the first is dropped as warm-up; the time is the mean of the other
two): 1 process with 2 threads, 1 process with 1 thread, 2 processes with 1 thread each (torchrun,
gloo on localhost). Reported as ratios to the 1-process, 2-thread time. Writes
benchmarks/ddp-epoch/{results.json, README.md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "ddp-epoch"
LABELED, EPOCHS = 2000, 3


def child() -> None:
    import torch

    from todal import EMA, TrainConfig, distributed, fit, models
    from todal.objectives import Eq7Consistency
    from todal.data import load_dataset
    from todal.tasks import Classification

    distributed.init_from_env()
    train, _ = load_dataset("fashion-mnist")
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=g)
    labeled, unlabeled = order[:LABELED], order[LABELED:2 * LABELED]
    torch.manual_seed(0)
    model = models.get("small_cnn", in_channels=1, num_classes=10, width=0.5)
    ema = EMA(model, 0.999)
    times = []
    for epoch in range(EPOCHS):
        t0 = time.perf_counter()
        fit(model, Classification(10), train, labeled, cfg=TrainConfig(epochs=1, batch_size=64, lr=0.05),
            generator=torch.Generator().manual_seed(epoch), unlabeled=unlabeled, ema=ema,
            consistency=Eq7Consistency(ema.model, 0.05, reduction="mean", teacher_train_mode=False))
        distributed.barrier()
        times.append(time.perf_counter() - t0)
    if distributed.is_main():
        print("RESULT " + json.dumps({"epoch_s": times, "world": distributed.world_size(),
                                      "threads": torch.get_num_threads()}), flush=True)


def run(world: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port", "29533"]
           if world > 1 else [sys.executable]) + [__file__, "--child"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        raise SystemExit(p.stderr[-3000:])
    r = json.loads(line[0][7:])
    r["mean_epoch_s"] = sum(r["epoch_s"][1:]) / (len(r["epoch_s"]) - 1)
    return r


def main() -> None:
    if "--child" in sys.argv:
        child()
        return
    import torch

    from todal.atomic import write_json, write_text
    from todal.bench.suite import device_name

    configs = {"1 process, 2 threads": (1, 2), "1 process, 1 thread": (1, 1), "2 processes, 1 thread each": (2, 1)}
    rows = {}
    for name, (world, threads) in configs.items():
        rows[name] = run(world, threads)
        print(name, rows[name], flush=True)
    base = rows["1 process, 2 threads"]["mean_epoch_s"]
    cpu = device_name(torch.device("cpu"))
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "results.json", {"command": ".venv/bin/python benchmarks/ddp_epoch.py", "cpu": cpu,
                                      "cores": os.cpu_count(), "torch": torch.__version__, "rows": rows})
    lines = ["# One process against two: epoch time (gloo, this machine)", "",
             f"Command: `.venv/bin/python benchmarks/ddp_epoch.py` ({cpu}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}). Setting in the script's docstring: the `cpu` protocol's CNN, 2,000 labels, "
             "the TOD loss on; the mean of epochs 2-3.", "",
             "| configuration | epoch (s) | ratio to 1 process, 2 threads |", "|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['mean_epoch_s']:.2f} | {r['mean_epoch_s'] / base:.2f} |")
    write_text(OUT / "README.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
