"""`todal init | annotate | step | status | export | import | ml-backend`: a labeling project from the command line."""

from __future__ import annotations

import argparse
import json

from .. import settings
from ..errors import TodalError
from ..presets import PROJECT_TRAIN
from ..train import TrainConfig


def _option(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TodalError(f"Strategy option {pair!r} is not KEY=VALUE; write e.g. --option passes=10.")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def add_annotate_arguments(p) -> None:
    """The options of `todal annotate`, which `python -m todal.project.server` takes too (one list: no drift)."""
    p.add_argument("project", help="the project folder (holds project.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (any other than loopback needs the token)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", default=None, help="access token (default: generated and printed when needed)")
    p.add_argument("--quiet", action="store_true", help="no access log")


def annotate_options(args) -> dict:
    """`serve`'s keyword arguments from the options `add_annotate_arguments` defines."""
    return {"host": args.host, "port": args.port, "token": args.token, "quiet": args.quiet}


def add_ml_backend_arguments(p) -> None:
    """The options of `todal ml-backend`, which `python -m todal.project.mlbackend` takes too."""
    p.add_argument("project", help="the project folder (holds project.db)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (any other than loopback needs BASIC_AUTH_USER and BASIC_AUTH_PASS)")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--retrain-every", type=int, default=100, metavar="N",
                   help="run a step after every N new labels from Label Studio (default 100; 0: only when Label "
                        "Studio asks, Start Training)")
    p.add_argument("--budget", type=int, default=100, help="how many samples each step queues (default 100)")
    p.add_argument("--strategy", default="cod", help="the steps' strategy, any of `todal strategies` (default cod)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no access log")


def ml_backend_options(args) -> dict:
    """`mlbackend.serve`'s keyword arguments from the options `add_ml_backend_arguments` defines."""
    return {"host": args.host, "port": args.port, "retrain_every": args.retrain_every, "budget": args.budget,
            "strategy": args.strategy, "device": args.device, "quiet": args.quiet}


