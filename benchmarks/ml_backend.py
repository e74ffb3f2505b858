"""todal as Label Studio's ML backend, timed on a 5,000-image project: Fashion-MNIST written out as PNG files,
`todal ml-backend` in its own process, Label Studio's requests sent as Label Studio 1.23.2 sends them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ml_backend.py --out benchmarks/ml-backend

Measures (written to OUT/results.json and OUT/README.md):
- annotation -> updated predictions: 8 simulated annotators answer the queue through /webhook
  (ANNOTATION_CREATED payloads); the answer that completes `--retrain-every` starts a step in the background;
  the time from that webhook to the first /predict served by the new model version, with the step's share;
- /predict latency for batches of 1, 10 and 100 tasks (and the whole project, what Label Studio's
  "Retrieve predictions" sends), on the latest step's model; the first call after a step loads the model;
- webhook throughput and latency with 8 concurrent annotators, with no step running and while a step trains.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from todal.atomic import write_json, write_text
from todal.data import load_dataset
from todal.project.core import Project
from todal.project.labelstudio import label_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labeling_session import free_port, write_pngs  # noqa: E402  (the labeling-session benchmark's helpers)

ANNOTATORS = 8
LS_PROJECT = 7


def ls_task(sample: int, path: str) -> dict:
    """A task as Label Studio serializes it (webhooks, /predict), imported from `todal export --format label-studio`."""
    stamp = "2026-12-04T16:25:54.221034Z"
    return {"id": 1000 + sample, "data": {"image": f"/data/local-files/?d=images/{path}", "todal_id": sample,
                                          "path": path},
            "meta": {}, "created_at": stamp, "updated_at": stamp, "is_labeled": False, "overlap": 1,
            "inner_id": 1000 + sample, "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 1,
            "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None,
            "project": LS_PROJECT, "updated_by": None, "file_upload": None, "comment_authors": [],
            "annotations": [], "predictions": []}


def annotation_created(ident: int, sample: int, path: str, choice: str, project: dict, user: int) -> dict:
    """ANNOTATION_CREATED as Label Studio 1.23.2 posts it (annotation, task, project)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    annotation = {"id": ident, "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                           "value": {"choices": [choice]}}],
                  "was_cancelled": False, "ground_truth": False, "created_at": stamp, "updated_at": stamp,
                  "draft_created_at": None, "lead_time": 2.5, "result_count": 1, "unique_id": f"u-{ident}",
                  "import_id": None, "last_action": None, "bulk_created": False, "task": 1000 + sample,
                  "project": LS_PROJECT, "completed_by": user, "updated_by": user, "parent_prediction": None,
                  "parent_annotation": None, "last_created_by": None}
    return {"action": "ANNOTATION_CREATED", "annotation": annotation, "task": ls_task(sample, path), "project": project}


def ls_project(classes: list[str]) -> dict:
    return {"id": LS_PROJECT, "title": "fashion", "label_config": label_config(classes), "task_number": 5000,
            "show_collab_predictions": True, "model_version": "", "sampling": "Uncertainty sampling",
            "created_at": "2026-12-04T16:25:49.315480Z", "organization": 1, "created_by": 1}


