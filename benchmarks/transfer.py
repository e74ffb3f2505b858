"""Transfer on real data: a backbone pretrained on Fashion-MNIST classes 0-4 labels classes 5-9 in a project.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/transfer.py                 # everything (resumable)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/transfer.py --report        # the report from finished arms

Why (issue 21): a project trained only a from-scratch 32-pixel CNN; on a few hundred labels its guesses
and its choice of what to label next are worth little. Practitioners start from a pretrained backbone.

What:
- Source model: a ResNet (transformers `ResNetModel`, 4 stages of 32-256 channels, ~1.2M parameters) with
  a linear head, trained on the 30,000 Fashion-MNIST training images of classes 0-4 at 32x32 RGB, then saved
  as a user's pretrained model comes: `save_pretrained` and a `preprocessor_config.json` (side 32, the
  source data's mean and std). `source-model/` (not committed: the script rebuilds it from its seed).
- Target: classes 5-9, as PNG files: 5,000 training images (1,000 a class) in a labeling project, and the
  5,000 test images of those classes to measure each step's model on. A simulated annotator answers every
  queued image with its true class. Seed batch 100 (20 held out), then 5 steps of 100 labels (to 600).
- Arms: from scratch (the same architecture, randomly initialized: a MODULE:FUNCTION factory) vs fine-tune
  (`hf:DIR`, the backbone at lr/10) vs frozen (`hf:DIR --frozen`: a dropout + linear head on the cached
  embeddings), each with random, margin, COD and COD + TOD loss; and, for the frozen TOD loss's
  perturbation, frozen COD + TOD loss with the head's dropout off. 3 trials (the project seed).
- Reported: test accuracy per step (mean over trials), the labels each arm needs to reach 95% of its mode's
  full-data accuracy (the same training on all 5,000 target labels), and a step's time split into
  embedding, training and scoring.

Writes benchmarks/transfer/{results.json, README.md, accuracy.png}.
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
OUT = HERE / "transfer"
SOURCE = OUT / "source-model"
WORK = OUT / "work"  # the projects and the PNG folders (not committed)
CLASSES = ["sandal", "shirt", "sneaker", "bag", "boot"]  # Fashion-MNIST 5..9
SIDE, PER_CLASS, SEED_BATCH, BUDGET, STEPS, TRIALS = 32, 1000, 100, 100, 5, 3
PRETRAIN_LIMIT = None  # source images used (None: all 30,000)
TRAIN = {"epochs": 15, "batch_size": 64, "lr": 0.05}
STRATEGIES = [("random", False), ("margin", False), ("cod", False), ("cod", True)]
MODES = ("scratch", "finetune", "frozen")


def read_fmnist(split: str):
    """Fashion-MNIST's `split` ("train" or "test") as uint8 images `[N, 28, 28]` and labels `[N]` (numpy)."""
    from todal.data import load_dataset

    data = load_dataset("fashion-mnist")[0 if split == "train" else 1]
    return data.x[:, 0].numpy(), data.y.numpy()


def resnet_config():
    import transformers

    return transformers.ResNetConfig(num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128, 256],
                                     depths=[1, 1, 1, 1], layer_type="basic", downsample_in_first_stage=False)


def scratch(num_classes: int, in_channels: int):
    """The source model's architecture with random weights and a new head (the from-scratch arm's factory)."""
    import transformers

    from todal.models.pretrained import Pretrained, _pooled, hf_input_spec

    backbone = transformers.ResNetModel(resnet_config())
    model = Pretrained(backbone, lambda x: _pooled(backbone(pixel_values=x)), hf_input_spec(str(SOURCE)), num_classes)
    model.pretrained = False  # nothing to keep: the whole network at the full learning rate
    return model


