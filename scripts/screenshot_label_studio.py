"""docs/label-studio.png: Label Studio 1.23.2's Data Manager showing todal's predictions and scores.

    .venv/bin/python scripts/screenshot_label_studio.py [--out docs/label-studio.png]

Starts Label Studio from .venv-label-studio on a free local port (its data in a temp folder), builds a
project of 120 Fashion-MNIST test images with one step trained, serves it with `todal ml-backend`, connects
the two through Label Studio's API, logs in with Debian's Chromium and shoots the Data Manager ordered by
prediction score (todal's selection order first).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import sync_playwright

from todal.data.fashion_mnist import FILES, find_fashion_mnist, read_idx
from todal.project.core import Project
from todal.project.labelstudio import export_tasks, label_config

REPO = Path(__file__).resolve().parents[1]
LABEL_STUDIO = Path(os.environ.get("TODAL_LABEL_STUDIO", REPO / ".venv-label-studio" / "bin" / "label-studio"))
CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
EMAIL = "todal@example.org"
SHOWN = ["tasks:id", "tasks:data.image", "tasks:predictions_results", "tasks:predictions_score",
         "tasks:predictions_model_versions", "tasks:total_annotations", "tasks:data.path"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what: str, check, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def fashion(n: int):
    folder = find_fashion_mnist(download=False)
    images = read_idx(next(p for p in folder.iterdir() if p.name.startswith(FILES["test_images"])), 3)[:n]
    labels = read_idx(next(p for p in folder.iterdir() if p.name.startswith(FILES["test_labels"])), 1)[:n]
    return images, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "label-studio.png"))
    ap.add_argument("--n", type=int, default=120)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="todal-ls-shot-"))
    files = base / "files"
    images, labels = fashion(args.n)
    for i, pixels in enumerate(images):
        (files / "images" / "test").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").save(files / "images" / "test" / f"{i:05d}.png")
    project, _ = Project.init(files / "proj", files / "images", CLASSES, size=28, seed_batch=40,
                              model_options={"width": 0.5}, train={"epochs": 15, "batch_size": 16, "lr": 0.05})
    truth = {f"test/{i:05d}.png": int(c) for i, c in enumerate(labels)}
    project.store.add_labels([{"sample": it.sample, "class": truth[it.path], "annotator": "seed"}
                              for it in project.store.queued()], source="known")
    project.step(budget=20, strategy="cod")
    project.store.close()

    port, token, password = free_port(), secrets.token_hex(20), secrets.token_hex(12)
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    env.update(HOME=str(base), LABEL_STUDIO_BASE_DATA_DIR=str(base / "data"),
               LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true", LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(files),
               LABEL_STUDIO_LATEST_VERSION_CHECK="false", LABEL_STUDIO_COLLECT_ANALYTICS="false",
               LABEL_STUDIO_SENTRY_DSN="", LABEL_STUDIO_FRONTEND_SENTRY_DSN="",
               LABEL_STUDIO_CONVERTER_DOWNLOAD_RESOURCES="false", ML_BLOCK_LOCAL_IP="false",
               SSRF_PROTECTION_ENABLED="false")
    ls = subprocess.Popen([str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port",
                           str(port), "--username", EMAIL, "--password", password, "--user-token", token,
                           "--enable-legacy-api-token"], env=env, cwd=base, stdin=subprocess.DEVNULL,
                          stdout=open(base / "ls.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    backend_port = free_port()
    backend = None
    try:
        wait("Label Studio", lambda: httpx.get(url + "/health", timeout=5).status_code == 200)
        backend = subprocess.Popen([sys.executable, "-m", "todal.project.mlbackend", str(files / "proj"), "--port",
                                    str(backend_port), "--retrain-every", "0", "--quiet"],
                                   env={**os.environ, "LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token},
                                   stdout=open(base / "backend.log", "wb"), stderr=subprocess.STDOUT)
        backend_url = f"http://127.0.0.1:{backend_port}"
        wait("the backend", lambda: httpx.get(backend_url + "/health", timeout=5).status_code == 200)
        api = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120, trust_env=False)
        pid = api.post("/api/projects", json={"title": "Fashion-MNIST (todal)",
                                              "label_config": label_config(CLASSES)}).json()["id"]
        api.post("/api/storages/localfiles/", json={"project": pid, "path": str(files / "images"), "title": "images",
                                                     "use_blob_urls": False}).raise_for_status()
        api.post("/api/ml", json={"url": backend_url, "project": pid, "title": "todal"}).raise_for_status()
        export_tasks(Project(files / "proj").store, base / "tasks.json")
        queued = json.loads((base / "tasks.json").read_text())
        rest = [{"data": {"image": f"/data/local-files/?d=images/test/{i:05d}.png", "todal_id": i,
                          "path": f"test/{i:05d}.png"}} for i in range(args.n)
                if i not in {t["data"]["todal_id"] for t in queued}]
        for t in queued:
            t.pop("predictions", None)  # the backend's predictions, not the export's
        tasks = queued + rest
        random.Random(0).shuffle(tasks)  # task ids in another order than todal's: the sort is by score
        api.post(f"/api/projects/{pid}/import", json=tasks).raise_for_status()
        wait("todal's predictions in Label Studio",
             lambda: api.get(f"/api/projects/{pid}").json()["model_version"] == "todal-step-1"
             and api.get(f"/api/projects/{pid}").json()["total_predictions_number"] >= args.n)
        hidden = [c for c in ("tasks:completed_at", "tasks:cancelled_annotations", "tasks:total_predictions",
                              "tasks:annotators", "tasks:annotations_results", "tasks:annotations_ids",
                              "tasks:file_upload", "tasks:storage_filename", "tasks:created_at", "tasks:updated_at",
                              "tasks:updated_by", "tasks:avg_lead_time", "tasks:draft_exists", "tasks:inner_id",
                              "tasks:data.todal_id", "tasks:comment_count", "tasks:comments",
                              "tasks:unresolved_comment_count", "tasks:last_comment_updated_at")]
        view = api.post("/api/dm/views/", json={"project": pid, "data": {
            "title": "todal's order", "ordering": ["tasks:predictions_score"], "type": "list", "target": "tasks",
            "hiddenColumns": {"explore": hidden, "labeling": hidden}, "columnsDisplayType": {},
            "columnsWidth": {"tasks:predictions_results": 560, "tasks:predictions_model_versions": 170},
            "gridWidth": 4, "filters": {"conjunction": "and", "items": []}}}).json()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(url + "/user/login/")
            page.fill("input[name=email]", EMAIL)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda u: "/user/login" not in u)
            page.goto(f"{url}/projects/{pid}/data?tab={view['id']}")
            page.wait_for_selector("text=todal-step-1")
            page.wait_for_timeout(3000)  # the thumbnails
            page.screenshot(path=args.out)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        if backend is not None:
            backend.terminate()
            backend.wait(15)
        try:
            os.killpg(ls.pid, signal.SIGTERM)
            ls.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(ls.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