def add_parsers(sub) -> None:
    p = sub.add_parser("init", help="start a labeling project on a folder of images (or index it again)",
                       description="Index a folder of images (any depth; png, jpg, webp, bmp), decode them once at the "
                                   "model's input size and queue a random seed batch to label. Run it again on a "
                                   "grown folder to add the new images; moved, changed and deleted files are reported.")
    p.add_argument("project", help="the project folder to create (it holds project.db, the cache and checkpoints)")
    p.add_argument("--images", required=True, help="the folder of images")
    p.add_argument("--classes", required=True, help="comma-separated class names, e.g. cat,dog,bird")
    p.add_argument("--labels", default=None, help="a CSV of labels you already have: path,label rows")
    p.add_argument("--model", default=None,
                   help="a built-in name (`todal models`), MODULE:FUNCTION, hf:ID_OR_DIR, torchvision:NAME or timm:NAME "
                        "(default small_cnn; on an existing project: the project's, or a replacement)")
    p.add_argument("--weights", default=None, help="a .safetensors or .pt state dict loaded into the model")
    p.add_argument("--frozen", action=argparse.BooleanOptionalAction, default=None,
                   help="keep a pretrained backbone fixed: embed every image once, train a head (fast on a CPU)")
    p.add_argument("--head-dropout", type=float, default=None,
                   help="--frozen: dropout on the embeddings before the head, the TOD loss's perturbation (default 0.2)")
    p.add_argument("--width", type=float, default=None, help="small_cnn width multiplier (default 1.0)")
    p.add_argument("--size", type=int, default=None,
                   help="model input side in pixels; images are resized (default: the pretrained model's, else 32)")
    p.add_argument("--seed-batch", type=int, default=100, help="size of the first, random batch to label (default 100)")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="fraction of each random batch kept for validation, never trained on (default 0.2)")
    p.add_argument("--task", choices=["classification", "segmentation"], default="classification")
    p.add_argument("--channels", choices=["auto", "1", "3"], default="auto",
                   help="1 (grayscale) or 3 (RGB); auto: grayscale when the files are")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    settings.add_flags(p, TrainConfig, "training of every step (todal.TrainConfig)", defaults=PROJECT_TRAIN)

    add_annotate_arguments(sub.add_parser("annotate", help="the labeling web page for a project's queue"))

    p = sub.add_parser("step", help="train on the labels so far, evaluate, and queue the next samples to label")
    p.add_argument("project")
    p.add_argument("--budget", type=int, default=100, help="how many samples to queue (default 100)")
    p.add_argument("--strategy", default="cod", help="any of `todal strategies` (default cod)")
    p.add_argument("--semi", action="store_true", help="add the TOD consistency loss on the unlabeled images")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", dest="options",
                   help="a strategy option, e.g. --option passes=10; repeatable")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--log-dir", default=None, help="add this step to TensorBoard event files here")
    settings.add_flags(p, TrainConfig, "training of this step (todal.TrainConfig)",
                       defaults={f.name: "the project's" for f in settings.fields_of(TrainConfig)})

    p = sub.add_parser("status", help="labels, per-class counts, accuracy estimate and queue of a project")
    p.add_argument("project")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    p = sub.add_parser("export", help="write the queue (csv, label-studio) or the labeled images (imagefolder)")
    p.add_argument("project")
    p.add_argument("--format", required=True, choices=["csv", "label-studio", "imagefolder"])
    p.add_argument("out", help="output file (csv, label-studio) or folder (imagefolder)")
    p.add_argument("--image-url", default="local-files",
                   help="label-studio: local-files (Label Studio serves the images folder), data-uri (images "
                        "embedded), or a URL prefix")
    p.add_argument("--document-root", default=None,
                   help="label-studio local-files: Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: "
                        "the parent of the images folder)")

    add_ml_backend_arguments(sub.add_parser(
        "ml-backend", help="serve the project as Label Studio's ML backend (predictions, labels by webhook, steps)",
        description="Label Studio as the labeling front end: connect this server in the Label Studio project's "
                    "Settings -> Model. It predicts with the latest step's model (scores in todal's selection order), "
                    "records the annotations Label Studio posts to /webhook in the project, and runs steps in the "
                    "background. LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY let it refresh Label Studio's predictions "
                    "after each step."))

    p = sub.add_parser("import", help="labels from a file: csv (path,label), label-studio (its JSON export), masks")
    p.add_argument("project")
    p.add_argument("file", help="the CSV or JSON file, or for masks the folder of PNG masks")
    p.add_argument("--format", required=True, choices=["csv", "label-studio", "masks"])


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def cmd_init(args) -> None:
    from .core import Project

    opts = {"width": args.width} if args.width is not None else None
    project, report = Project.init(args.project, args.images, args.classes, labels=args.labels, model=args.model,
                                   model_options=opts, weights=args.weights, frozen=args.frozen,
                                   head_dropout=args.head_dropout, size=args.size,
                                   seed=args.seed, seed_batch=args.seed_batch,
                                   holdout=args.holdout, task=args.task, channels=args.channels,
                                   train=settings.given(args, TrainConfig) or None, progress=not args.quiet)
    print("\n".join(report.lines()))
    print(project.model_line())
    prog = project.store.progress()
    print(f"project {project.root}: {project.store.num_samples()} images, classes {', '.join(project.classes)}; "
          f"{prog['queued']} queued to label.")
    print(f"next: label them with `todal annotate {project.root}` (or `todal export {project.root} --format csv "
          f"queue.csv`, then `todal import {project.root} labels.csv --format csv`), then `todal step {project.root}`.")


def cmd_annotate(args) -> None:
    from .core import Project
    from .server import serve

    Project(args.project)  # a clear error for a folder that is not a project
    serve(args.project, **annotate_options(args))


def cmd_step(args) -> None:
    from .core import Project

    project = Project(args.project)
    m = project.step(budget=args.budget, strategy=args.strategy, semi=args.semi, options=_option(args.options),
                     train=settings.given(args, TrainConfig) or None, device=args.device, progress=not args.quiet,
                     log_dir=args.log_dir)
    val = (f"holdout accuracy {_pct(m.get('val_accuracy'))} (95% interval {_pct(m.get('val_low'))}-"
           f"{_pct(m.get('val_high'))}, {m['val_size']} images)" if "val_accuracy" in m
           else f"holdout mIoU {_pct(m.get('val_miou'))} ({m['val_size']} images)")
    print(f"step {m['step']}: trained on {m.get('trained_on')} labels in {m.get('train_time_s')}s; {val}; "
          f"queued {m['queued']} by {m['strategy']} in {m['score_time_s']}s.")
    if m["val_size"] == 0:
        print("(no held-out labels yet: label the random seed batch to get an accuracy estimate)")
    if m.get("recommendation"):
        print(f"recommendation: {m['recommendation']}")


