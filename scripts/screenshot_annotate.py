"""docs/annotate.png: the labeling page on a Fashion-MNIST project, with the model's guesses shown.

    .venv/bin/python scripts/screenshot_annotate.py [--out docs/annotate.png]

Builds a throwaway project of 40 Fashion-MNIST test images (a drawn stand-in when the data is not on
this machine) whose queue, guesses and accuracy estimate are staged (no model is trained), labels a few as two
annotators, serves it on a free local port and shoots Chromium.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

from todal.errors import TodalError
from todal.project.server import make_app
from todal.project.store import DB_NAME, Store
from todal.stopping import wilson

CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def images(n: int) -> np.ndarray:
    """(n, 28, 28) uint8: Fashion-MNIST test images, else a drawn ankle boot."""
    try:
        from todal.data.fashion_mnist import FILES, find_fashion_mnist, read_idx

        folder = find_fashion_mnist(download=False)
        path = next(p for p in folder.iterdir() if p.name.startswith(FILES["test_images"]))
        return read_idx(path, 3)[:n]
    except (TodalError, StopIteration, KeyError, ImportError):
        y, x = np.mgrid[:28, :28]
        boot = ((x > 6) & (x < 22) & (y > 14) & (y < 24)) | ((x > 13) & (x < 22) & (y > 4) & (y < 24))
        return np.repeat((boot * 200 + 20).astype(np.uint8)[None], n, 0)


def project(tmp: Path, n: int = 40) -> Path:
    root = tmp / "images"
    rows = []
    for i, pixels in enumerate(images(n)):
        rel = f"test/{i:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").save(root / rel)
        data = (root / rel).read_bytes()
        rows.append((rel, hashlib.sha256(data).hexdigest(), len(data)))
    store = Store.create(tmp / "proj" / DB_NAME, {"classes": CLASSES, "task": "classification", "images": str(root),
                                                  "name": "fashion-mnist"})
    ids = store.add_samples(rows)
    store.begin_step(0, {"strategy": "random"})
    store.finish_step(0, {}, [])
    store.begin_step(1, {"strategy": "cod"})
    rng = np.random.default_rng(0)
    queue = []
    for rank, s in enumerate(ids):
        p = np.sort(rng.dirichlet(np.full(10, 0.3)))[::-1][:3]
        order = rng.permutation(10)[:3]
        if s == 0:  # the first image is an ankle boot: a plausible confusion with sneaker and sandal
            order, p = [9, 7, 5], [0.62, 0.27, 0.08]
        queue.append((s, rank, float(1 - p[0]), "cod", [[int(c), round(float(q), 3)] for c, q in zip(order, p)]))
    lo, hi = wilson(39, 50)  # a staged estimate, as a step after 50 validation labels reports it
    store.finish_step(1, {"val_accuracy": 0.78, "val_low": lo, "val_high": hi, "val_size": 50,
                          "recommendation": "keep labeling: κ between the last two models 0.912"}, queue)
    for s in range(30, 40):
        store.add_label(s, s % 10, annotator="maria" if s % 3 else "jonas", source="web")
    return tmp / "proj"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "annotate.png"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        server = uvicorn.Server(uvicorn.Config(make_app(project(Path(tmp))), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1200, "height": 760}, device_scale_factor=1)
                page.add_init_script("localStorage.setItem('todal.annotator', 'maria')")
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function("document.getElementById('image').complete && "
                                       "document.getElementById('image').naturalWidth > 0")
                page.wait_for_function("document.getElementById('batch-text').textContent.includes('done')")
                page.wait_for_timeout(300)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.out)
                browser.close()
        finally:
            server.should_exit = True
            thread.join(10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
