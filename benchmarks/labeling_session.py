"""A labeling session on real data, end to end: Fashion-MNIST written out as PNG files, labeled by
simulated people through the labeling server, trained and queued by `todal step`.

    .venv/bin/python benchmarks/labeling_session.py --out benchmarks/labeling-session

Measures (written to OUT/results.json and OUT/README.md):
- `todal init` on the PNG folder: seconds, images per second (hash + decode into the uint8 cache);
- the label-submit latency of the server (`POST /api/label`, p50 / p99 / max) under 8 concurrent clients,
  each leasing 5 images at a time and answering with the true class;
- each `todal step`: seconds of training, validation, scoring and queueing, the holdout accuracy with its
  95% interval, and the accuracy of the same model on Fashion-MNIST's real 10,000-image test set
  (what the holdout estimate is meant to predict);
- scoring a folder pool: images per second of one inference pass over all images from the project's
  cache, against the in-memory Fashion-MNIST reader on the same images with the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from todal.atomic import write_json, write_text
from todal.data import load_dataset
from todal.inference import predict
from todal.project.core import Project
from todal.tasks import get_task
from todal.train import evaluate

CLIENTS = 8


def write_pngs(x: np.ndarray, root: Path) -> float:
    from PIL import Image

    t0 = time.perf_counter()
    for i in range(len(x)):
        folder = root / f"part{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(folder / f"{i:05d}.png")
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label_queue(url: str, truth: dict[str, str]) -> dict:
    """8 clients lease and label until the queue is empty; returns the label-submit latencies."""
    import httpx

    latencies, lock, errors = [], threading.Lock(), []

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while True:
                items = c.post("/api/next", json={"annotator": f"person{k}", "n": 5}).json()["items"]
                if not items:
                    return
                for it in items:
                    body = {"sample": it["sample"], "class": truth[it["path"]], "annotator": f"person{k}",
                            "request": str(uuid.uuid4())}
                    t0 = time.perf_counter()
                    r = c.post("/api/label", json=body)
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
                        if r.status_code != 200:
                            errors.append(r.text)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000
    return {"labels": len(ms), "errors": len(errors), "wall_s": round(wall, 2),
            "labels_per_s": round(len(ms) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/labeling-session")
    ap.add_argument("--work", default="/tmp/todal-labeling-session", help="scratch folder for the PNGs and project")
    ap.add_argument("--n", type=int, default=60000, help="images written out (Fashion-MNIST train has 60,000)")
    ap.add_argument("--seed-batch", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--render", action="store_true", help="only rewrite OUT/README.md from OUT/results.json")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    if args.render:
        write_text(out / "README.md", render(json.loads((out / "results.json").read_text())))
        return
    shutil.rmtree(work, ignore_errors=True)
    train, test = load_dataset("fashion-mnist")
    n = min(args.n, len(train))
    x = train.x[:n, 0].numpy()
    truth_idx = train.y[:n].numpy()
    res = {"command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]), "images": n, "clients": CLIENTS,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
           "torch_threads": torch.get_num_threads()}
    res["write_png_s"] = round(write_pngs(x, work / "images"), 2)
    classes = [c.replace("/", "-") for c in train.classes]  # a class name is a folder name in exports
    truth = {f"part{i // 1000:03d}/{i:05d}.png": classes[int(truth_idx[i])] for i in range(n)}

    t0 = time.perf_counter()
    project, report = Project.init(work / "project", work / "images", classes, size=28, seed_batch=args.seed_batch,
                                   model_options={"width": 0.5},
                                   train={"epochs": args.epochs, "batch_size": 64, "lr": 0.05})
    init_s = time.perf_counter() - t0
    res["init"] = {"seconds": round(init_s, 2), "images_per_s": round(n / init_s, 1), "report": report.lines()[0]}
    print(f"init: {init_s:.1f}s for {n} images", flush=True)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "todal.project.server", str(work / "project"), "--port", str(port),
                               "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(200):
            try:
                httpx.get(url + "/api/config", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        res["rounds"] = []
        for s in range(args.steps + 1):
            lab = label_queue(url, truth)
            print(f"labeled {lab['labels']}: p50 {lab['p50_ms']} ms, p99 {lab['p99_ms']} ms", flush=True)
            if s == args.steps:
                res["rounds"].append({"labeling": lab})
                break
            t0 = time.perf_counter()
            m = project.step(budget=args.budget, strategy="cod")
            wall = time.perf_counter() - t0
            test_acc = evaluate(project.model(m["step"]), get_task("classification", 10), test,
                                batch_size=512)["accuracy"]
            inside = m["val_low"] <= test_acc <= m["val_high"]
            res["rounds"].append({"labeling": lab, "step": {
                "step": m["step"], "labels": m["labeled"], "trained_on": m["trained_on"], "wall_s": round(wall, 2),
                "train_s": m["train_time_s"], "validate_s": m["validate_time_s"], "score_s": m["score_time_s"],
                "queue_s": m["queue_time_s"], "holdout_accuracy": round(m["val_accuracy"], 4),
                "holdout_interval": [round(m["val_low"], 4), round(m["val_high"], 4)], "holdout_size": m["val_size"],
                "test_accuracy": round(test_acc, 4), "test_inside_interval": inside}})
            print(f"step {m['step']}: {wall:.1f}s (train {m['train_time_s']}s, score {m['score_time_s']}s); "
                  f"holdout {m['val_accuracy']:.3f} [{m['val_low']:.3f}, {m['val_high']:.3f}] n={m['val_size']}, "
                  f"test {test_acc:.3f}", flush=True)
    finally:
        server.terminate()
        server.wait(10)

    # Scoring a folder pool (the project's cache) against the in-memory reader, same model, same images.
    model = project.model()
    ids = torch.arange(n)
    rates = {}
    for name, data in (("folder_cache", project.dataset()), ("in_memory", train)):
        for _ in predict(model, data, ids[:2048], batch_size=256):
            pass  # warm-up
        t0 = time.perf_counter()
        for _ in predict(model, data, ids, batch_size=256):
            pass
        rates[name] = round(n / (time.perf_counter() - t0), 1)
    res["scoring_images_per_s"] = {**rates, "ratio_folder_to_memory": round(rates["folder_cache"] / rates["in_memory"], 3)}
    print(f"scoring: {rates}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res)
    write_text(out / "README.md", render(res))


def render(res: dict) -> str:
    lines = [
        "# A labeling session on Fashion-MNIST as PNG files",
        "",
        f"Command: `{res['command']}` ({res['machine']}). Every number below is in `results.json`; "
        "`--render` rewrites this page from it.",
        "",
        f"- {res['images']:,} Fashion-MNIST training images written as PNG files ({res['write_png_s']} s, not part of todal).",
        f"- `todal init`: {res['init']['seconds']} s, {res['init']['images_per_s']:,} images/s: each file read once, "
        "hashed and decoded at 28x28 into the uint8 cache, in worker processes.",
        f"- The people: {res['clients']} concurrent clients on the labeling server, each leasing 5 images at a "
        "time and answering with the true class.",
        "",
        "| round | labels posted | label-submit p50 (ms) | p99 (ms) | max (ms) | labels/s |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(res["rounds"]):
        lab = r["labeling"]
        lines.append(f"| {i} | {lab['labels']} | {lab['p50_ms']} | {lab['p99_ms']} | {lab['max_ms']} | {lab['labels_per_s']} |")
    lines += ["", "| step | labels | trained on | train (s) | validate (s) | score (s) | queue (s) | step wall (s) | "
              "holdout accuracy [95% interval] (n) | test accuracy (10,000) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rounds"]:
        if "step" not in r:
            continue
        s = r["step"]
        lo, hi = s["holdout_interval"]
        lines.append(f"| {s['step']} | {s['labels']} | {s['trained_on']} | {s['train_s']} | {s['validate_s']} | "
                     f"{s['score_s']} | {s['queue_s']} | {s['wall_s']} | {100 * s['holdout_accuracy']:.1f}% "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] ({s['holdout_size']}) | {100 * s['test_accuracy']:.1f}%"
                     f"{'' if s['test_inside_interval'] else ' (outside)'} |")
    lines += ["", "Scoring is COD: step 1 runs two models over the pool (the trained one and the untrained initial one); "
              "from step 2 on the previous step's outputs are kept, so scoring is one inference pass."]
    steps = [r["step"] for r in res["rounds"] if "step" in r]
    inside = sum(st["test_inside_interval"] for st in steps)
    gap = np.mean([100 * (st["holdout_accuracy"] - st["test_accuracy"]) for st in steps])
    lines += ["", f"The holdout estimate against the real test set: the test accuracy lies inside the holdout's 95% "
              f"interval at {inside} of {len(steps)} steps; the holdout reads {gap:+.1f} points above it on average. "
              f"The holdout is one random draw ({steps[-1]['holdout_size']} images here, 20% of the random seed "
              "batch), the same at every step, so its luck carries from step to step; a larger `--holdout` or "
              "`--seed-batch` narrows the interval."]
    sc = res["scoring_images_per_s"]
    lines += ["", f"Scoring a folder pool: one inference pass over all {res['images']:,} images runs at "
              f"{sc['folder_cache']:,} images/s from the project's uint8 cache and {sc['in_memory']:,} images/s from "
              f"the in-memory Fashion-MNIST reader (ratio {sc['ratio_folder_to_memory']}): decoding is done once, "
              "at `init`, and is not the bottleneck of scoring.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
