"""Lazy datasets (a file decoded per sample) read ahead by DataLoader workers: how much faster, measured.

    .venv/bin/python benchmarks/lazy_reading.py

5,000 Fashion-MNIST images written as PNG files once (to a temporary folder), read through a dataset
that has only `ds[i]` (PIL decodes the file: no `.batch`, so todal treats it as lazy). Timed, for 0, 1
and 2 reading workers (TODAL_READ_WORKERS): one inference pass over the 5,000 (`predict`, batch 256)
and one training epoch of the `cpu` protocol's CNN on 1,000 of them with the TOD loss on as many
unlabeled ones (batch 64). Each the best of 2; reported as ratios to 0 workers (reading in the training
process). The results are identical whatever the number of workers (tests/test_lazy_reading.py).
Writes benchmarks/lazy-reading/{results.json, README.md}.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from fashion_mnist_core import best_of  # noqa: E402  (benchmarks/ is on the path when run)
from todal import EMA, TrainConfig, fit, models
from todal.atomic import write_json, write_text
from todal.bench.suite import device_name
from todal.data import load_dataset
from todal.inference import predict
from todal.objectives import Eq7Consistency
from todal.tasks import Classification

OUT = Path(__file__).resolve().parent / "lazy-reading"
N, LABELED = 5000, 1000


class PngFolder:
    """ds[i] -> (x [1, 28, 28] float in [0, 1], y): one PNG decoded per call."""

    num_classes = 10
    name = "fashion-mnist-png"

    def __init__(self, root: Path, labels: list[int]):
        self.root, self.labels = root, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.root / f"{i:05d}.png") as im:
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]
        return x, self.labels[i]


def main() -> None:
    from PIL import Image

    train, _ = load_dataset("fashion-mnist")
    x, y = train.batch(torch.arange(N))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(N):  # written once, outside the timing
            Image.fromarray((x[i, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()).save(root / f"{i:05d}.png")
        ds = PngFolder(root, y.tolist())
        torch.manual_seed(0)
        model = models.get("small_cnn", in_channels=1, num_classes=10, width=0.5)
        rows = {}
        for workers in (0, 1, 2):
            os.environ["TODAL_READ_WORKERS"] = str(workers)

            def infer():
                for _ in predict(model, ds, torch.arange(N), batch_size=256):
                    pass

            def epoch():
                fit(model, Classification(10), ds, torch.arange(LABELED), cfg=TrainConfig(epochs=1, batch_size=64),
                    generator=torch.Generator().manual_seed(0), unlabeled=torch.arange(LABELED, 2 * LABELED),
                    ema=(ema := EMA(model, 0.999)), consistency=Eq7Consistency(ema.model, 0.05, reduction="mean",
                                                                              teacher_train_mode=False))

            rows[workers] = {"inference_s": best_of(infer, 2), "epoch_s": best_of(epoch, 2)}
            print(workers, rows[workers], flush=True)
    base = rows[0]
    cpu = device_name(torch.device("cpu"))
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "results.json", {"command": ".venv/bin/python benchmarks/lazy_reading.py", "cpu": cpu,
                                      "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                      "rows": rows})
    lines = ["# Lazy datasets read by DataLoader workers", "",
             f"Command: `.venv/bin/python benchmarks/lazy_reading.py` ({cpu}, {os.cpu_count()} cores, "
             f"{torch.get_num_threads()} torch threads). Setting in the script's docstring: 5,000 PNG files "
             "decoded per sample.", "",
             "| reading workers | inference pass (s) | ratio | training epoch (s) | ratio |", "|---|---|---|---|---|"]
    for w, r in rows.items():
        lines.append(f"| {w} | {r['inference_s']:.2f} | {r['inference_s'] / base['inference_s']:.2f} | "
                     f"{r['epoch_s']:.2f} | {r['epoch_s'] / base['epoch_s']:.2f} |")
    write_text(OUT / "README.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
