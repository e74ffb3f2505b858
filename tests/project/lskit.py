"""Tiny todal labeling projects for the Label Studio tests: PNGs on disk, a Store with one step's queue; a real
Label Studio server (`label_studio`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from todal.project.store import Store

CLASSES = ["cat", "dog", 'bird & "fish" <x>']  # the last one needs XML escaping


def make_project(tmp: Path, n: int = 4, classes: list[str] = CLASSES, folder: str = "images") -> Store:
    """`n` 6x6 PNGs under tmp/folder (two subfolders), a project at tmp/proj queuing all of them at step 1.

    Sample i is ranked i with score 1 - i/10 and guessed class i % len(classes) (probability 0.7).
    """
    root = tmp / folder
    rows = []
    for i in range(n):
        rel = f"{'ab'[i % 2]}/img {i}.png"  # a space: URLs must quote it
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 6), (40 * i % 256, 90, 200)).save(path)
        raw = path.read_bytes()
        rows.append((rel, hashlib.sha256(raw).hexdigest(), len(raw)))
    store = Store.create(tmp / "proj" / "project.db",
                         {"classes": classes, "task": "classification", "images": str(root), "name": "demo"})
    ids = store.add_samples(rows)
    store.begin_step(1, {"strategy": "cod"})
    k = len(classes)
    store.finish_step(1, {}, [(s, i, 1.0 - i / 10, "cod", [[i % k, 0.7], [(i + 1) % k, 0.2]])
                              for i, s in enumerate(ids)])
    return store


def other_class(guess: int, k: int) -> int:
    """A class that differs from the model's guess, so an answer that came back is told from the guess."""
    return (guess + 1) % k


def choices_result(name: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [name]}}]


def annotation(ident: int, choices: list[str] | None, *, by=1, cancelled: bool = False,
               updated: str = "2025-01-01T10:00:00.000000Z") -> dict:
    """One annotation as Label Studio 1.23's JSON export writes it (only the fields it always has)."""
    result = [] if choices is None else [{"from_name": "label", "to_name": "image", "type": "choices",
                                          "value": {"choices": list(choices)}}]
    return {"id": ident, "completed_by": by, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": updated, "updated_at": updated, "lead_time": 2.5,
            "task": 0, "project": 1}


def export_task(ident: int, data: dict, annotations: list[dict]) -> dict:
    """One task as Label Studio 1.23's JSON export writes it."""
    return {"id": ident, "annotations": annotations, "drafts": [], "predictions": [], "data": data, "meta": {},
            "created_at": "2025-01-01T09:00:00.000000Z", "updated_at": "2025-01-01T10:00:00.000000Z",
            "inner_id": ident, "total_annotations": len(annotations), "cancelled_annotations": 0,
            "total_predictions": 0, "project": 1}


# --- a real Label Studio server -------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
LABEL_STUDIO = Path(os.environ.get("TODAL_LABEL_STUDIO", REPO / ".venv-label-studio" / "bin" / "label-studio"))
START_TIMEOUT = 240.0  # the first start runs Django's migrations (~25 s on 2 idle cores; more when they are busy)


@dataclass
class LabelStudioServer:
    url: str
    token: str  # the admin's legacy API token (`Authorization: Token <t>`)
    files: Path  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    log: Path
    proc: subprocess.Popen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group (`label-studio start` runs Django's server as a child)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def label_studio(base: Path, env: dict | None = None):
    """Label Studio 1.23 on 127.0.0.1 with its data under `base`, an admin and a legacy API token; yields a
    `LabelStudioServer`. Skips the test when it is not installed (fails under CI)."""
    import httpx
    import pytest

    if not LABEL_STUDIO.exists():
        why = f"Label Studio is not installed at {LABEL_STUDIO}; run scripts/setup_label_studio.sh"
        if os.environ.get("CI"):
            pytest.fail(why + " (CI must run this test)")
        pytest.skip(why)
    files = base / "files"
    files.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(20)
    # A clean environment: Label Studio also reads unprefixed HOST, PORT, USERNAME, ... variables.
    clean = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT") if k in os.environ}
    clean.update(HOME=str(base), LABEL_STUDIO_BASE_DATA_DIR=str(base / "data"),
                 LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true", LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(files),
                 # No traffic beyond 127.0.0.1: no version check, analytics, error reports or resource downloads.
                 LABEL_STUDIO_LATEST_VERSION_CHECK="false", LABEL_STUDIO_COLLECT_ANALYTICS="false",
                 LABEL_STUDIO_SENTRY_DSN="", LABEL_STUDIO_FRONTEND_SENTRY_DSN="",
                 LABEL_STUDIO_CONVERTER_DOWNLOAD_RESOURCES="false", LABEL_STUDIO_DEBUG="false", **(env or {}))
    log = base / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
             "--username", "todal@example.org", "--password", secrets.token_hex(12), "--user-token", token,
             "--enable-legacy-api-token"],
            env=clean, cwd=base, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Label Studio exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Label Studio did not answer in {START_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield LabelStudioServer(url, token, files, log, proc)
    finally:
        stop(proc)