# --- the source model -------------------------------------------------------------------------------------
def pretrain(epochs: int = 5) -> dict:
    """Train the ResNet + head on classes 0-4 and save the backbone as `save_pretrained` does."""
    if (SOURCE / "config.json").exists():
        return json.loads((SOURCE / "source.json").read_text())
    import transformers

    from todal.data.arrays import channel_stats
    from todal.data.transforms import BatchAugment, normalize
    from todal.models.pretrained import InputSpec, Pretrained, _pooled

    x, y = read_fmnist("train")
    keep = y < 5
    x, y = torch.from_numpy(x[keep][:PRETRAIN_LIMIT]).unsqueeze(1), torch.from_numpy(y[keep][:PRETRAIN_LIMIT])
    xt, yt = read_fmnist("test")
    kt = yt < 5
    xt, yt = torch.from_numpy(xt[kt]).unsqueeze(1), torch.from_numpy(yt[kt])
    mean, std = channel_stats(x[:10000])
    spec = InputSpec(SIDE, 3, tuple(mean) * 3, tuple(std) * 3)
    torch.manual_seed(0)
    backbone = transformers.ResNetModel(resnet_config())
    model = Pretrained(backbone, lambda b: _pooled(backbone(pixel_values=b)), spec, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (len(x) // 128))
    augment, g = BatchAugment(2, True), torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for b in range(len(x) // 128):
            idx = order[b * 128:(b + 1) * 128]
            loss = torch.nn.functional.cross_entropy(model(normalize(augment(x[idx], g), mean, std)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"pretrain epoch {epoch}: loss {loss.item():.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        acc = float(sum((model(normalize(xt[i:i + 500], mean, std)).argmax(1) == yt[i:i + 500]).sum()
                        for i in range(0, len(xt), 500)) / len(xt))
    SOURCE.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(SOURCE)
    (SOURCE / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ConvNextImageProcessor", "do_resize": True, "size": {"height": SIDE, "width": SIDE},
        "do_normalize": True, "image_mean": list(spec.mean), "image_std": list(spec.std)}, indent=1))
    info = {"source_classes": "Fashion-MNIST 0-4 (T-shirt, trouser, pullover, dress, coat)", "train_images": len(x),
            "epochs": epochs, "source_test_accuracy": acc, "seconds": round(time.perf_counter() - t0, 1),
            "parameters": sum(p.numel() for p in backbone.parameters())}
    (SOURCE / "source.json").write_text(json.dumps(info, indent=1))
    return info


# --- the target data --------------------------------------------------------------------------------------
def target_images() -> dict:
    """PNG folders of classes 5-9: `pool/` (1,000 a class from the training set) and `test/` (all test images)."""
    from PIL import Image

    truth_file = WORK / "truth.json"
    if truth_file.exists():
        return json.loads(truth_file.read_text())
    truth = {"pool": {}, "test": {}}
    for split, folder, limit in (("train", "pool", PER_CLASS), ("test", "test", None if PER_CLASS == 1000 else 100)):
        x, y = read_fmnist(split)
        picked = np.concatenate([np.flatnonzero(y == c)[:limit] for c in range(5, 10)])
        for i in picked:
            rel = f"{CLASSES[y[i] - 5]}-{i:05d}.png"
            (WORK / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(WORK / folder / rel)
            truth[folder][rel] = CLASSES[y[i] - 5]
    truth_file.write_text(json.dumps(truth))
    return truth


def source_for(mode: str, dropout: float | None = None) -> dict:
    """`Project.init` keywords of a mode's model."""
    if mode == "scratch":
        return {"model": "transfer:scratch"}
    return {"model": f"hf:{SOURCE}", "frozen": mode == "frozen",
            **({"head_dropout": dropout} if dropout is not None else {})}


def answer(project, truth: dict) -> None:
    """The simulated annotator: every queued image gets its true class."""
    rows = [{"sample": it.sample, "class": CLASSES.index(truth[it.path]), "annotator": "sim"}
            for it in project.store.queued()]
    project.store.add_labels(rows, source="sim")


def answer_all(project, truth: dict) -> None:
    rows = [{"sample": i, "class": CLASSES.index(truth[path]), "annotator": "sim"}
            for i, path, *_ in project.store.samples()]
    project.store.add_labels(rows, source="sim")


class TestSet:
    """The target test images at a project's input, and the accuracy of one of its models on them."""

    def __init__(self, project, truth: dict):
        from todal.project.images import read_files, scan

        paths = scan(WORK / "test")
        decoded = list(read_files(WORK / "test", paths, project.meta["size"], project.meta["mode"], workers=1))
        self.x = torch.from_numpy(np.stack([d.pixels for d in decoded]))
        self.y = torch.tensor([CLASSES.index(truth["test"][p]) for p in paths])

    @torch.no_grad()
    def accuracy(self, project, model) -> float:
        from todal.inference import test_transform

        transform = test_transform(project.dataset())
        model.eval()
        right = sum(int((model(transform(self.x[i:i + 500])).argmax(1) == self.y[i:i + 500]).sum())
                    for i in range(0, len(self.y), 500))
        return right / len(self.y)


def arm_name(mode: str, strategy: str, semi: bool, dropout: float | None) -> str:
    name = f"{mode} {strategy}" + (" + TOD loss" if semi else "")
    return name + (" (no dropout)" if dropout == 0 else "")


def run_arm(mode: str, strategy: str, semi: bool, trial: int, truth: dict, dropout: float | None = None) -> dict:
    """One labeling project, stepped to 600 labels (resumable: finished steps are kept)."""
    from todal.project.core import Project

    name = arm_name(mode, strategy, semi, dropout).replace(" + ", "+").replace(" ", "-").replace("(", "").replace(")", "")
    done_file = WORK / "arms" / f"{name}-trial{trial}.json"
    if done_file.exists():
        return json.loads(done_file.read_text())
    root = WORK / "projects" / f"{name}-trial{trial}"
    project, _ = Project.init(root, WORK / "pool", CLASSES, seed=trial, seed_batch=SEED_BATCH, train=TRAIN,
                              **source_for(mode, dropout))
    test = TestSet(project, truth)
    steps = []
    for s in range(1, STEPS + 1):
        answer(project, truth["pool"])
        m = project.step(budget=BUDGET, strategy=strategy, semi=semi)
        steps.append({"step": s, "labels": m["labeled"], "trained_on": m["trained_on"],
                      "test_accuracy": test.accuracy(project, project.model(s)),
                      "holdout_accuracy": m.get("val_accuracy"), "embed_time_s": m.get("embed_time_s", 0.0),
                      "train_time_s": m["train_time_s"], "score_time_s": m["score_time_s"]})
        print(f"{name} trial {trial} step {s}: {steps[-1]['test_accuracy']:.4f}", flush=True)
    hits = project.store.guess_hits()
    result = {"arm": arm_name(mode, strategy, semi, dropout), "mode": mode, "trial": trial, "steps": steps,
              "guess_accuracy": {str(k): v[1] / v[0] for k, v in hits.items() if v[0]}}
    done_file.parent.mkdir(parents=True, exist_ok=True)
    done_file.write_text(json.dumps(result, indent=1))
    return result


def full_data(mode: str, truth: dict) -> float:
    """The mode's model trained on all 5,000 target labels (the project's training): its test accuracy."""
    from todal.project.core import Project

    done_file = WORK / "arms" / f"full-{mode}.json"
    if done_file.exists():
        return json.loads(done_file.read_text())["test_accuracy"]
    root = WORK / "projects" / f"full-{mode}"
    project, _ = Project.init(root, WORK / "pool", CLASSES, seed=0, seed_batch=SEED_BATCH, holdout=0.01, train=TRAIN,
                              **source_for(mode))
    answer_all(project, truth["pool"])
    m = project.step(budget=1, strategy="random")
    acc = TestSet(project, truth).accuracy(project, project.model(1))
    done_file.parent.mkdir(parents=True, exist_ok=True)
    done_file.write_text(json.dumps({"mode": mode, "trained_on": m["trained_on"], "test_accuracy": acc}))
    return acc


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Labels where the mean curve first reaches `target` (linear between steps); None when it never does."""
    for (l0, a0), (l1, a1) in zip([(0, 0.0)] + curve, curve):
        if a1 >= target:
            return l1 if a1 == a0 or l0 == 0 else l0 + (target - a0) / (a1 - a0) * (l1 - l0)
    return None


def report(results: list[dict], full: dict, source: dict) -> dict:
    arms: dict[str, list[dict]] = {}
    for r in results:
        arms.setdefault(r["arm"], []).append(r)
    rows = []
    for arm, runs in arms.items():
        n_steps = min(len(r["steps"]) for r in runs)
        curve = [(runs[0]["steps"][s]["labels"], statistics.fmean(r["steps"][s]["test_accuracy"] for r in runs))
                 for s in range(n_steps)]
        spread = [statistics.pstdev(r["steps"][s]["test_accuracy"] for r in runs) for s in range(n_steps)]
        mode = runs[0]["mode"]
        target = 0.95 * full[mode]
        times = {k: statistics.fmean(st[k] for r in runs for st in r["steps"])
                 for k in ("embed_time_s", "train_time_s", "score_time_s")}
        guess = [v for r in runs for v in r["guess_accuracy"].values()]
        rows.append({"arm": arm, "mode": mode, "trials": len(runs), "curve": curve, "std": spread,
                     "labels_to_95": labels_to_reach(curve, target), "target": target, "step_times": times,
                     "guess_accuracy": statistics.fmean(guess) if guess else None})
    return {"source": source, "full_data_accuracy": full, "arms": rows, "protocol": {
        "side": SIDE, "pool": 5 * PER_CLASS, "seed_batch": SEED_BATCH, "budget": BUDGET, "steps": STEPS,
        "trials": TRIALS, "train": TRAIN}}


def write(r: dict, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r["command"] = command
    (OUT / "results.json").write_text(json.dumps(r, indent=1) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharey=True)
    colors = {"random": "#888888", "margin": "#1f77b4", "cod": "#d62728", "cod + TOD loss": "#ff7f0e"}
    for ax, mode in zip(axes, MODES):
        for row in (x for x in r["arms"] if x["mode"] == mode):
            label = row["arm"][len(mode) + 1:]
            xs, ys = zip(*row["curve"])
            ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * s for s in row["std"]], marker="o", ms=3, capsize=2,
                        label=label, color=colors.get(label.replace(" (no dropout)", ""), "black"),
                        ls=":" if "no dropout" in label else "-")
        ax.axhline(100 * r["full_data_accuracy"][mode], color="black", lw=0.8, ls="--", label="all 5,000 labels")
        ax.set_title(f"{mode}")
        ax.set_xlabel("labels")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy on classes 5-9 (%)")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Fashion-MNIST 5-9 labeled in a project: from scratch, fine-tuned and frozen backbones "
                 "pretrained on classes 0-4", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "accuracy.png", dpi=110)
    plt.close(fig)
    lines = ["# Transfer: a backbone pretrained on Fashion-MNIST 0-4 labels classes 5-9\n",
             f"Command: `{command}`. Raw numbers: `results.json`; figure: `accuracy.png`.\n",
             f"Source model: transformers ResNet ({r['source']['parameters']:,} parameters) trained on "
             f"{r['source']['train_images']:,} images of classes 0-4 ({r['source']['epochs']} epochs, test accuracy "
             f"{100 * r['source']['source_test_accuracy']:.2f}%), saved with `save_pretrained` and a processor config. "
             "Target: a labeling project of 5,000 PNGs of classes 5-9, a simulated annotator giving the true class; "
             f"seed batch {SEED_BATCH} (20% held out), then {STEPS} steps of {BUDGET}; test accuracy on the 5,000 "
             f"test images of those classes; {TRIALS} trials (the project seed).\n",
             "Full-data accuracy (the same training on all 5,000 target labels): "
             + ", ".join(f"{m} {100 * a:.2f}%" for m, a in r["full_data_accuracy"].items()) + ".\n",
             "| arm | " + " | ".join(f"{lab} labels" for lab, _ in r["arms"][0]["curve"]) +
             " | labels to 95% of full-data | top guess right | embed s/step | train s/step | score s/step |",
             "|---|" + "---|" * (len(r["arms"][0]["curve"]) + 5)]
    for row in r["arms"]:
        reach = "not within 600" if row["labels_to_95"] is None else f"{row['labels_to_95']:.0f}"
        guess = "-" if row["guess_accuracy"] is None else f"{100 * row['guess_accuracy']:.1f}%"
        t = row["step_times"]
        cells = " | ".join(f"{100 * a:.2f} ± {100 * sd:.2f}" for (_, a), sd in zip(row["curve"], row["std"]))
        lines.append(f"| {row['arm']} | {cells} | {reach} | {guess} | {t['embed_time_s']:.1f} | "
                     f"{t['train_time_s']:.1f} | {t['score_time_s']:.1f} |")
    lines += ["", "Accuracy cells: mean ± std over the trials. \"Labels to 95%\": where the mean curve first reaches 95% "
              "of its mode's full-data accuracy (linear between steps). \"Top guess right\": how often the model's top "
              "guess, shown on the labeling page, was the class the annotator gave (mean over steps and trials). "
              "Times: per step, mean over steps and trials (embed: a frozen project's new images through the "
              "backbone; the first step embeds the pool).", ""]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true", help="train nothing: the report from finished arms")
    ap.add_argument("--trials", default=",".join(map(str, range(TRIALS))))
    ap.add_argument("--quick", metavar="DIR", default=None,
                    help="the same code at a size that runs in minutes, into DIR (a check, not a measurement)")
    args = ap.parse_args(argv)
    if args.quick:
        global OUT, SOURCE, WORK, PER_CLASS, SEED_BATCH, BUDGET, STEPS, PRETRAIN_LIMIT
        OUT = Path(args.quick)
        SOURCE, WORK = OUT / "source-model", OUT / "work"
        PER_CLASS, SEED_BATCH, BUDGET, STEPS, PRETRAIN_LIMIT = 40, 40, 20, 2, 2000
        TRAIN["epochs"] = 2
    sys.path.insert(0, str(HERE))  # `transfer:scratch` and the annotator helper import from here
    source = pretrain()
    truth = target_images()
    arms = [(m, s, semi, None) for m in MODES for s, semi in STRATEGIES] + [("frozen", "cod", True, 0.0)]
    trials = [int(t) for t in args.trials.split(",")]
    results = []
    for trial in trials:
        for mode, strategy, semi, dropout in arms:
            if args.report:
                name = arm_name(mode, strategy, semi, dropout).replace(" + ", "+").replace(" ", "-")
                f = WORK / "arms" / f"{name.replace('(', '').replace(')', '')}-trial{trial}.json"
                if f.exists():
                    results.append(json.loads(f.read_text()))
                continue
            results.append(run_arm(mode, strategy, semi, trial, truth, dropout))
    full = {m: full_data(m, truth) for m in MODES}
    write(report(results, full, source), "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/transfer.py")
    print((OUT / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
