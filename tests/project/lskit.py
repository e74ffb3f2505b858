"""Tiny todal labeling projects for the Label Studio tests: PNGs on disk, a Store with one step's queue."""

from __future__ import annotations

import hashlib
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