def annotate(url: str, work: list[tuple[int, str, str]], project: dict, first_id: int) -> dict:
    """8 annotators post ANNOTATION_CREATED webhooks for `work` (sample, path, class), split among them."""
    import httpx

    latencies, lock, errors = [], threading.Lock(), []

    def annotator(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            for j in range(k, len(work), ANNOTATORS):
                sample, path, cls = work[j]
                event = annotation_created(first_id + j, sample, path, cls, project, user=k + 1)
                t0 = time.perf_counter()
                r = c.post("/webhook", json=event)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if r.status_code != 200:
                        errors.append(r.text)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=annotator, args=(k,)) for k in range(ANNOTATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {**summary(latencies), "webhooks": len(latencies), "errors": len(errors), "wall_s": round(wall, 2),
            "per_s": round(len(latencies) / wall, 1)}


def summary(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def health(url: str) -> dict:
    import httpx

    return httpx.get(url + "/health", timeout=30).json()


def predict_call(http, tasks: list[dict], config: str) -> tuple[float, dict]:
    body = {"tasks": tasks, "project": f"{LS_PROJECT}.1796401549", "label_config": config,
            "params": {"login": None, "password": None, "context": None}}
    t0 = time.perf_counter()
    r = http.post("/predict", json=body)
    dt = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    return dt, r.json()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/ml-backend")
    ap.add_argument("--work", default="/tmp/todal-ml-backend", help="scratch folder for the PNGs and the project")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--budget", type=int, default=200, help="the seed batch, each step's budget and --retrain-every")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--render", action="store_true", help="only rewrite OUT/README.md from OUT/results.json")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    if args.render:
        write_text(out / "README.md", render(json.loads((out / "results.json").read_text())))
        return
    import httpx

    shutil.rmtree(work, ignore_errors=True)
    train, _ = load_dataset("fashion-mnist")
    n = min(args.n, len(train))
    classes = [c.replace("/", "-") for c in train.classes]  # a class name is a folder name in exports
    truth_idx = train.y[:n].numpy()
    res = {"command": "OMP_NUM_THREADS=1 python " + " ".join([sys.argv[0], *sys.argv[1:]]), "images": n,
           "annotators": ANNOTATORS, "budget": args.budget, "epochs": args.epochs,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    res["write_png_s"] = round(write_pngs(train.x[:n, 0].numpy(), work / "images"), 2)
    truth = {f"part{i // 1000:03d}/{i:05d}.png": classes[int(truth_idx[i])] for i in range(n)}
    t0 = time.perf_counter()
    project, _ = Project.init(work / "project", work / "images", classes, size=28, seed_batch=args.budget,
                              model_options={"width": 0.5},
                              train={"epochs": args.epochs, "batch_size": 64, "lr": 0.05})
    res["init_s"] = round(time.perf_counter() - t0, 2)
    paths = {i: p for i, p, *_ in project.store.samples()}
    config = label_config(classes)
    lsp = ls_project(classes)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log = work / "backend.log"
    with open(log, "wb") as f:
        backend = subprocess.Popen([sys.executable, "-m", "todal.project.mlbackend", str(work / "project"), "--port",
                                    str(port), "--retrain-every", str(args.budget), "--budget", str(args.budget),
                                    "--quiet"], env=env, stdout=f, stderr=subprocess.STDOUT)
    next_id = 1
    try:
        for _ in range(600):
            try:
                health(url)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        res["rounds"] = []
        http = httpx.Client(base_url=url, timeout=300)
        for s in range(1, args.steps + 1):
            pending = [it for it in project.store.queued()]
            work_items = [(it.sample, it.path, truth[it.path]) for it in pending]
            # all but the last answer, then the last one alone: it completes --retrain-every and starts the step
            lab = annotate(url, work_items[:-1], lsp, next_id)
            sample, path, cls = work_items[-1]
            event = annotation_created(next_id + len(work_items) - 1, sample, path, cls, lsp, user=1)
            next_id += len(work_items)
            t0 = time.perf_counter()
            r = http.post("/webhook", json=event)
            t_answer = time.perf_counter() - t0
            assert r.json().get("step") == "started", r.text
            want = f"todal-step-{s}"
            while health(url)["model_version"] != want:
                time.sleep(0.02)
            t_version = time.perf_counter() - t0
            dt, answer = predict_call(http, [ls_task(sample, path)], config)
            assert answer["results"][0]["model_version"] == want
            t_served = time.perf_counter() - t0
            h = health(url)
            while not h["step"]["last"] or h["step"]["last"].get("step") != s:
                time.sleep(0.02)
                h = health(url)
            metrics = next(r for r in Project(work / "project").store.steps() if r["step"] == s)["metrics"]
            rnd = {"step": s, "labels": metrics["labeled"], "webhooks": lab,
                   "trigger_webhook_ms": round(1000 * t_answer, 2), "to_new_version_s": round(t_version, 2), "to_first_prediction_s": round(t_served, 2),
                   "first_predict_ms": round(1000 * dt, 1), "step_s": h["step"]["last"]["seconds"],
                   "train_s": metrics["train_time_s"], "score_s": metrics["score_time_s"]}
            res["rounds"].append(rnd)
            print(json.dumps(rnd), flush=True)

        # /predict on the latest step's model (already loaded by the call above)
        rng = np.random.default_rng(0)
        lat = {}
        for size, reps in ((1, 50), (10, 50), (100, 20), (n, 3)):
            times = []
            for _ in range(reps):
                pick = rng.choice(n, size, replace=False)
                dt, answer = predict_call(http, [ls_task(int(i), paths[int(i)]) for i in pick], config)
                assert len(answer["results"]) == size
                times.append(dt)
            lat[str(size)] = {**summary(times), "calls": reps, "tasks_per_s": round(size * reps / sum(times), 1)}
            print(f"/predict x{size}: {lat[str(size)]}", flush=True)
        res["predict"] = lat

        # webhooks while a step trains: START_TRAINING, then 8 annotators on samples no step queued
        queued = set(project.store.queue_order())
        free = [i for i in range(n) if i not in queued][: 4 * args.budget]
        r = http.post("/webhook", json={"action": "START_TRAINING", "project": lsp})
        assert r.json()["step"] == "started", r.text
        time.sleep(0.5)
        during = annotate(url, [(i, paths[i], truth[paths[i]]) for i in free], lsp, next_id)
        next_id += len(free)
        during["step_still_running_at_end"] = health(url)["step"]["running"] is not None
        res["webhooks_during_step"] = during
        print(f"webhooks during a step: {during}", flush=True)
        http.close()
    finally:
        backend.terminate()
        backend.wait(30)
    res["webhooks_idle"] = {k: v for k, v in res["rounds"][0]["webhooks"].items()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res)
    write_text(out / "README.md", render(res))


def render(res: dict) -> str:
    lines = [
        "# todal as Label Studio's ML backend: latency and throughput",
        "",
        f"Command: `{res['command']}` ({res['machine']}, OMP_NUM_THREADS={res['omp_num_threads']}; load average "
        f"{res.get('load_average_at_start', ['?'])[0]} at the start: the machine is shared). Every number below is in "
        "`results.json`; `--render` rewrites this page from it.",
        "",
        f"- A project of {res['images']:,} Fashion-MNIST training images written as PNG files (small_cnn at width "
        f"0.5, {res['epochs']} epochs per step, COD, budget {res['budget']}); `todal init` {res['init_s']} s.",
        f"- `todal ml-backend` in its own process (`--retrain-every {res['budget']} --budget {res['budget']}`); the "
        "requests are shaped as Label Studio 1.23.2 sends them (a webhook carries the annotation, the task and the "
        "project with its labeling config), sent from this script's process without Label Studio.",
        "",
        "## From an annotation to updated predictions",
        "",
        f"{res['annotators']} annotators answer the queue by webhook; the answer that completes `--retrain-every` "
        "starts a step in a background thread and is answered at once; then /health is polled until the new "
        "model version is served, and one /predict asks for it (that call loads the step's model).",
        "",
        "| step | labels | trigger webhook (ms) | to new version (s) | to first prediction (s) | first /predict (ms) "
        "| step (s) | train (s) | score (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rounds"]:
        lines.append(f"| {r['step']} | {r['labels']} | {r['trigger_webhook_ms']} | {r['to_new_version_s']} | "
                     f"{r['to_first_prediction_s']} | {r['first_predict_ms']} | {r['step_s']} | {r['train_s']} | "
                     f"{r['score_s']} |")
    lines += ["", "The time is the step's: training, COD's scoring of every unlabeled image (step 1 runs two "
              "models over the pool, later steps one), and the rest of a step (building the engine, validating on "
              "the holdout, checkpoints; the learning curve is drawn after the new version is served). With "
              "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY set, Label Studio's own retrieval of the new predictions "
              "follows (one /predict of every task, below).", "",
              "## /predict", "", "| tasks per request | calls | p50 (ms) | p95 (ms) | max (ms) | tasks/s |",
              "|---|---|---|---|---|---|"]
    for size, p in res["predict"].items():
        lines.append(f"| {int(size):,} | {p['calls']} | {p['p50_ms']} | {p['p95_ms']} | {p['max_ms']} | "
                     f"{p['tasks_per_s']:,} |")
    lines += ["", f"A batch is one forward pass of the step's model over the tasks' cached images; {res['images']:,} "
              "tasks is what Label Studio's \"Retrieve predictions\" sends for the whole project.", "",
              "## Webhooks, 8 concurrent annotators", "",
              "| when | webhooks | per second | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) |",
              "|---|---|---|---|---|---|---|"]
    for name, w in (("no step running (the seed batch)", res["webhooks_idle"]),
                    ("while a step trains", res["webhooks_during_step"])):
        lines.append(f"| {name} | {w['webhooks']} | {w['per_s']} | {w['p50_ms']} | {w['p95_ms']} | {w['p99_ms']} | "
                     f"{w['max_ms']} |")
    d = res["webhooks_during_step"]
    lines += ["", "Each label is committed to SQLite (synchronous=FULL) before the webhook is answered. Label Studio "
              "sends a webhook inside the request that saves the annotation and waits at most 1 s for it "
              "(WEBHOOK_TIMEOUT). While a step trains, its thread shares the backend's process (and the 2 cores) "
              "with the requests." + ("" if d["step_still_running_at_end"] else
                                       " The step had finished before the last of these webhooks."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
