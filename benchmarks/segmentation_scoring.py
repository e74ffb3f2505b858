"""Segmentation scoring cost and memory: streaming per batch keeps memory flat in the pool size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segmentation_scoring.py                 # 2,000 and 8,000 scenes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segmentation_scoring.py --sizes 500,2000  # smaller

Setting: fashion-mnist-scenes (64x64, 11 classes, generated on the fly from real Fashion-MNIST), the
CPU preset's `seg_cnn` (width 0.5), one CPU thread, scoring batch 256 (the preset's). The models
are untrained (three seeds: current, previous cycle, EMA teacher); cost and memory do not depend on
the weights. For each pool size N, in one process:

- one inference pass: the current model over the N scenes (composition + normalization + forward),
  best of 2;
- the selection of 5% of N by `cod` (dense outputs: the previous model is run again on each batch,
  no cached maps), `emaod`, `entropy`; seconds, ratio to the inference pass, and the peak resident
  memory the selection added (VmHWM, reset by writing "5" to /proc/self/clear_refs before each one);
- for contrast, at the smallest N only: the non-streaming answer (`Context.outputs` of the whole
  pool, then the discrepancy), what COD did before, whose memory grows as N x C x H x W x 4 bytes.

Writes benchmarks/segmentation-scoring/{results.json, README.md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from todal import models, strategies
from todal.atomic import write_json, write_text
from todal.data import load_dataset
from todal.discrepancy import discrepancy, to_space
from todal.strategies import Context
from todal.tasks import Segmentation

OUT = Path(__file__).parent / "segmentation-scoring"
STRATEGIES = ("cod", "emaod", "entropy")
# --strategies may add these; options as the segmentation cpu protocol sets them
OPTIONS = {"mc_dropout": {"passes": 10}, "bald": {"passes": 10}}


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset VmHWM to the current RSS; returns the RSS (KiB) the measurement starts from."""
    Path("/proc/self/clear_refs").write_text("5")
    return _kib("VmRSS")


def peak_added_mb(start_kib: int) -> float:
    return round((_kib("VmHWM") - start_kib) / 1024, 1)


def context(train, n: int, batch_size: int, nets: dict) -> Context:
    pool = torch.arange(n)
    return Context(model=nets["current"], task=Segmentation(11), dataset=train, labeled=torch.empty(0, dtype=torch.long),
                   unlabeled=pool, labels=torch.empty(0, dtype=torch.long), generator=torch.Generator().manual_seed(0),
                   cycle=1, batch_size=batch_size, ema_model=nets["ema"], previous=lambda: nets["previous"])


@torch.no_grad()
def inference_pass(ctx: Context) -> float:
    t0 = time.perf_counter()
    ctx.model.eval()
    for _, x in ctx.batches(ctx.unlabeled):
        ctx.model(x)
    return time.perf_counter() - t0


