"""`todal run | compare | strategies | bench` and the labeling project's commands: parse, call the library, print."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

from . import __version__, settings, strategies
from .bench import cli as bench_cli
from .project import cli as project_cli
from .atomic import write_json
from .ema import DEFAULT_DECAY
from .errors import TodalError
from .flavor import DEFAULT_SEMI, FLAVORS, Flavor
from .loop import ActiveLoop, default_task
from .models.source import ModelSource
from .train import TrainConfig
from .plots import learning_curve
from .presets import defaults_for
from .results import compare_table, run_table, summarize


def _size(text: str):
    """'0.1' -> 0.1 (a fraction), '1000' -> 1000 (a count)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a fraction like 0.1 or a count like 1000, got {text!r}")


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2, got {text!r}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits",
                   help="digits (embedded), fashion-mnist, cifar10, cifar100, svhn, PATH.npz or an image folder")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--model", default=None,
                   help="a built-in name (`todal models`), MODULE:FUNCTION, hf:ID_OR_DIR, torchvision:NAME or timm:NAME "
                        "(default: per dataset)")
    p.add_argument("--weights", default=None, help="a .safetensors or .pt state dict loaded into the model")
    p.add_argument("--frozen", action="store_true",
                   help="keep the model's backbone fixed: embed every sample once, train a head on the embeddings")
    p.add_argument("--head-dropout", type=float, default=0.2,
                   help="--frozen: dropout on the embeddings before the head, the TOD loss's perturbation")
    p.add_argument("--cycles", type=int, default=7)
    p.add_argument("--initial", type=_size, default=0.1, help="initial labeled set: fraction or count")
    p.add_argument("--budget", type=_size, default=0.05, help="labels per cycle: fraction or count")
    p.add_argument("--task", choices=["classification", "segmentation"], default=None,
                   help="default: the dataset's own (segmentation for fashion-mnist-scenes and cityscapes)")
    p.add_argument("--flavor", choices=list(FLAVORS), default="default",
                   help="default (the paper with the code's choices the evidence supports, see todal/flavor.py), "
                        "paper (its equations as printed) or official (the authors' code)")
    p.add_argument("--ema-decay", type=float, default=DEFAULT_DECAY, help="α of Eq. 6 (default %(default)s)")
    p.add_argument("--reinit", action="store_true", help="re-initialize the model every cycle")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", dest="options",
                   help="a strategy option, e.g. --option passes=10 (given to every strategy of the command that "
                        "takes it), or NAME.KEY=VALUE for one strategy only (--option mc_dropout.passes=10); repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--stop", choices=["kappa", "uncertainty", "plateau", "any"], default=None,
                   help="end a run early when this stopping criterion says so (todal.stopping); the last record says "
                        "why")
    p.add_argument("--log-dir", default=None, help="write TensorBoard event files of every cycle here")
    settings.add_flags(p, TrainConfig, "training (todal.TrainConfig)",
                       defaults={"epochs": "per dataset", "batch_size": "per dataset", "lr": "per dataset",
                                 "optimizer": "per dataset"})
    settings.add_flags(p, Flavor, "TOD's choices (todal.flavor.Flavor; unset: the --flavor's)", skip=("name",),
                       defaults={f.name: "the flavor's" for f in settings.fields_of(Flavor)})


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="todal", description="Deep active learning with Temporal Output Discrepancy.")
    ap.add_argument("--version", action="version", version=f"todal {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one active learning run (and a baseline to compare with)",
                         description="With no arguments: COD sampling against random sampling on the embedded "
                                     "digits data, in a few minutes.")
    _common(run)
    run.add_argument("--strategy", default="cod")
    run.add_argument("--semi", action=argparse.BooleanOptionalAction, default=None,
                     help="add the TOD consistency loss on unlabeled data (Eq. 9); default: the task's "
                          "(todal.flavor.DEFAULT_SEMI: off)")
    run.add_argument("--baseline", default="random", help="strategy run beside it for comparison, or 'none'")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--workdir", default=None, help="run directory (default: runs/<dataset>-<strategy>-seed<S>)")

    cmp = sub.add_parser("compare", help="several strategies over several seeds: one table and one plot")
    _common(cmp)
    cmp.add_argument("--strategies", default="random,entropy,cod,cod+semi",
                     help="comma-separated; NAME+semi adds the TOD loss; 'all' = every strategy and cod+semi")
    cmp.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    cmp.add_argument("--out", default=None, help="output folder (default: runs/compare-<dataset>)")

    sub.add_parser("strategies", help="list the strategies")
    sub.add_parser("models", help="list the built-in models (any of them is a --model)")
    bench_cli.add_parser(sub)
    project_cli.add_parsers(sub)
    return ap


