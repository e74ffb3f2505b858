"""Projects and Label Studio payloads for the ML-backend tests (importable as `mlkit`).

`requests()` are the requests Label Studio 1.23.2 sent to a capturing ML backend (data/, tokens redacted);
its tasks hold `a/img0.png` ... `a/img3.png` (the last one uploaded: `/data/upload/5/72496dc0-img3.png`), which
`make_project` writes first, so their sample ids are 0 to 3.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from projkit import pattern
from todal.project.core import Project

CLASSES = ["cat", "dog", "bird"]  # the captured labeling config's choices
TRAIN = {"epochs": 2, "batch_size": 16, "lr": 0.05}
PAYLOADS = Path(__file__).parent / "data" / "label_studio_1.23.2_ml_requests.json"


def write_images(root: Path, n: int, seed: int = 0) -> dict[str, int]:
    """`a/img0.png` ... `a/img3.png`, then `b/img004.png` ...: `n` learnable 12x12 PNGs; {path: true class}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(n):
        rel = f"a/img{i}.png" if i < 4 else f"b/img{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pattern(i % 3, rng)).save(root / rel)
        truth[rel] = i % 3
    return truth


def make_project(tmp: Path, n: int = 36, *, seed_batch: int = 12, train: dict = TRAIN, **kw) -> tuple[Project, dict]:
    truth = write_images(tmp / "images", n)
    project, _ = Project.init(tmp / "proj", tmp / "images", CLASSES, size=12, seed_batch=seed_batch, train=train, **kw)
    return project, truth


def requests() -> dict[str, dict]:
    """name -> `{"method", "path", "body"}` of each captured request (a fresh copy)."""
    doc = json.loads(PAYLOADS.read_text())
    return {r["name"]: copy.deepcopy(r) for r in doc["requests"]}


def body(name: str) -> dict:
    return requests()[name]["body"]


def annotation_event(action: str, ident: int, task: dict, choice: str | None, *, project: int = 5, by=1,
                     stamp: str = "2026-12-04T16:34:00.000000Z", cancelled: bool = False) -> dict:
    """A webhook payload shaped like the captured ANNOTATION_CREATED, for another task, id and choice."""
    b = body("ANNOTATION_CREATED")
    result = [] if choice is None else [{"from_name": "label", "to_name": "image", "type": "choices",
                                         "value": {"choices": [choice]}}]
    b["action"] = action
    b["annotation"].update(id=ident, result=result, task=task["id"], project=project, completed_by=by,
                           was_cancelled=cancelled, created_at=stamp, updated_at=stamp)
    b["task"] = task
    b["project"]["id"] = project
    return b


def task(ident: int, data: dict, project: int = 5) -> dict:
    """A task as Label Studio serializes it in webhooks and /predict (the fields that matter here)."""
    return {"id": ident, "data": data, "meta": {}, "project": project, "annotations": [], "predictions": []}


def start_backend(project: Path, port: int, *extra: str, env: dict | None = None, log: Path | None = None,
                  timeout: float = 60.0) -> subprocess.Popen:
    """`python -m todal.project.mlbackend PROJECT --port PORT` in a subprocess, returned once /health answers."""
    import httpx

    cmd = [sys.executable, "-m", "todal.project.mlbackend", str(project), "--port", str(port), *extra]
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, env=full, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the ML backend exited with {proc.returncode}" +
                               (f": {log.read_text()[-2000:]}" if log else ""))
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the ML backend did not answer within {timeout} s")
