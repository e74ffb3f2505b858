"""`todal bench`: the sub-command's arguments (`add_parser`) and its body (`run`); `todal.cli` wires them."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..errors import TodalError
from .protocols import PROTOCOLS, protocol
from .suite import run_bench


def _trials(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of trials >= 1, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `bench` to the `todal` sub-commands."""
    p = subparsers.add_parser(
        "bench", help="reproduce the paper's experiments under a protocol and write a report",
        description="Runs every method of the paper's experiments (one resumable run per method and trial under "
                    "OUT/runs/), analyses them and writes OUT/report.md, its figures and OUT/results.json. "
                    "Re-running the same command resumes; adding a strategy reuses the finished runs. The "
                    "dataset's task picks the experiment: classification (Fig. 7, Tables 1 and 3, Fig. 3-6, 9-12) "
                    "or segmentation (fashion-mnist-scenes, cityscapes: Fig. 8's mIoU curves and Table 2's "
                    "per-class IoU).")
    p.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                   help="paper (appendix B, needs a GPU; segmentation: DRN-D-22 on cityscapes), cpu (scaled for "
                        "2 cores; segmentation: seg_cnn on fashion-mnist-scenes), smoke (seconds, for CI)")
    p.add_argument("--dataset", default=None,
                   help="digits, fashion-mnist, cifar10, fashion-mnist-scenes, cityscapes, ... or a path")
    p.add_argument("--out", required=True, help="folder for report.md, figures, results.json and runs/")
    p.add_argument("--strategies", default=None,
                   help="comma-separated NAME or NAME+semi (default: the protocol's); the Table 1 ablation "
                        "(random, random+semi, cod, cod+semi) is always added")
    p.add_argument("--trials", type=_trials, default=None, help="number of trials (seeds 0..N-1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a protocol value, e.g. --set epochs=3 --set grid_lams=[0.05]; repeatable")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--log-dir", default=None, help="TensorBoard event files of every run, one folder per run")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite OUT's report from its results.json and the finished runs under "
                        "OUT/runs (a bench whose run folders are not all kept)")
    return p


def run(args, argv: list[str]) -> None:
    """Build the protocol (overrides applied), run the bench, print where the report is."""
    if args.report_only:
        from .suite import rewrite_report

        if not (Path(args.out) / "results.json").exists():
            raise TodalError(f"{args.out} holds no results.json to rewrite; run the bench first (--protocol, --dataset).")
        r = rewrite_report(args.out, command="todal " + shlex.join(argv))
        print(f"report rewritten from {sum(len(v) for v in r['runs'].values())} runs: {args.out}/report.md")
        return
    if args.protocol is None or args.dataset is None:
        raise TodalError("todal bench needs --protocol and --dataset (or --report-only to rewrite a report).")
    overrides = list(args.overrides)
    if args.trials is not None:
        overrides.append(f"trials={args.trials}")
    protocol(args.protocol, overrides)  # fail fast on a bad --set (run_bench resolves it for the dataset's task)
    specs = None
    if args.strategies is not None:
        specs = [s for s in args.strategies.split(",") if s.strip()]
        if not specs:
            raise TodalError(f"--strategies {args.strategies!r} names no strategy; write e.g. random,entropy,cod.")
    result = run_bench(args.protocol, args.dataset, args.out, overrides=overrides, strategies=specs,
                       device=args.device, data_root=args.data_root, progress=not args.quiet,
                       command="todal " + shlex.join(argv), log_dir=args.log_dir)
    env = result["environment"]
    print(f"{len(env['runs_ran'])} runs trained, {len(env['runs_reused'])} reused, "
          f"{env['wall_time_s']:.0f} s; report: {args.out}/report.md")