def cmd_status(args) -> None:
    from .core import Project

    st = Project(args.project).status()
    if args.json:
        print(json.dumps(st))
        return
    s = st["samples"]
    print(f"project {st['project']} ({st['task']}): {s['ok']} images"
          + (f", {s['missing']} missing" if s["missing"] else "") + (f", {s['unreadable']} unreadable" if s["unreadable"] else ""))
    print(f"labels: {st['labeled']} ({st['holdout_labeled']} held out for validation), {st['unsure']} not sure")
    width = max(len(c) for c in st["per_class"])
    for c, n in st["per_class"].items():
        print(f"  {c:<{width}}  {n}")
    if st["per_annotator"]:
        print("by annotator: " + ", ".join(f"{a} {n}" for a, n in st["per_annotator"].items()))
    b = st["queue"]["batch"]
    print(f"queue: {st['queue']['waiting']} waiting; latest batch {b['done']} of {b['size']} done")
    rows = [r for r in st["steps"] if r["step"] > 0]
    if rows:
        print("step  labels  strategy  holdout accuracy (95% interval, n)       top guess = the label given (n)")
        for r in rows:
            if r["state"] != "done":
                print(f"{r['step']:>4}  {'':>6}  {r['strategy']:<8}  (unfinished: run `todal step` again)")
                continue
            acc = ("-" if r.get("val_accuracy") is None else
                   f"{_pct(r['val_accuracy'])} ({_pct(r['val_low'])}-{_pct(r['val_high'])}, n={r['val_size']})")
            if "val_miou" in r:
                acc = f"mIoU {_pct(r['val_miou'])} (n={r['val_size']})"
            guess = "-" if r.get("guess_accuracy") is None else \
                f"{_pct(r['guess_accuracy'])} (n={r['guesses_answered']})"
            print(f"{r['step']:>4}  {r['labeled']:>6}  {r['strategy']:<8}  {acc:<40} {guess}")
    if st["learning_curve"]:
        print(f"learning curve: {st['learning_curve']}")
    if st["unmatched"]["count"]:
        u = st["unmatched"]
        print(f"label studio: {u['count']} tasks whose image is not in this project, e.g. "
              + "; ".join(f"{key} ({detail})" for _, key, detail in u["examples"][:3])
              + f"; add the images under {st['images']} and run `todal init` again (todal ml-backend)")
    rec = st.get("recommendation")
    if rec:
        e = rec["estimate"]
        if e.get("val_accuracy") is not None:
            print(f"accuracy estimate: {_pct(e['val_accuracy'])} (95% interval {_pct(e['val_low'])}-"
                  f"{_pct(e['val_high'])}), from {e['val_size']} random validation labels never trained on")
        print(f"recommendation: {rec['text']}")


def cmd_export(args) -> None:
    from .core import Project

    project = Project(args.project)
    opts = {}
    if args.format == "label-studio":
        opts = {"image_url": args.image_url, "document_root": args.document_root}
    n = project.export(args.format, args.out, **opts)
    what = "labeled images" if args.format == "imagefolder" else "queued samples"
    print(f"wrote {n} {what} to {args.out}")
    if args.format == "label-studio":
        from .labelstudio import config_path

        print(f"labeling config: {config_path(args.out)} (paste it into the Label Studio project's Labeling Setup)")


def cmd_import(args) -> None:
    from .core import Project

    project = Project(args.project)
    if args.format == "csv":
        r = project.import_csv(args.file)
    elif args.format == "masks":
        r = project.import_masks(args.file)
    else:
        r = project.import_label_studio(args.file)
    for line in r["problems"][:50]:
        print(f"skipped: {line}")
    if len(r["problems"]) > 50:
        print(f"... and {len(r['problems']) - 50} more rows skipped")
    if not r["imported"] and not r["duplicates"]:  # labels already there are no error: a re-run is safe
        noun = {"csv": "rows", "label-studio": "tasks", "masks": "masks"}[args.format]
        why = (f"none of the {len(r['problems'])} {noun} could be used (see 'skipped:' above)" if r["problems"]
               else f"it holds no label {noun}")
        raise TodalError(f"Nothing was imported from {args.file}: {why}; fix the file and import it again.")
    print(f"imported {r['imported']} labels" + (f" ({r['duplicates']} already there)" if r["duplicates"] else "")
          + (f"; {len(r['problems'])} rows could not be used" if r["problems"] else ""))


def cmd_ml_backend(args) -> None:
    from .core import Project
    from .mlbackend import serve

    Project(args.project)  # a clear error for a folder that is not a project
    serve(args.project, **ml_backend_options(args))


COMMANDS = {"init": cmd_init, "annotate": cmd_annotate, "step": cmd_step, "status": cmd_status,
            "export": cmd_export, "import": cmd_import, "ml-backend": cmd_ml_backend}