def _options(pairs: list[str], strategies_run: list[str]) -> dict[str, dict]:
    """Each strategy's options among ['passes=10', 'mc_dropout.p=0.3', ...]: NAME.KEY only to NAME, an unscoped
    KEY to every strategy of the command that takes it (refused when none does); values parsed as JSON where
    they parse."""
    out: dict[str, dict] = {name: {} for name in strategies_run}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TodalError(f"Strategy option {pair!r} is not KEY=VALUE; write e.g. --option passes=10.")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        scope, dot, name = key.rpartition(".")
        if dot:
            if scope not in out:
                raise TodalError(f"Strategy option {pair!r} is for {scope!r}, which this command does not run "
                                 f"({', '.join(out)}); scope it to one of them or drop it.")
            out[scope][name] = parsed
            continue
        takers = [s for s in out if name in strategies.options_of(s)]
        if not takers:
            raise TodalError(f"No strategy of this command ({', '.join(out)}) takes the option {name!r}; see "
                             "`todal strategies` for each one's options.")
        for s in takers:
            out[s][name] = parsed
    return out


def _spec(text: str) -> tuple[str, bool]:
    """'NAME' or 'NAME+semi' -> (name, semi): the bench's parser, without what `todal run` has no flag for."""
    from .bench.runner import parse_method

    if text.strip().partition("+")[2] not in ("", "semi"):
        raise TodalError(f"Strategy spec {text!r} is not NAME or NAME+semi; write e.g. cod+semi.")
    m = parse_method(text)  # unknown names fail here, with the valid ones listed
    if m.flavor:
        raise TodalError(f"Strategy spec {text!r} is not NAME or NAME+semi; write e.g. cod+semi (the flavor is "
                         "--flavor; the CyclicOD loss is in todal bench).")
    return m.strategy, m.semi


def _label(name: str, semi: bool) -> str:
    return f"{name}+semi" if semi else name


def _loop(args, data, strategy: str, semi: bool, seed: int, workdir: Path, options: dict) -> ActiveLoop:
    train_set, test_set = data
    d = defaults_for(args.dataset, train_set)
    train = {**d["train"], **settings.given(args, TrainConfig)}
    model = ModelSource(args.model or d["model"], d["model_options"] if args.model in (None, d["model"]) else {},
                        weights=args.weights, frozen=args.frozen, head_dropout=args.head_dropout)
    return ActiveLoop(model, train_set, test_set, strategy=strategies.get(strategy, **options),
                      semi_supervised=semi, task=args.task or default_task(train_set),
                      eval_batch_size=d.get("eval_batch_size"), initial=args.initial, budget=args.budget,
                      cycles=args.cycles, workdir=workdir, seed=seed, train=train, reinit=args.reinit,
                      flavor={"name": args.flavor, **settings.given(args, Flavor)}, ema_decay=args.ema_decay,
                      device=args.device, progress=not args.quiet, stop=args.stop,
                      log_dir=None if args.log_dir is None else Path(args.log_dir) / workdir.name)


def _execute(loop: ActiveLoop, title: str) -> list[dict]:
    print(f"== {title}  ({loop.workdir})", flush=True)
    records = loop.run()
    print(run_table(records), flush=True)
    return records


