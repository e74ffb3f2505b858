"""A labeling project's step over 10^5 images with a frozen backbone, on the CPU: how long, and where it goes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frozen_step.py [--images 100000] [--steps 3]

Why (issue 21): with a frozen backbone every image is embedded once into a memory-mapped cache and each step
trains only a small head, so a step over 10^5 images should take seconds on a CPU, not the hours a
fine-tuned backbone would.

What: 10^5 PNGs (Fashion-MNIST's 70,000 train and test images, and 30,000 of them shifted by one pixel to make
up the count) in a project whose model is `hf:DIR --frozen`: a transformers ResNet (the transfer benchmark's
architecture: 4 stages of 32-256 channels, ~1.2M parameters, random weights, a `preprocessor_config.json` of
side 32, so inputs are RGB at 32 px). A simulated annotator labels every queued image with its true class.
Step 1 builds the embedding cache; the steps after read it. For each step and strategy: wall time of
`Project.step`, split into embedding, training (the head, 15 epochs over the labels) and scoring the 10^5
unlabeled images. Then `init` is run again with the same model (the cache must be reused, not rebuilt).

Writes benchmarks/frozen-step/{results.json, README.md}. The project and PNGs live in --work (not committed).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "frozen-step"
CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
TRAIN = {"epochs": 15, "batch_size": 64, "lr": 0.05}


def write_pool(work: Path, n: int) -> dict[str, int]:
    """n PNGs under work/pool (written once) and their true classes by relative path."""
    from PIL import Image

    from todal.data import load_dataset

    train, test = load_dataset("fashion-mnist")
    x = torch.cat([train.x[:, 0], test.x[:, 0]]).numpy()
    y = torch.cat([train.y, test.y]).numpy()
    extra = n - len(x)
    if extra > 0:  # make up the count: images shifted one pixel right
        x = np.concatenate([x, np.roll(x[:extra], 1, axis=2)])
        y = np.concatenate([y, y[:extra]])
    truth = {}
    for i in range(n):
        rel = f"{i // 1000:03d}/{i:06d}.png"
        path = work / "pool" / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(path)
        truth[rel] = int(y[i])
    return truth


def backbone_dir(work: Path) -> Path:
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from transfer import resnet_config

    d = work / "backbone"
    if not (d / "config.json").exists():
        torch.manual_seed(0)
        transformers.ResNetModel(resnet_config()).save_pretrained(d)
        (d / "preprocessor_config.json").write_text(json.dumps(
            {"size": {"shortest_edge": 32}, "image_mean": [0.5] * 3, "image_std": [0.25] * 3, "do_normalize": True}))
    return d


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--strategies", default="cod,margin,coreset")
    ap.add_argument("--work", default="/tmp/todal-frozen-step")
    args = ap.parse_args(argv)
    from todal.project.core import Project

    work = Path(args.work)
    t0 = time.perf_counter()
    truth = write_pool(work, args.images)
    t_write = time.perf_counter() - t0
    model = f"hf:{backbone_dir(work)}"
    rows = []
    for strategy in args.strategies.split(","):
        root = work / f"project-{strategy}"
        t0 = time.perf_counter()
        project, _ = Project.init(root, work / "pool", CLASSES, model=model, frozen=True, seed=0, train=TRAIN)
        t_init = time.perf_counter() - t0
        for s in range(1, args.steps + 1):
            queued = project.store.queued()
            project.store.add_labels([{"sample": it.sample, "class": truth[it.path], "annotator": "sim"}
                                      for it in queued], source="sim")
            t0 = time.perf_counter()
            m = project.step(budget=100, strategy=strategy)
            wall = time.perf_counter() - t0
            rows.append({"strategy": strategy, "step": s, "labels": m["labeled"], "wall_s": round(wall, 2),
                         "embed_time_s": m.get("embed_time_s", 0.0), "train_time_s": m["train_time_s"],
                         "score_time_s": m["score_time_s"], "init_s": round(t_init, 1)})
            print(json.dumps(rows[-1]), flush=True)
    t0 = time.perf_counter()
    again, _ = Project.init(work / f"project-{args.strategies.split(',')[0]}", work / "pool", CLASSES, model=model,
                            frozen=True, seed=0, train=TRAIN)
    m = again.step(budget=100, strategy="random")
    reinit = {"init_and_step_s": round(time.perf_counter() - t0, 2), "embed_time_s": m.get("embed_time_s", 0.0)}
    later = [r for r in rows if r["step"] > 1]
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frozen_step.py" + (" " + " ".join(argv) if argv else ""),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "images": args.images, "png_write_s": round(t_write, 1), "steps": rows, "reinit_same_model": reinit,
        "later_step_wall_s": {"min": min(r["wall_s"] for r in later), "max": max(r["wall_s"] for r in later)}
        if later else None,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# A project step over 10^5 images with a frozen backbone (CPU)", "",
        f"Command: `{result['command']}` ({result['machine']}).", "",
        f"{args.images:,} Fashion-MNIST PNGs in a labeling project, model `hf:DIR --frozen` (a transformers ResNet "
        "of ~1.2M parameters, random weights, RGB at 32 px); 100 labels a step from a simulated annotator; the head "
        f"trains {TRAIN['epochs']} epochs. Step 1 embeds every image into the memory-mapped cache; the steps after "
        "read it. Seconds:", "",
        "| strategy | step | labels | step wall | embedding | training | scoring | the rest |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rest = r["wall_s"] - r["embed_time_s"] - r["train_time_s"] - r["score_time_s"]
        lines.append(f"| {r['strategy']} | {r['step']} | {r['labels']} | {r['wall_s']:.1f} | {r['embed_time_s']:.1f} | "
                     f"{r['train_time_s']:.1f} | {r['score_time_s']:.1f} | {rest:.1f} |")
    lines += ["", "The rest: evaluating on the validation labels, the stopping signals on the stop set, the queue "
              "written to the store."]
    if later:
        lines += ["", f"Once the cache exists a step over {args.images:,} images takes "
                  f"{result['later_step_wall_s']['min']:.1f}-{result['later_step_wall_s']['max']:.1f} s. `init` again "
                  f"with the same model and a step: {reinit['init_and_step_s']:.1f} s, of it embedding "
                  f"{reinit['embed_time_s']:.1f} s (the cache is reused)."]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
