"""Is the accuracy estimate honest, and does a project know when to stop? Simulated labeling sessions on real PNGs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stopping_sessions.py [--sessions 5] [--max-steps 20]
    ... --sessions 3 --only 0 & ... --sessions 3 --only 1,2   # sessions in parallel processes; then without
                                                              # --only: the report from the finished sessions

Why (issue 23): a project's estimate used to rest on 19 held-out images that never grew, its interval covered
the test accuracy in 2 of 3 steps, and nothing said when to stop.

What: 3,000 Fashion-MNIST training images written as PNGs; per session (seed s) a project (`small_cnn` at
28 px, the default holdout 0.2) labeled by a simulated annotator who answers every queued image with its
true class, stepped with COD (budget 100) until `todal status` recommends "stop" or `--max-steps`. After
every step: the project's estimate (accuracy on its random validation labels, never trained on) with its
95% interval, against the true accuracy of the same model on Fashion-MNIST's 10,000 test images; and each
stopping criterion's value. Coverage = the share of (session, step) pairs whose interval holds the test
accuracy (target: at least 90% for a 95% interval).

Writes benchmarks/stopping-sessions/{results.json, README.md, sessions.png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "stopping-sessions"
CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def read(split: str):
    """Fashion-MNIST's `split` ("train" or "test") as uint8 images `[N, 28, 28]` and labels `[N]` (numpy)."""
    from todal.data import load_dataset

    data = load_dataset("fashion-mnist")[0 if split == "train" else 1]
    return data.x[:, 0].numpy(), data.y.numpy()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--pool", type=int, default=3000)
    ap.add_argument("--work", default="/tmp/todal-stopping-sessions")
    ap.add_argument("--only", default=None, metavar="SEEDS",
                    help="run only these sessions (comma-separated seeds), e.g. in parallel processes; a run without "
                         "it reports every finished one")
    args = ap.parse_args(argv)
    from PIL import Image

    from todal.inference import test_transform
    from todal.project.core import Project

    work = Path(args.work)
    x, y = read("train")
    xt, yt = read("test")
    truth = {}
    for i in range(args.pool):
        rel = f"{i // 1000:02d}/{i:05d}.png"
        if not (work / "images" / rel).exists():
            (work / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(work / "images" / rel)
        truth[rel] = int(y[i])
    test_x, test_y = torch.from_numpy(xt).unsqueeze(1), torch.from_numpy(yt)
    sessions = []
    only = None if args.only is None else {int(x) for x in args.only.split(",")}
    for seed in range(args.sessions):
        done = work / f"session{seed}.json"
        if only is not None and seed not in only:
            continue
        if done.exists():
            sessions.append(json.loads(done.read_text()))
            continue
        project, _ = Project.init(work / f"project{seed}", work / "images", CLASSES, size=28, seed=seed,
                                  train={"epochs": 12, "batch_size": 64, "lr": 0.05})
        transform = test_transform(project.dataset())
        steps, t0 = [], time.perf_counter()
        for s in range(1, args.max_steps + 1):
            rows = [{"sample": it.sample, "class": truth[it.path], "annotator": "sim"} for it in project.store.queued()]
            project.store.add_labels(rows, source="sim")
            m = project.step(budget=100, strategy="cod")
            model = project.model(s)
            with torch.no_grad():
                right = sum(int((model(transform(test_x[i:i + 1000])).argmax(1) == test_y[i:i + 1000]).sum())
                            for i in range(0, len(test_y), 1000))
            rec = project.status()["recommendation"]
            steps.append({"step": s, "labels": m["labeled"], "estimate": m["val_accuracy"], "low": m["val_low"],
                          "high": m["val_high"], "n": m["val_size"], "test_accuracy": right / len(test_y),
                          "kappa": m.get("stop_kappa"), "kappa_mean": rec["kappa_mean"],
                          "uncertainty": m.get("pool_uncertainty"), "gain": rec["gain"], "gain_low": rec["gain_low"],
                          "gain_high": rec["gain_high"], "verdict": rec["verdict"], "text": rec["text"]})
            print(f"session {seed} step {s}: {m['labeled']} labels, estimate {m['val_accuracy']:.3f} "
                  f"[{m['val_low']:.3f}, {m['val_high']:.3f}] n={m['val_size']}, test {right / len(test_y):.3f}; "
                  f"{rec['verdict']}", flush=True)
            if rec["verdict"] == "stop":
                break
        result = {"seed": seed, "steps": steps, "seconds": round(time.perf_counter() - t0, 1),
                  "stopped_itself": steps[-1]["verdict"] == "stop"}
        done.write_text(json.dumps(result))
        sessions.append(result)
    if only is not None:  # a part of the sessions: the report comes from a run without --only
        return {"sessions": sessions}
    pairs = [st for sess in sessions for st in sess["steps"] if st["n"]]
    covered = sum(st["low"] <= st["test_accuracy"] <= st["high"] for st in pairs)
    by_step: dict[int, list] = {}
    for st in pairs:
        by_step.setdefault(st["step"], []).append(st)
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stopping_sessions.py"
                   + (" " + " ".join(argv) if argv else ""),
        "pool": args.pool, "sessions": sessions, "pairs": len(pairs), "coverage": covered / len(pairs),
        "width_by_step": {s: statistics.fmean(st["high"] - st["low"] for st in v) for s, v in sorted(by_step.items())},
        "coverage_by_step": {s: sum(st["low"] <= st["test_accuracy"] <= st["high"] for st in v) / len(v)
                             for s, v in sorted(by_step.items())},
        "bias": statistics.fmean(st["estimate"] - st["test_accuracy"] for st in pairs)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    figure(result)
    readme(result)
    print((OUT / "README.md").read_text())
    return result


def figure(r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    s = next((x for x in r["sessions"] if x["stopped_itself"]), r["sessions"][0])  # one that stopped, if any
    labels = [st["labels"] for st in s["steps"]]
    a.fill_between(labels, [100 * st["low"] for st in s["steps"]], [100 * st["high"] for st in s["steps"]],
                   alpha=0.25, label="95% interval of the estimate")
    a.plot(labels, [100 * st["estimate"] for st in s["steps"]], marker="o", ms=3, label="estimate (validation labels)")
    a.plot(labels, [100 * st["test_accuracy"] for st in s["steps"]], marker="s", ms=3, color="black",
           label="true accuracy (10,000 test images)")
    stop = next((st for st in s["steps"] if st["verdict"] == "stop"), None)
    if stop:
        a.axvline(stop["labels"], color="#d62728", ls="--", lw=1, label=f"the project says stop ({stop['labels']} labels)")
    a.set_xlabel("labels")
    a.set_ylabel("accuracy (%)")
    a.set_title(f"one session (seed {s['seed']}): the estimate and the truth")
    a.grid(alpha=0.3)
    a.legend(fontsize=8, loc="lower right")
    for sess in r["sessions"]:
        pts = [(st["labels"], st["kappa"]) for st in sess["steps"] if st["kappa"] is not None]
        if pts:
            b.plot(*zip(*pts), marker=".", alpha=0.8, label=f"seed {sess['seed']}")
    b.axhline(0.99, color="#d62728", ls="--", lw=1, label="threshold 0.99 (mean of 3 steps)")
    b.set_xlabel("labels")
    b.set_ylabel("Cohen's κ, consecutive models, stop set")
    b.set_title("stabilizing predictions")
    b.grid(alpha=0.3)
    b.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(OUT / "sessions.png", dpi=110)
    plt.close(fig)


def readme(r: dict) -> None:
    lines = ["# Simulated labeling sessions: the accuracy estimate and when to stop\n",
             f"Command: `{r['command']}`. Raw numbers: `results.json`; figure: `sessions.png`.\n",
             f"{len(r['sessions'])} sessions on {r['pool']:,} Fashion-MNIST PNGs (COD, budget 100 a step, a random 20% of "
             "every batch queued for validation from the project's validation reserve, never trained on), each stepped "
             "until `todal status` recommended stop or 20 steps. "
             f"Over {r['pairs']} (session, step) pairs the 95% interval held the test accuracy in "
             f"**{100 * r['coverage']:.1f}%** (target: at least 90%); the estimate's mean error against the test "
             f"accuracy is {100 * r['bias']:+.2f} points. A session's estimates share their labels from step to step, "
             "so its steps are not independent trials of the interval: the coverage is over few independent "
             "sessions.\n",
             "| step | mean interval width (points) | coverage |", "|---|---|---|"]
    for s, w in r["width_by_step"].items():
        lines.append(f"| {s} | {100 * w:.1f} | {100 * r['coverage_by_step'][s]:.0f}% |")
    lines += ["", "| session | steps | labels at the end | stopped itself | last estimate | test accuracy | last words |",
              "|---|---|---|---|---|---|---|"]
    for sess in r["sessions"]:
        last = sess["steps"][-1]
        lines.append(f"| {sess['seed']} | {len(sess['steps'])} | {last['labels']} | {sess['stopped_itself']} | "
                     f"{100 * last['estimate']:.1f}% [{100 * last['low']:.1f}, {100 * last['high']:.1f}] | "
                     f"{100 * last['test_accuracy']:.1f}% | {last['text']} |")
    (OUT / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
