"""Labels in and out of a project as files: CSV, an image-folder tree, segmentation masks (PNG).

- export csv: one row per queued sample, `id,path,score,guess` (guess = the model's top class name);
- import csv: rows `path,label` or `id,label` (a header row is optional; an `annotator` column may
  follow), label = a class name; rows that cannot be used are reported, never fatal;
- export imagefolder: `OUT/<class>/<path with / as __>`, a copy of every labeled image;
- import masks: `DIR/<image's relative path with .png>`, pixel value = class id, 255 = ignore.
"""

from __future__ import annotations

import csv
import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np

from ..atomic import write_with
from ..errors import TodalError


def export_csv(store, out: str | os.PathLike, classes: list[str]) -> int:
    """Write the queue (unanswered samples, newest step first, by rank) as `id,path,score,guess`."""
    items = store.queued()

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "path", "score", "guess"])
        for it in items:
            guess = classes[it.guesses[0][0]] if it.guesses else ""
            w.writerow([it.sample, it.path, "" if it.score is None else f"{it.score:.6g}", guess])

    write_with(out, write, binary=False)
    return len(items)


def read_csv(path: str | os.PathLike, project) -> tuple[list[dict], list[str]]:
    """Rows of `path,label` / `id,label` (+ optional annotator) -> (rows for `Store.add_labels`, problems).
    A path is relative to the images folder (or absolute, inside it)."""
    path, store, classes = Path(path), project.store, project.classes
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TodalError(f"No file at {path}; check the path.") from None
    except UnicodeDecodeError:
        raise TodalError(f"{path} is not a UTF-8 text file; export it as CSV (path,label).") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise TodalError(f"{path} is empty; write one 'path,label' row per labeled image.")
    by_path = store.ids_by_path()
    n = store.num_samples()
    index = {c: i for i, c in enumerate(classes)}
    start, key = 0, None
    head = [h.strip().lower() for h in rows[0]]
    if "label" in head and ("path" in head or "id" in head):
        start, key = 1, ("path" if "path" in head else "id")
        col = {"key": head.index(key), "label": head.index("label"),
               "annotator": head.index("annotator") if "annotator" in head else None}
    else:
        col = {"key": 0, "label": 1, "annotator": 2}
    out, problems = [], []
    for line, row in enumerate(rows[start:], start + 1):
        if not row or not any(c.strip() for c in row):
            continue
        try:
            ref, label = row[col["key"]].strip(), row[col["label"]].strip()
        except IndexError:
            problems.append(f"line {line}: {','.join(row)!r} is not 'path,label'")
            continue
        if key == "id" or (key is None and ref.isdigit() and ref not in by_path):
            sample = int(ref) if ref.isdigit() and int(ref) < n else None
        else:
            rel = Path(ref)
            if rel.is_absolute() and rel.is_relative_to(project.images):
                rel = rel.relative_to(project.images)
            sample = by_path.get(rel.as_posix())
        if sample is None:
            problems.append(f"line {line}: {ref!r} is not an image of this project (use its path relative to the "
                            f"images folder, or its id)")
            continue
        if label not in index:
            problems.append(f"line {line}: label {label!r} is not a class ({', '.join(classes)})")
            continue
        a = col.get("annotator")
        annotator = row[a].strip() if a is not None and a < len(row) and row[a].strip() else None
        out.append({"sample": sample, "class": index[label], "annotator": annotator})
    return out, problems


MAX_CLASS_NAME = 100


def check_class_names(names: list[str], fix: str) -> None:
    """Refuse a class name that is not one safe folder name (it names a folder in the imagefolder export)."""
    for name in names:
        why = ("it holds a path separator" if "/" in name or "\\" in name else
               "it is . or .." if name in (".", "..") else
               "it holds a control character" if any(unicodedata.category(c) == "Cc" for c in name) else
               "it starts or ends with a space" if name != name.strip() else
               f"it is longer than {MAX_CLASS_NAME} characters" if len(name) > MAX_CLASS_NAME else None)
        if why:
            raise TodalError(f"Class name {name!r} is not usable as a folder name ({why}); {fix}")


def export_imagefolder(store, images: Path, out: str | os.PathLike, classes: list[str]) -> int:
    """Copy every labeled (classification) image to `out/<class>/`; returns how many."""
    check_class_names(classes, "this project was made before class names were checked; start a new project "
                               "with safe class names (todal init NEW --images DIR --classes a,b,c).")
    out = Path(out)
    top = Path(os.path.normpath(out))
    paths = {i: p for i, p, *_ in store.samples()}
    n = 0
    for sample, (kind, cls, _, _) in sorted(store.current().items()):
        if kind != "label" or cls is None:
            continue
        dest = out / classes[cls] / paths[sample].replace("/", "__")
        if Path(os.path.normpath(dest)).parent.parent != top:  # lexical: `..` in a name cannot climb out
            raise TodalError(f"Sample {sample}'s export path {dest} leaves {out}/<class>/; re-index the project "
                             "with `todal init`.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(images / paths[sample], dest)
        n += 1
    return n


def read_masks(folder: str | os.PathLike, project) -> tuple[list[dict], list[str]]:
    """Masks `folder/<relative image path, extension .png>` -> label rows (the mask copied into the project
    as `masks/<id>.png`), and problems (no image, wrong size, values outside the classes)."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise TodalError(f"Mask folder {folder} does not exist; pass a folder of PNG masks named like the images.")
    c = len(project.classes)
    by_stem = {str(Path(p).with_suffix("")): i for p, i in project.store.ids_by_path().items()}
    paths = {i: p for i, p, *_ in project.store.samples()}
    rows, problems = [], []
    for mask in sorted(folder.rglob("*.png")):
        rel = str(mask.relative_to(folder).with_suffix("").as_posix())
        sample = by_stem.get(rel)
        if sample is None:
            problems.append(f"{mask.relative_to(folder)}: no image {rel}.* in the project")
            continue
        try:
            with Image.open(mask) as im:
                m = np.asarray(im)
            with Image.open(project.images / paths[sample]) as im:
                size = im.size
        except (OSError, ValueError, SyntaxError) as e:
            problems.append(f"{mask.relative_to(folder)}: cannot be read ({type(e).__name__})")
            continue
        if m.ndim != 2 or (m.shape[1], m.shape[0]) != size:
            problems.append(f"{mask.relative_to(folder)}: a {m.shape} mask for a {size[0]}x{size[1]} image; masks are "
                            "single-channel PNGs of the image's size")
            continue
        bad = (m >= c) & (m != 255)
        if bad.any():
            problems.append(f"{mask.relative_to(folder)}: pixel value {int(m[bad][0])} is not a class id in [0, {c}) "
                            "or 255 (ignore)")
            continue
        dest = Path("masks") / f"{sample}.png"
        write_with(project.root / dest, lambda f: Image.fromarray(m.astype(np.uint8)).save(f, format="PNG"))
        rows.append({"sample": sample, "class": None, "mask": dest.as_posix(), "annotator": None})
    return rows, problems
