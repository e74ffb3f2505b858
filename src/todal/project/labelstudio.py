"""Label Studio interchange: the queue out as Label Studio's import JSON, the answers back from its export.

Out: `export_tasks` writes one task per queued sample, by rank, to a JSON file, and the labeling config
beside it (`tasks.json` -> `tasks.label_config.xml`). Each task is
`{"data": {"image": URL, "todal_id": id, "path": relative path, "todal_score": acquisition score},
"predictions": [...]}`; the prediction carries the model's top guess as a `choices` result, and its `score`
is the task's position in todal's queue / the number of tasks, in [0, 1): the ML backend's definition
(`mlbackend.py`), so Label Studio's "Uncertainty sampling" and an ascending sort by "Prediction score" serve
todal's order.

Back: `read_export` reads Label Studio's JSON export (Export -> JSON, or
`GET /api/projects/{id}/export?exportType=JSON`) into rows for `Store.add_labels(rows, source="label-studio")`.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import quoteattr

from ..atomic import write_text
from ..errors import TodalError
from .store import Item, Store

IMAGE_KEY = "image"    # data key the <Image> tag reads ($image)
FROM_NAME = "label"    # name of the <Choices> tag
TO_NAME = "image"      # name of the <Image> tag
LOCAL_FILES = "local-files"
DATA_URI = "data-uri"


def label_config(classes: list[str]) -> str:
    """Label Studio's labeling config: one image, one single choice per class (names XML-escaped)."""
    if not classes:
        raise TodalError("A Label Studio config needs at least one class; got none. Set the project's classes.")
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    return (f'<View>\n  <Image name="{TO_NAME}" value="${IMAGE_KEY}"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="false">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def config_path(out_path: str | os.PathLike) -> Path:
    """Where `export_tasks(store, out_path)` writes the labeling config: `tasks.json` -> `tasks.label_config.xml`."""
    return Path(out_path).with_suffix(".label_config.xml")


def export_tasks(store: Store, out_path: str | os.PathLike, *, image_url: str = LOCAL_FILES,
                 document_root: str | os.PathLike | None = None) -> int:
    """Write the queued samples, by rank, as Label Studio import JSON; returns the number of tasks.

    `image_url` says how Label Studio reaches the images:
      - "local-files": `/data/local-files/?d=<path relative to document_root>` (default root: the parent
        of the project's images folder). Start Label Studio with
        `LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<document_root>`
        and, in the project, add a Local Files source storage whose absolute path is the images folder
        (no sync needed): Label Studio serves a file only under such a storage, and refuses a storage
        path equal to the document root, hence the parent.
      - "data-uri": the image inline, base64 (small images; no server configuration).
      - any other string: a URL prefix, joined with the sample's relative path.
    """
    meta = store.meta()
    images = Path(meta["images"])
    if image_url == LOCAL_FILES:
        root = Path(document_root) if document_root is not None else images.parent
        try:
            prefix = images.relative_to(root).as_posix()
        except ValueError:
            raise TodalError(f"The images folder {images} is not under the document root {root}; pass a "
                             "document_root that contains it (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT).") from None

        def url(path: str) -> str:
            return "/data/local-files/?d=" + quote(str(PurePosixPath(prefix) / path), safe="/")
    elif document_root is not None:
        raise TodalError(f"document_root applies only to image_url='local-files'; got image_url={image_url!r}. "
                         "Drop document_root or use image_url='local-files'.")
    elif image_url == DATA_URI:
        def url(path: str) -> str:
            return _data_uri(images / path)
    elif image_url:
        def url(path: str) -> str:
            return image_url.rstrip("/") + "/" + quote(path, safe="/")
    else:
        raise TodalError("image_url must be 'local-files', 'data-uri' or a URL prefix; got ''. "
                         "Pass one of them.")

    classes = meta["classes"]
    items = sorted(store.queued(), key=lambda it: (-it.step, it.rank, it.sample))
    tasks = []
    for position, it in enumerate(items):
        task = {"data": {IMAGE_KEY: url(it.path), "todal_id": it.sample, "path": it.path}}
        if it.score is not None:
            task["data"]["todal_score"] = float(it.score)
        task["predictions"] = [_prediction(it, classes, position / len(items))]
        tasks.append(task)
    write_text(out_path, json.dumps(tasks, indent=1) + "\n")
    write_text(config_path(out_path), label_config(classes))
    return len(tasks)


def _prediction(item: Item, classes: list[str], order: float) -> dict:
    """The model's guess (if any) and `order`, the task's queue position / n, as the prediction's score."""
    result = []
    if item.guesses:
        cls, prob = item.guesses[0]
        result.append({"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                       "value": {"choices": [classes[int(cls)]]}, "score": float(prob)})
    return {"model_version": f"todal-step-{item.step}-{item.strategy}" if item.strategy
            else f"todal-step-{item.step}", "result": result, "score": order}


def _data_uri(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TodalError(f"Cannot read {path} to inline it as a data URI ({e.strerror}); restore the file or "
                         "export with image_url='local-files'.") from None
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")


# --- reading Label Studio's export ---------------------------------------------------------------

def read_export(path: str | os.PathLike, store: Store) -> tuple[list[dict], list[str]]:
    """Label Studio's JSON export -> (rows for `store.add_labels`, one-line problems for tasks not used).

    A task maps back to a sample by `data.todal_id`, else `data.path`, else the image URL's file path.
    Its latest non-cancelled annotation counts; the annotator is `completed_by` (an id, or a user's email).
    """
    path = Path(path)
    tasks = _load_export(path)
    classes = store.classes
    index = {c: i for i, c in enumerate(classes)}
    by_path = store.ids_by_path()
    known = set(by_path.values())
    rows, problems = [], []
    for n, task in enumerate(tasks):
        where = f"task {task.get('id', f'#{n}')}"
        sample = _sample_of(task, by_path, known)
        if sample is None:
            problems.append(f"{where}: no todal sample matches its data (todal_id, path or image URL); "
                            "was it exported from this project?")
            continue
        where += f" (todal_id {sample})"
        live = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not live:
            why = "only cancelled (skipped) annotations" if task.get("annotations") else "no annotation"
            problems.append(f"{where}: {why}")
            continue
        ann = max(live, key=_recency)
        chosen = [c for r in ann.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"
                  for c in (r.get("value") or {}).get("choices") or []]
        if not chosen:
            problems.append(f"{where}: the latest annotation has no choice")
            continue
        if len(chosen) > 1:
            problems.append(f"{where}: several choices {chosen}; a todal label is one class")
            continue
        if chosen[0] not in index:
            problems.append(f"{where}: choice {chosen[0]!r} is not a class ({', '.join(classes)})")
            continue
        row = {"sample": sample, "class": index[chosen[0]], "annotator": _annotator(ann.get("completed_by"))}
        if ann.get("id") is not None and (ann.get("updated_at") or ann.get("created_at")):
            # Importing the same export twice records each answer once.
            row["request"] = f"label-studio:{sample}:{ann['id']}:{ann.get('updated_at') or ann.get('created_at')}"
        rows.append(row)
    return rows, problems


def _load_export(path: Path) -> list[dict]:
    fix = "export the Label Studio project as JSON (Export -> JSON, or /api/projects/<id>/export?exportType=JSON)"
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise TodalError(f"Cannot read the Label Studio export {path} ({e.strerror}); check the path.") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TodalError(f"{path} is not JSON; {fix}.") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict)
                                              for t in tasks):
        raise TodalError(f"{path} is not a Label Studio JSON export (a list of tasks with data); {fix}.")
    if tasks and not any("annotations" in t for t in tasks):
        raise TodalError(f"{path} holds tasks without annotations (an import file, or JSON_MIN); {fix}.")
    return tasks


def _sample_of(task: dict, by_path: dict[str, int], known: set[int]) -> int | None:
    data = task["data"]
    tid, path = data.get("todal_id"), data.get("path")
    if isinstance(tid, str) and tid.isdigit():
        tid = int(tid)
    if isinstance(tid, int) and not isinstance(tid, bool) and tid in known:
        # An id from another project would label the wrong image: its path must agree when given.
        return tid if not isinstance(path, str) or by_path.get(path) == tid else None
    if isinstance(path, str) and path in by_path:
        return by_path[path]
    image = data.get(IMAGE_KEY)
    if isinstance(image, str) and not image.startswith("data:"):
        return _match_url(image, by_path)
    return None


def _match_url(url: str, by_path: dict[str, int]) -> int | None:
    """The sample whose relative path is the longest trailing part of the URL's file path."""
    parts = urlsplit(url)
    file = parse_qs(parts.query).get("d", [None])[0] or unquote(parts.path)
    segments = PurePosixPath(file).parts
    for k in range(1, len(segments) + 1):  # longest suffix first
        candidate = "/".join(segments[k - 1:])
        if candidate in by_path:
            return by_path[candidate]
    return None


def _recency(ann: dict) -> tuple:
    stamp = ann.get("updated_at") or ann.get("created_at")
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else float("-inf")
    except (AttributeError, ValueError):
        when = float("-inf")
    ident = ann.get("id")
    return when, ident if isinstance(ident, int) else -1


def _annotator(completed_by) -> str:
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or "label-studio")
    return "label-studio" if completed_by is None else str(completed_by)
