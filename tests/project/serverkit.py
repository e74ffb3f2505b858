"""Tiny labeling projects for the server tests, built straight through the Store (no `todal init`)."""

from __future__ import annotations

import hashlib
import io
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from todal.project.store import DB_NAME, Store

CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def png(seed: int, size: int = 8) -> bytes:
    """A small seeded grayscale PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return buf.getvalue()


def make_project(tmp: Path, n: int = 12, *, classes=CLASSES, task: str = "classification", size: int = 8,
                 guesses=None, same_image: bool = False) -> Path:
    """A project folder at tmp/proj with `n` PNGs under tmp/images/<a|b>/ (nested), all queued by step 0.

    `guesses(i)` gives sample i's guesses (default: none, as before the first model).
    """
    images = tmp / "images"
    rows = []
    one = png(0, size) if same_image else None
    for i in range(n):
        rel = f"{'ab'[i % 2]}/img_{i:05d}.png"
        data = one or png(i, size)
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(data)
        rows.append((rel, hashlib.sha256(data).hexdigest(), len(data)))
    project = tmp / "proj"
    store = Store.create(project / DB_NAME, {"classes": list(classes), "task": task, "images": str(images),
                                             "name": "demo"})
    ids = store.add_samples(rows)
    store.begin_step(0, {"strategy": "random"})
    store.finish_step(0, {}, [(s, r, None, "random", guesses(s) if guesses else []) for r, s in enumerate(ids)])
    store.close()
    return project


def snapshot(project: Path) -> dict[str, list]:
    """Every row of every table: compare before and after a request that must change nothing."""
    con = sqlite3.connect(project / DB_NAME)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: con.execute(f"SELECT * FROM {t}").fetchall() for t in tables}
    finally:
        con.close()


def labels(project: Path) -> list[tuple]:
    """(sample, kind, class, annotator) of every label row, in order."""
    con = sqlite3.connect(project / DB_NAME)
    try:
        return con.execute("SELECT sample, kind, class, annotator FROM labels ORDER BY id").fetchall()
    finally:
        con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(project: Path, port: int, *extra: str, token: str | None = None,
                 log: Path | None = None) -> subprocess.Popen:
    """`python -m todal.project.server PROJECT --port PORT` in a subprocess, returned once it answers.

    With `log`, the access log is on and stdout and stderr go to that file; else --quiet.
    """
    cmd = [sys.executable, "-m", "todal.project.server", str(project), "--port", str(port), *extra]
    if token is not None:
        cmd += ["--token", token]
    if log is None:
        proc = subprocess.Popen([*cmd, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    else:
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{port}", proc, token=token)
    return proc


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 20.0, *,
               token: str | None = None) -> None:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            said = proc.stderr.read().decode() if proc.stderr else "(see its log)"
            raise RuntimeError(f"the server exited with {proc.returncode}: {said}")
        try:
            if httpx.get(url + "/api/progress", headers=headers, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"the server at {url} did not answer within {timeout} s")


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1:`port` in a background thread; `with ThreadServer(app) as url:`."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