def measure(train, n: int, batch_size: int, nets: dict, baseline: bool, names=STRATEGIES) -> dict:
    ctx = context(train, n, batch_size, nets)
    infer = min(inference_pass(ctx) for _ in range(2))
    row = {"pool": n, "inference_s": round(infer, 3), "strategies": {}}
    budget = max(1, n // 20)
    for name in names:
        strategy = strategies.get(name, **OPTIONS.get(name, {}))
        start = reset_peak()
        t0 = time.perf_counter()
        strategy.select(ctx, budget)
        dt = time.perf_counter() - t0
        row["strategies"][name] = {"seconds": round(dt, 3), "ratio_to_inference": round(dt / infer, 2),
                                   "peak_added_mb": peak_added_mb(start)}
    if baseline:
        start = reset_peak()
        t0 = time.perf_counter()
        a = to_space(ctx.outputs(ctx.model, ctx.unlabeled), "probs")
        b = to_space(ctx.outputs(ctx.previous_model, ctx.unlabeled), "probs")
        discrepancy(a, b, task=ctx.task)
        dt = time.perf_counter() - t0
        row["cod_whole_pool_outputs"] = {"seconds": round(dt, 3), "ratio_to_inference": round(dt / infer, 2),
                                         "peak_added_mb": peak_added_mb(start),
                                         "one_output_of_the_pool_mb": round(n * 11 * 64 * 64 * 4 / 2**20, 1)}
        del a, b
    return row


def report(res: dict) -> str:
    names = list(res["rows"][0]["strategies"])
    lines = ["# Segmentation scoring: time per inference pass, memory flat in the pool size\n",
             f"Command: `{res['command']}`\n", res["setting"] + "\n",
             "| pool | inference pass s | " + " | ".join(f"{s} s (x inference) | {s} peak MB" for s in names) + " |",
             "|---:|---:|" + "---:|---:|" * len(names)]
    for row in res["rows"]:
        cells = [f"{row['pool']:,}", f"{row['inference_s']:.2f}"]
        for s in names:
            r = row["strategies"][s]
            cells += [f"{r['seconds']:.2f} (x{r['ratio_to_inference']:.2f})", f"{r['peak_added_mb']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    base = [r for r in res["rows"] if "cod_whole_pool_outputs" in r]
    if base:
        b = base[0]["cod_whole_pool_outputs"]
        lines += ["", f"Non-streaming COD (whole-pool outputs, then the discrepancy) at {base[0]['pool']:,} scenes: "
                      f"{b['seconds']:.2f} s (x{b['ratio_to_inference']:.2f}), peak added {b['peak_added_mb']:.1f} MB "
                      f"(one `[N, 11, 64, 64]` float map of the pool is {b['one_output_of_the_pool_mb']:.1f} MB; "
                      "it grows linearly with N)."]
    lines += ["", res["notes"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,8000")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help=f"comma-separated; {', '.join(OPTIONS)} run with {OPTIONS['mc_dropout']}")
    ap.add_argument("--out", type=Path, default=OUT, help="where results.json and README.md go")
    ap.add_argument("--no-baseline", action="store_true", help="skip the non-streaming COD contrast")
    ap.add_argument("--report-only", action="store_true", help="rewrite README.md from results.json")
    args = ap.parse_args(argv)
    if args.report_only:
        write_text(args.out / "README.md", report(json.loads((args.out / "results.json").read_text())))
        return
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    train, _ = load_dataset("fashion-mnist-scenes", size=max(sizes), test_size=16)
    nets = {}
    for seed, key in enumerate(("current", "previous", "ema")):
        torch.manual_seed(seed)
        nets[key] = models.get("seg_cnn", in_channels=1, num_classes=11, width=0.5)
    names = [x for x in args.strategies.split(",") if x]
    rows = [measure(train, n, args.batch_size, nets, baseline=not args.no_baseline and n == min(sizes), names=names)
            for n in sizes]
    res = {
        "command": ("OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segmentation_scoring.py " + shlex.join(argv)).rstrip(),
        "setting": (f"fashion-mnist-scenes 64x64, 11 classes; seg_cnn width 0.5; batch {args.batch_size}; "
                    f"{args.threads} CPU thread(s) ({platform.processor() or platform.machine()}); torch "
                    f"{torch.__version__}; selections of 5% of the pool; peak = VmHWM added during the selection."),
        "notes": ("COD on dense outputs keeps no outputs between cycles and runs the previous cycle's model again on "
                  "each batch: about two inference passes (plus the per-pixel discrepancy), where classification "
                  "COD reuses the `[N, C]` outputs kept from the last cycle and costs one. EMAOD runs the model and "
                  "the teacher: also two. Entropy: one pass plus the per-pixel entropy. Memory is a few batches of "
                  "outputs and activations whatever N: 4x the pool leaves the peak where it was (the first "
                  "selection measured, COD at the smaller N, also pays the allocator's first growth), while the "
                  "non-streaming answer holds two `[N, 11, 64, 64]` maps and their softmax copies. Timings are "
                  "from a 2-core machine shared with other jobs; ratios are within one process."),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", res)
    write_text(args.out / "README.md", report(res))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