def _write_outputs(out: Path, summaries: dict, args, argv: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"command": "todal " + shlex.join(argv), "dataset": args.dataset,
                                      "todal_version": __version__, "strategies": summaries})
    seg = next(iter(summaries.values())).get("metric") == "miou"
    learning_curve(summaries, out / "learning_curve.png", title=f"{args.dataset}",
                   **({"metric": "miou", "ylabel": "test mIoU (%)"} if seg else {}))


def _load_data(args):
    from .data import load_dataset

    return load_dataset(args.dataset, root=args.data_root)


def cmd_run(args, argv) -> None:
    data = _load_data(args)
    name, plus_semi = _spec(args.strategy)
    task = args.task or default_task(data[0])
    semi = True if plus_semi else DEFAULT_SEMI[task] if args.semi is None else args.semi
    runs = [(name, semi)]
    if args.baseline != "none":
        base = _spec(args.baseline)
        if base != (name, semi):
            runs.append(base)
    summaries = {}
    root = Path(args.workdir) if args.workdir else None
    options = _options(args.options, list(dict.fromkeys(strategy for strategy, _ in runs)))
    for i, (strategy, semi) in enumerate(runs):
        label = _label(strategy, semi)
        stem = f"{Path(args.dataset).stem}-{label}-seed{args.seed}"
        workdir = (root if i == 0 else root / f"baseline-{label}") if root else Path("runs") / stem
        records = _execute(_loop(args, data, strategy, semi, args.seed, workdir, options[strategy]), label)
        summaries[label] = summarize({args.seed: records})
    out = root or Path("runs") / f"{Path(args.dataset).stem}-{_label(name, semi)}-seed{args.seed}"
    _write_outputs(out, summaries, args, argv)
    if len(summaries) > 1:
        print(compare_table(summaries))
    print(f"results: {out / 'results.json'}  plot: {out / 'learning_curve.png'}")


def cmd_compare(args, argv) -> None:
    data = _load_data(args)
    specs = (strategies.names() + ["cod+semi"]) if args.strategies == "all" else args.strategies.split(",")
    parsed = [_spec(s) for s in specs]
    out = Path(args.out or f"runs/compare-{Path(args.dataset).stem}")
    summaries = {}
    options = _options(args.options, list(dict.fromkeys(strategy for strategy, _ in parsed)))
    for strategy, semi in parsed:
        label = _label(strategy, semi)
        per_seed = {}
        for seed in args.seeds:
            loop = _loop(args, data, strategy, semi, seed, out / f"{label}-seed{seed}", options[strategy])
            per_seed[seed] = _execute(loop, f"{label} seed {seed}")
        summaries[label] = summarize(per_seed)
        _write_outputs(out, summaries, args, argv)  # partial results survive an interruption
    print(compare_table(summaries))
    print(f"results: {out / 'results.json'}  plot: {out / 'learning_curve.png'}")


def cmd_strategies(args, argv) -> None:
    rows = strategies.describe()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['description']}  [{r['reference']}]")
        if r["options"]:
            opts = ", ".join(f"{k}={v!r}" for k, v in r["options"].items())
            print(f"{'':<{width}}  options: {opts}")


def cmd_models(args, argv) -> None:
    from . import models

    for name in models.names():
        doc = (models.REGISTRY.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:<12}  {doc[0] if doc else ''}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    warnings.simplefilter("default")
    from . import distributed

    if distributed.init_from_env() and not distributed.is_main():  # torchrun: rank 0 alone prints
        sys.stdout = open(os.devnull, "w")
    try:
        if distributed.active() and args.command in project_cli.COMMANDS and args.command not in ("step", "status"):
            raise TodalError(f"todal {args.command} runs in one process; run it without torchrun (of the "
                             "labeling commands only `todal step` trains data-parallel).")
        commands = {"run": cmd_run, "compare": cmd_compare, "strategies": cmd_strategies, "models": cmd_models,
                    "bench": bench_cli.run}
        if args.command in project_cli.COMMANDS:
            project_cli.COMMANDS[args.command](args)
        else:
            commands[args.command](args, argv)
    except TodalError as e:
        print(f"todal: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("todal: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
