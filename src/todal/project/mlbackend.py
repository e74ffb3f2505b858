"""todal as Label Studio's ML backend (`todal ml-backend PROJECT`): Label Studio is the labeling front end,
the project's store stays the one home of the labels, and todal's model and queue order the tasks.

Routes, as Label Studio 1.23 calls them (JSON in and out; a malformed request gets a 4xx with
`{"error": "<one line: what is wrong, the fix>"}` and writes nothing):

    GET  /health (and /)  {"status": "UP", "model_class": "todal", "model_version", "step": {...}}
    POST /setup           {"project": "<id>.<created>", "schema": XML, ...} -> {"model_version"}
    POST /predict         {"tasks": [...], "project", "label_config", "params"} -> {"results": [one per task]}
    POST /webhook         {"action", "project", "annotation", "task"}: Label Studio posts every event of the
                          project here (it makes the webhook when the backend is connected)
    POST /train           the training request of Label Studio's older protocol: as START_TRAINING
    GET  /versions        {"versions": [the model version of every finished step]}

Predictions. A task maps to a sample by `data.todal_id` (tasks from `todal export --format label-studio`;
its `path` must agree), else `data.path`, else the image URL's file path (local files `?d=...`, any URL
whose path ends with the sample's relative path), else the file name (uploads, `/data/upload/<p>/<hash>-NAME`,
when one sample has that name), else the image's SHA-256 (a data URI; a file fetched from Label Studio
with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY). The prediction's choice is the latest finished step's
top class (none before the first step) with its probability; the model version is `todal-step-<s>`
(`todal-step-0-no-model` before the first step) and changes with every step. A task no sample matches
gets an empty prediction and is recorded; `todal status` reports it.

Score: Label Studio serves the LOWEST prediction score first (uncertainty sampling, and the Data
Manager's ascending "Prediction score" order), so ascending score is todal's selection order:
    queued samples   score = position / Q in [0, 1): every sample a step queued, newest step first, by rank
                     (the order `todal annotate` serves), Q of them; fixed for a model version
    other samples    score = 1 + the top class's probability, in (1, 2]: after every queued one, the least sure
                     first (1.0 before the first step)
    no sample        score = 2.0 (the task's image is not in the project)

Labels. ANNOTATION_CREATED / ANNOTATION_UPDATED / ANNOTATIONS_CREATED write the annotation's choice to the
store (source "label-studio", annotator: the Label Studio user's email, else id), committed before the
answer; a skipped or emptied annotation, and ANNOTATIONS_DELETED, withdraw it (an "undo" row). START_TRAINING,
and every `retrain_every` new labels, run `Project.step` in a background thread, one at a time; a step
killed midway is finished when the backend starts again. A finished step is a new model version; with
LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY set, the backend then asks Label Studio to retrieve the new
predictions, makes the version the project's (the one Label Studio shows and orders by) and deletes the
predictions of earlier todal versions there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import TodalError, check_int
from .server import LOOPBACK, MIN_TOKEN, BadRequest, check_port, module_main, run, url_host
from .store import DB_NAME, Store

log = logging.getLogger("todal.mlbackend")

SOURCE = "label-studio"
PORT = 9090
MAX_BODY = 64 * 2**20   # a /predict of every task of a 5,000-image project is a few MB
NOT_QUEUED = 1.0        # scores of samples no step queued start here
NO_SAMPLE = 2.0         # the score of a task whose image is not in the project
LABEL_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
UPLOAD_NAME = re.compile(r"^[0-9a-f]{8}-")  # Label Studio prefixes an uploaded file's name with 8 hex digits
CONFIG_FIX = "paste the labeling config that `todal export --format label-studio` writes"


def version_of(step: int) -> str:
    """The model version of the predictions after finished step `step`."""
    return f"todal-step-{step}" if step > 0 else "todal-step-0-no-model"


# --- the labeling config ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelConfig:
    """What a prediction needs from Label Studio's labeling config: the <Choices> tag's name (from_name), the
    <Image> it labels (to_name) and the task data key that holds the image."""

    from_name: str
    to_name: str
    image_key: str
    choices: tuple[str, ...]


def parse_config(xml: str, classes: list[str]) -> LabelConfig:
    """The config's single-image classification, checked against the project's classes (one line if not)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise BadRequest(f"The labeling config is not XML ({e}); {CONFIG_FIX}.", 422) from None
    tags = [el for el in root.iter() if el.tag == "Choices"]
    if len(tags) != 1:
        raise BadRequest(f"The labeling config has {len(tags)} <Choices> tags; a todal project classifies each "
                         f"image into one class list: {CONFIG_FIX}.", 422)
    tag = tags[0]
    images = {el.get("name"): el.get("value") or "" for el in root.iter() if el.tag == "Image"}
    to_name = tag.get("toName", "")
    if to_name not in images or not images[to_name].startswith("$"):
        raise BadRequest(f"The <Choices> tag labels {to_name!r}, which is no <Image value=\"$KEY\"> of the labeling "
                         f"config; {CONFIG_FIX}.", 422)
    choices = tuple(c.get("value", "") for c in tag.iter("Choice"))
    if sorted(choices) != sorted(classes):
        raise BadRequest(f"The labeling config's choices ({', '.join(choices)}) are not the project's classes "
                         f"({', '.join(classes)}); {CONFIG_FIX}.", 422)
    return LabelConfig(tag.get("name", ""), to_name, images[to_name][1:], choices)


# --- Label Studio's API, for the calls the backend makes itself -------------------------------------

class LabelStudio:
    """The Label Studio server at `url`, reached with an API key: a legacy token (`Authorization: Token`) or a
    personal access token (a JWT refresh token, traded at /api/token/refresh/ for short-lived access tokens)."""

    def __init__(self, url: str, key: str, timeout: float = 300.0):
        self.url, self._key, self.timeout = url.rstrip("/"), key, timeout
        self._access: tuple[str, float] | None = None

    @classmethod
    def from_env(cls) -> LabelStudio | None:
        url, key = os.environ.get("LABEL_STUDIO_URL", ""), os.environ.get("LABEL_STUDIO_API_KEY", "")
        if bool(url) != bool(key):
            raise TodalError("Set both LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (Label Studio's Account & Settings "
                             "-> Access Token), or neither.")
        return cls(url, key) if url else None

    def _auth(self) -> str:
        if self._key.count(".") != 2:
            return f"Token {self._key}"
        if self._access is None or self._access[1] < time.monotonic():
            answer = self._call("POST", "/api/token/refresh/", {"refresh": self._key}, auth=None)
            self._access = (json.loads(answer)["access"], time.monotonic() + 120)  # access tokens live ~5 min
        return f"Bearer {self._access[0]}"

    def _call(self, method: str, path: str, body=None, *, auth: str | None = "key") -> bytes:
        url = urljoin(self.url + "/", path.lstrip("/"))
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if auth is not None:
            headers["Authorization"] = self._auth()
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as r:  # noqa: S310 (the user's own server)
            return r.read()

    def retrieve_predictions(self, project: int) -> None:
        """Label Studio's Data Manager action "Retrieve predictions" on every task: it asks /predict for the tasks
        without a prediction of the backend's current model version."""
        self._call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={int(project)}",
                   {"selectedItems": {"all": True, "excluded": []}})

    def set_model_version(self, project: int, version: str) -> None:
        """The project's model version: the predictions Label Studio shows, orders by score and samples by."""
        self._call("PATCH", f"/api/projects/{int(project)}", {"model_version": version})

    def model_versions(self, project: int) -> list[str]:
        """The model versions of the project's predictions."""
        found = json.loads(self._call("GET", f"/api/projects/{int(project)}/model-versions/"))
        return list(found) if isinstance(found, dict) else [r["model_version"] for r in found]

    def delete_predictions(self, project: int, version: str) -> None:
        self._call("DELETE", f"/api/projects/{int(project)}/model-versions/", {"model_version": version})

    def image(self, url: str) -> bytes | None:
        """The bytes of an image Label Studio serves (a path such as /data/upload/..., or a URL on its host)."""
        parts, own = urlsplit(url), urlsplit(self.url)
        if parts.scheme and (parts.scheme, parts.netloc) != (own.scheme, own.netloc):
            return None  # another host's URL: not ours to fetch with this key
        try:
            return self._call("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        except (urllib.error.URLError, OSError, ValueError):
            return None


# --- tasks to samples ----------------------------------------------------------------------------------

class Matcher:
    """Label Studio task data -> the project's sample id (see the module docstring), cached per image."""

    def __init__(self, store: Store, label_studio: LabelStudio | None):
        self.store, self.label_studio = store, label_studio
        self._stamp = None
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        stamp = self.store.samples_stamp()
        if stamp == self._stamp:
            return
        samples = self.store.samples()
        self.ok = {i for i, _, _, _, st, _ in samples if st == "ok"}
        self.by_path = {p: i for i, p, *_ in samples}
        self.by_sha: dict[str, int] = {}
        names: dict[str, list[int]] = {}
        for i, p, sha, _, st, _ in samples:
            if st == "ok":
                self.by_sha.setdefault(sha, i)
            names.setdefault(PurePosixPath(p).name, []).append(i)
        self.by_name = {n: ids[0] for n, ids in names.items() if len(ids) == 1}
        self.known = len(samples)
        self._cache: dict[tuple, int | None] = {}
        self._stamp = stamp

    def match(self, tasks: list[dict], image_key: str) -> list[int | None]:
        """The sample of each task's `data` (None: not in the project)."""
        with self._lock:
            self._refresh()
            out = []
            for t in tasks:
                data = t["data"]
                key = (repr(data.get(image_key)), repr(data.get("todal_id")), repr(data.get("path")))
                if key not in self._cache:
                    self._cache[key] = self._one(data, image_key)
                out.append(self._cache[key])
            return out

    def _one(self, data: dict, image_key: str) -> int | None:
        tid, path = data.get("todal_id"), data.get("path")
        if isinstance(tid, str) and tid.isdigit():
            tid = int(tid)
        if isinstance(tid, int) and not isinstance(tid, bool) and 0 <= tid < self.known:
            # an id from another project would label the wrong image: its path must agree when given
            return tid if not isinstance(path, str) or self.by_path.get(path) == tid else None
        if isinstance(path, str) and path in self.by_path:
            return self.by_path[path]
        image = data.get(image_key)
        if not isinstance(image, str) or not image:
            return None
        if image.startswith("data:"):
            return self._by_content(_data_uri(image))
        parts = urlsplit(image)
        file = parse_qs(parts.query).get("d", [""])[0] or unquote(parts.path)
        segments = PurePosixPath(file).parts
        for k in range(1, len(segments)):  # the longest trailing part first
            candidate = "/".join(segments[k:])
            if candidate in self.by_path:
                return self.by_path[candidate]
        name = UPLOAD_NAME.sub("", segments[-1]) if segments else ""
        if name in self.by_name:
            return self.by_name[name]
        if self.label_studio is not None:
            return self._by_content(self.label_studio.image(image))
        return None

    def _by_content(self, raw: bytes | None) -> int | None:
        return None if raw is None else self.by_sha.get(hashlib.sha256(raw).hexdigest())


def _data_uri(uri: str) -> bytes | None:
    head, _, payload = uri.partition(",")
    try:
        return base64.b64decode(payload, validate=True) if head.endswith(";base64") else unquote(payload).encode()
    except (binascii.Error, ValueError):
        return None


# --- the model, once per step ---------------------------------------------------------------------------

@dataclass
class Served:
    """What one model version serves: the step's model (None before the first step) over the project's input
    pipeline, and the score of each queued sample (NaN: not queued)."""

    step: int
    version: str
    model: torch.nn.Module | None
    data: object
    queued: torch.Tensor  # [N] float


class Models:
    """The latest finished step's model and scores, loaded when a step finishes (or the images change)."""

    def __init__(self, root: Path, device: torch.device):
        self.root, self.device = root, device
        self._served: Served | None = None
        self._lock = threading.Lock()

    def latest_step(self, store: Store) -> int:
        return max((r["step"] for r in store.steps() if r["state"] == "done"), default=0)

    def current(self, store: Store) -> Served:
        step, n = self.latest_step(store), store.num_samples()
        with self._lock:
            s = self._served
            if s is None or s.step != step or len(s.queued) != n:
                self._served = s = self._load(step)
            return s

    def _load(self, step: int) -> Served:
        from .core import Project

        project = Project(self.root)
        try:
            data = project.dataset()
            model = project.model(step).to(self.device) if step > 0 else None
            order = torch.tensor(project.store.queue_order(), dtype=torch.long)
            queued = torch.full((project.store.num_samples(),), math.nan, dtype=torch.float64)
            queued[order] = torch.arange(len(order), dtype=torch.float64) / max(1, len(order))
        finally:
            project.store.close()
        log.info("serving %s", version_of(step))
        return Served(step, version_of(step), model, data, queued)

    @torch.no_grad()
    def predict(self, served: Served, samples: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(top class [n], its probability [n], score [n])` of `samples`, one batched pass."""
        from ..inference import predict

        ids = torch.tensor(samples, dtype=torch.long)
        if served.model is None or len(ids) == 0:
            top, prob = torch.full((len(ids),), -1, dtype=torch.long), torch.zeros(len(ids))
            confidence = torch.zeros(len(ids), dtype=torch.float64)
        else:
            probs = torch.cat([logits.softmax(1) for _, logits in
                               predict(served.model, served.data, ids, batch_size=256, device=self.device)])
            prob, top = probs.max(1)  # [n], [n]
            confidence = prob.double()
        score = served.queued[ids]
        score = torch.where(score.isnan(), NOT_QUEUED + confidence, score)
        return top, prob, score


# --- the background step -------------------------------------------------------------------------------

class Steps:
    """`Project.step` in a background thread, one at a time: `request()` asks for one (asks made while one runs
    give one more after it). A step left unfinished (a kill) is finished first, with the options it started with."""

    def __init__(self, root: Path, *, budget: int, strategy: str, device: str | None, every: int,
                 on_done=lambda step: None):
        self.root, self.budget, self.strategy, self.device, self.every = root, budget, strategy, device, every
        self.on_done = on_done
        self.running: int | None = None  # the step number being run
        self.last: dict = {}
        self._wanted = False
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="todal-step", daemon=True)

    def start(self, store: Store) -> None:
        steps = store.steps()
        if steps and steps[-1]["state"] != "done":
            log.info("step %d did not finish: finishing it", steps[-1]["step"])
            self._wanted = True
        self._thread.start()

    def request(self) -> bool:
        """Ask for a step; False when one is running already (the ask gives one more after it)."""
        with self._cond:
            self._wanted = True
            self._cond.notify()
            return self.running is None

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()

    def due(self, store: Store) -> bool:
        """Whether `every` labels came from Label Studio since the latest step read its labels."""
        steps = store.steps()
        return self.every > 0 and bool(steps) and store.labels_since(steps[-1]["snapshot"], SOURCE) >= self.every

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                self._wanted = False
            self._run()

    def _run(self) -> None:
        from .core import Project

        t0, project = time.perf_counter(), None
        try:
            project = Project(self.root)
            row = project.store.steps()[-1]
            if row["state"] != "done":  # resume with the options it started with, or Project.step refuses
                c = row["config"]
                args = {"budget": c["budget"], "strategy": c["strategy"], "options": c["options"], "semi": c["semi"],
                        "train": c["train"]}
            else:
                args = {"budget": self.budget, "strategy": self.strategy}
            self.running = row["step"] + (row["state"] == "done")
            log.info("step %d: training", self.running)
            metrics = project.step(**args, device=self.device)
            self.last = {"step": metrics["step"], "seconds": round(time.perf_counter() - t0, 3), "error": None,
                         "finished": time.time()}
            log.info("step %d done in %.1fs: now serving %s", metrics["step"], self.last["seconds"],
                     version_of(metrics["step"]))
            self.running = None
            self.on_done(metrics["step"])
            if self.due(project.store):
                self.request()
        except TodalError as e:
            self.last = {"step": self.running, "error": str(e), "finished": time.time()}
            log.warning("step %s not run: %s", self.running, e)
        except Exception as e:  # a crash of one step must not stop the backend; it is logged and reported
            self.last = {"step": self.running, "error": f"{type(e).__name__}: {e}", "finished": time.time()}
            log.exception("step %s failed", self.running)
        finally:
            self.running = None
            if project is not None:
                project.store.close()


class Sync:
    """With Label Studio's API at hand: after a new model version (or new tasks), ask Label Studio to retrieve the
    predictions and make the version the project's, for each Label Studio project seen; in a background thread."""

    def __init__(self, label_studio: LabelStudio, version):
        self.label_studio, self.version = label_studio, version
        self.synced: dict[int, str] = {}
        self.errors: dict[int, str] = {}
        self._todo: set[int] = set()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="todal-sync", daemon=True)
        self._thread.start()

    def request(self, projects, *, unless_synced: bool = False) -> None:
        with self._cond:
            version = self.version()
            new = {p for p in projects if not (unless_synced and self.synced.get(p) == version)}
            if new:
                self._todo |= new
                self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._todo:
                    self._cond.wait()
            time.sleep(0.5)  # let the request that asked finish (Label Studio calls /setup inside its own requests)
            with self._cond:
                todo, self._todo = self._todo, set()
            for project in sorted(todo):
                version = self.version()
                self.synced[project] = version  # before the calls: Label Studio's /setup inside them asks no sync
                try:
                    self.label_studio.retrieve_predictions(project)
                    self.label_studio.set_model_version(project, version)
                    for old in self.label_studio.model_versions(project):  # a step's predictions replace the last's
                        if old.startswith("todal-step-") and old != version:
                            self.label_studio.delete_predictions(project, old)
                    self.errors.pop(project, None)
                    log.info("Label Studio project %d: predictions of %s retrieved", project, version)
                except Exception as e:  # Label Studio down, a key refused, an answer not understood: logged, not fatal
                    self.errors[project] = f"{type(e).__name__}: {e}"
                    log.warning("Label Studio project %d: could not retrieve the predictions of %s (%s); check "
                                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY", project, version, e)


# --- the app --------------------------------------------------------------------------------------------

def _error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


async def _json(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest("The request body must be JSON; send it with Content-Type: application/json.", 415)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise BadRequest(f"The request body must be at most {MAX_BODY >> 20} MiB; send fewer tasks per request.", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest(f"The request body must be at most {MAX_BODY >> 20} MiB; send fewer tasks per "
                             "request.", 413)
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except ValueError:
        raise BadRequest("The request body is not valid JSON; send the JSON object Label Studio sends.") from None
    if not isinstance(body, dict):
        raise BadRequest(f"The request body must be a JSON object. Got {type(body).__name__}.")
    return body


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _field(obj: dict, key: str, kind, where: str, *, optional: bool = False):
    value = obj.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = {int: "an integer", str: "a string", list: "a list", dict: "an object", bool: "true or false"}
        expected = " or ".join(names[k] for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadRequest(f"{where}: {key!r} must be {expected}. Got {_short(value)}; send the payload Label "
                         "Studio sends.", 422)
    return value


def _project_id(value, where: str) -> int:
    """Label Studio's project id: an int, or the '<id>.<created>' string its ML API sends."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.split(".", 1)[0].isdigit():
        return int(value.split(".", 1)[0])
    if isinstance(value, dict) and isinstance(value.get("id"), int) and not isinstance(value.get("id"), bool):
        return value["id"]
    raise BadRequest(f"{where}: 'project' must be Label Studio's project id ('<id>.<created>' or an object with "
                     f"an id). Got {_short(value)}.", 422)


def _annotator(completed_by) -> str:
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or SOURCE)
    return SOURCE if completed_by is None else str(completed_by)


class _Gate:
    """ASGI middleware: Basic auth on every route when credentials are set (Label Studio's BASIC_AUTH_USER /
    BASIC_AUTH_PASS), else loopback Host names only (no DNS rebinding)."""

    def __init__(self, app, credentials: tuple[str, str] | None):
        self.app = app
        self.expected = None if credentials is None else \
            "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if self.expected is None:
            host = (request.url.hostname or "").strip("[]")
            if host not in LOOPBACK:
                return await _error(f"Host {host!r} is not a loopback name; connect Label Studio to "
                                    "http://127.0.0.1:PORT, or serve with BASIC_AUTH_USER and BASIC_AUTH_PASS.",
                                    403)(scope, receive, send)
        elif not secrets.compare_digest(request.headers.get("authorization", "").encode(), self.expected.encode()):
            return await _error("This ML backend needs Basic auth: connect it in Label Studio with Basic Auth and the "
                                "backend's BASIC_AUTH_USER / BASIC_AUTH_PASS (webhooks: put them in the URL, "
                                "http://USER:PASS@HOST:PORT).", 401,
                                {"WWW-Authenticate": 'Basic realm="todal"'})(scope, receive, send)
        return await self.app(scope, receive, send)


class Backend:
    """The state behind the routes: the project's store, the matcher, the models, the step worker and the sync."""

    def __init__(self, project_dir, *, retrain_every: int = 100, budget: int = 100, strategy: str = "cod",
                 device: str | None = None, label_studio: LabelStudio | None = None):
        from ..strategies import get as get_strategy

        self.root = Path(project_dir)
        self.store = Store(self.root / DB_NAME)
        meta = self.store.meta()
        if meta.get("task", "classification") != "classification":
            raise TodalError(f"{self.root} is a {meta.get('task')} project; the ML backend serves classification "
                             "projects; export its queue and label the masks in a segmentation tool.")
        self.every = check_int("retrain_every", "todal ml-backend", retrain_every, lo=0,
                               fix="Pass --retrain-every 0 to train only when Label Studio asks.")
        check_int("budget", "todal ml-backend", budget, lo=1)
        get_strategy(strategy)  # an unknown strategy is refused now, not at the first step
        self.classes: list[str] = list(meta["classes"])
        self.index = {c: i for i, c in enumerate(self.classes)}
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.models = Models(self.root, dev)
        self.matcher = Matcher(self.store, label_studio)
        self.sync = Sync(label_studio, lambda: self.version()) if label_studio is not None else None
        self.steps = Steps(self.root, budget=budget, strategy=strategy, device=device, every=self.every,
                           on_done=self._step_done)
        self.projects: set[int] = set()  # Label Studio projects seen
        self.configs: dict[str, LabelConfig] = {}
        self.default_config = LabelConfig("label", "image", "image", tuple(self.classes))
        self.writing = threading.Lock()  # one writer in this process: threads queue here, not in SQLite's busy wait
        self.steps.start(self.store)

    def version(self) -> str:
        return version_of(self.models.latest_step(self.store))

    def config(self, xml) -> LabelConfig:
        if xml is None:
            return self.default_config
        if not isinstance(xml, str):
            raise BadRequest(f"The labeling config must be an XML string. Got {_short(xml)}.", 422)
        if xml not in self.configs:
            self.configs = {**self.configs, xml: parse_config(xml, self.classes)} if len(self.configs) < 64 else \
                {xml: parse_config(xml, self.classes)}
        return self.configs[xml]

    def _step_done(self, step: int) -> None:
        if self.sync is not None:
            self.sync.request(set(self.projects))

    def seen(self, project: int) -> None:
        self.projects.add(project)

    def setup(self, project: int) -> str:
        """Label Studio connects (or checks) the backend for `project`: the model version it serves."""
        self.seen(project)
        if self.sync is not None:
            self.sync.request({project}, unless_synced=True)
        return self.version()

    # --- predictions ---------------------------------------------------------------------------
    def predict(self, tasks: list[dict], config: LabelConfig, project: int | None) -> list[dict]:
        samples = self.matcher.match(tasks, config.image_key)
        served = self.models.current(self.store)
        ok = [j for j, s in enumerate(samples) if s is not None and s in self.matcher.ok]
        top, prob, score = self.models.predict(served, [samples[j] for j in ok])
        results = [{"result": [], "score": NO_SAMPLE, "model_version": served.version} for _ in tasks]
        for k, j in enumerate(ok):
            r = results[j]
            r["score"] = float(score[k])
            if top[k] >= 0:
                r["result"] = [{"from_name": config.from_name, "to_name": config.to_name, "type": "choices",
                                "value": {"choices": [self.classes[int(top[k])]]}, "score": round(float(prob[k]), 4)}]
        self._note(tasks, samples, project, config.image_key)
        return results

    def _note(self, tasks, samples, project, image_key) -> None:
        """Record the tasks no sample matched (and forget the ones that match now)."""
        missing = [(self._task_key(project, t), f"{_short(t['data'].get(image_key))}") for t, s in zip(tasks, samples)
                   if s is None]
        found = [self._task_key(project, t) for t, s in zip(tasks, samples) if s is not None]
        known = self.store.unmatched_keys(SOURCE)
        new = [(k, d) for k, d in missing if k not in known]
        gone = [k for k in found if k in known]
        if new or gone:
            with self.writing:
                if new:
                    self.store.note_unmatched(new, source=SOURCE)
                if gone:
                    self.store.clear_unmatched(gone, source=SOURCE)

    @staticmethod
    def _task_key(project, task) -> str:
        return f"project {project if project is not None else '?'} task {task.get('id', '?')}"

    # --- labels --------------------------------------------------------------------------------
    def labels(self, body: dict, action: str) -> dict:
        """Write what an annotation event says; everything is checked before anything is written."""
        project = _project_id(body["project"], action) if body.get("project") is not None else None
        config = self.config(body["project"].get("label_config")) if isinstance(body.get("project"), dict) else \
            self.default_config
        if action == "ANNOTATIONS_CREATED":
            annotations = _field(body, "annotation", list, action)
            tasks = {t.get("id"): t for t in _field(body, "task", list, action) if isinstance(t, dict)}
        else:
            annotations = [_field(body, "annotation", dict, action)]
            tasks = {None: _field(body, "task", dict, action)}
        parsed = []
        for a in annotations:
            if not isinstance(a, dict):
                raise BadRequest(f"{action}: each annotation must be an object. Got {_short(a)}.", 422)
            ident = _field(a, "id", int, f"{action} annotation")
            task = tasks.get(None) or tasks.get(a.get("task"))
            if task is None:
                raise BadRequest(f"{action}: annotation {ident} names task {_short(a.get('task'))}, which the payload "
                                 "does not hold; send the payload Label Studio sends.", 422)
            _field(task, "data", dict, f"{action} task")
            pid = project if project is not None else _project_id(a.get("project"), f"{action} annotation {ident}")
            cls = self._choice(a, config, action, ident)
            stamp = a.get("updated_at") or a.get("created_at")
            parsed.append((pid, ident, task, cls, _annotator(a.get("completed_by")),
                           stamp if isinstance(stamp, str) else None))
        samples = self.matcher.match([t for _, _, t, *_ in parsed], config.image_key)
        add, withdraw, unmatched = [], [], []
        for (pid, ident, task, cls, annotator, stamp), sample in zip(parsed, samples):
            key = f"{pid}:{ident}"
            if sample is None:
                unmatched.append((self._task_key(pid, task), _short(task["data"].get(config.image_key))))
            elif cls is None:
                withdraw.append(key)
            else:
                # the request id `todal import --format label-studio` gives the same answer: imported once
                request = f"{SOURCE}:{sample}:{ident}:{stamp}" if stamp else None
                add.append({"key": key, "sample": sample, "class": cls, "annotator": annotator, "request": request})
        with self.writing:
            written, duplicates = self.store.add_external(add, source=SOURCE) if add else (0, 0)
            withdrawn = self.store.withdraw_external(withdraw, source=SOURCE) if withdraw else 0
            if unmatched:
                self.store.note_unmatched(unmatched, source=SOURCE)
        if project is not None:
            self.seen(project)
        out = {"written": written, "duplicates": duplicates, "withdrawn": withdrawn, "unmatched": len(unmatched)}
        if written and self.steps.due(self.store):
            out["step"] = "started" if self.steps.request() else "queued"
        return out

    def _choice(self, annotation: dict, config: LabelConfig, action: str, ident: int) -> int | None:
        """The class an annotation gives; None for a skipped (cancelled) or empty one."""
        result = _field(annotation, "result", list, f"{action} annotation {ident}")
        if annotation.get("was_cancelled") is True:
            return None
        chosen = []
        for r in result:
            if not isinstance(r, dict) or r.get("type") != "choices" or r.get("from_name") != config.from_name:
                continue
            value = r.get("value")
            names = value.get("choices") if isinstance(value, dict) else None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise BadRequest(f"{action} annotation {ident}: a choices result's value must be "
                                 f"{{\"choices\": [names]}}. Got {_short(value)}.", 422)
            chosen += names
        if not chosen:
            return None
        if len(chosen) > 1:
            raise BadRequest(f"{action} annotation {ident}: several choices {chosen}; a todal label is one class: "
                             "make the <Choices> tag choice=\"single\".", 422)
        if chosen[0] not in self.index:
            raise BadRequest(f"{action} annotation {ident}: choice {chosen[0]!r} is not a class of the project "
                             f"({', '.join(self.classes)}); {CONFIG_FIX}.", 422)
        return self.index[chosen[0]]

    def deleted(self, body: dict) -> dict:
        project = _project_id(body.get("project"), "ANNOTATIONS_DELETED")
        annotations = _field(body, "annotations", list, "ANNOTATIONS_DELETED")
        keys = []
        for a in annotations:
            if not isinstance(a, dict):
                raise BadRequest(f"ANNOTATIONS_DELETED: each annotation must be an object with an id. Got {_short(a)}.",
                                 422)
            keys.append(f"{project}:{_field(a, 'id', int, 'ANNOTATIONS_DELETED annotation')}")
        with self.writing:
            withdrawn = self.store.withdraw_external(keys, source=SOURCE)
        return {"withdrawn": withdrawn}

    def health(self) -> dict:
        running, last = self.steps.running, self.steps.last
        out = {"status": "UP", "model_class": "todal", "model_version": self.version(),
               "step": {"running": running, "last": last or None, "retrain_every": self.every}}
        if self.sync is not None and self.sync.errors:
            out["label_studio_errors"] = {str(k): v for k, v in self.sync.errors.items()}
        return out

    def close(self) -> None:
        self.steps.stop()
        self.store.close()


def make_app(project_dir, *, credentials: tuple[str, str] | None = None, retrain_every: int = 100,
             budget: int = 100, strategy: str = "cod", device: str | None = None,
             label_studio: LabelStudio | None = None) -> Starlette:
    """The ML-backend app over `project_dir` (see the module docstring); its state is `app.state.backend`."""
    backend = Backend(project_dir, retrain_every=retrain_every, budget=budget, strategy=strategy, device=device,
                      label_studio=label_studio)

    def health(request: Request) -> JSONResponse:
        return JSONResponse(backend.health())

    async def setup(request: Request) -> JSONResponse:
        body = await _json(request)
        project = _project_id(body.get("project"), "/setup")
        backend.config(_field(body, "schema", str, "/setup"))
        return JSONResponse({"model_version": await run_in_threadpool(backend.setup, project)})

    async def predict(request: Request) -> JSONResponse:
        body = await _json(request)
        tasks = _field(body, "tasks", list, "/predict")
        for t in tasks:
            if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
                raise BadRequest(f"/predict: each task must be an object with a 'data' object. Got {_short(t)}.", 422)
        project = _project_id(body["project"], "/predict") if body.get("project") is not None else None
        config = backend.config(body.get("label_config"))
        _field(body, "params", dict, "/predict", optional=True)
        results = await run_in_threadpool(backend.predict, tasks, config, project)
        if project is not None:
            backend.seen(project)
        return JSONResponse({"results": results})

    async def webhook(request: Request) -> JSONResponse:
        body = await _json(request)
        action = _field(body, "action", str, "/webhook")
        if action in LABEL_ACTIONS:
            return JSONResponse({"status": "ok", **await run_in_threadpool(backend.labels, body, action)})
        if action == "ANNOTATIONS_DELETED":
            return JSONResponse({"status": "ok", **await run_in_threadpool(backend.deleted, body)})
        if action == "START_TRAINING":
            return JSONResponse({"status": "ok", "step": "started" if backend.steps.request() else "queued"})
        if action == "TASKS_CREATED" and backend.sync is not None and body.get("project") is not None:
            project = _project_id(body["project"], action)
            backend.seen(project)
            await run_in_threadpool(backend.sync.request, {project})
        return JSONResponse({"status": "ignored", "action": action})

    async def train(request: Request) -> JSONResponse:
        body = await _json(request)
        if body.get("project") is not None:
            backend.seen(_project_id(body["project"], "/train"))
        return JSONResponse({"status": "ok", "step": "started" if backend.steps.request() else "queued"})

    def versions(request: Request) -> JSONResponse:
        done = sorted({r["step"] for r in backend.store.steps() if r["state"] == "done"} | {0})
        return JSONResponse({"versions": [version_of(s) for s in done]})

    async def bad_request(request: Request, exc: Exception) -> JSONResponse:
        status = exc.status if isinstance(exc, BadRequest) else 422
        # Label Studio shows only "422 Client Error" of a refused call: the reason goes to this log
        log.warning("%s %s refused (%d): %s", request.method, request.url.path, status, " ".join(str(exc).split()))
        return _error(str(exc), status)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(f"No such endpoint: {request.url.path}; the ML backend serves /health, /setup, /predict, "
                          "/webhook, /train and /versions.", 404)
        return _error(f"{exc.detail}: {request.method} {request.url.path}; see todal.project.mlbackend.",
                      exc.status_code)

    routes = [Route("/", health), Route("/health", health), Route("/setup", setup, methods=["POST"]),
              Route("/predict", predict, methods=["POST"]), Route("/webhook", webhook, methods=["POST"]),
              Route("/train", train, methods=["POST"]), Route("/versions", versions)]
    app = Starlette(routes=routes, exception_handlers={BadRequest: bad_request, TodalError: bad_request,
                                                       HTTPException: http_error})
    app.add_middleware(_Gate, credentials=credentials)
    app.state.backend = backend
    return app


def credentials_from_env(host: str) -> tuple[str, str] | None:
    """BASIC_AUTH_USER and BASIC_AUTH_PASS (Label Studio's convention for ML backends); required beyond loopback."""
    user, password = os.environ.get("BASIC_AUTH_USER", ""), os.environ.get("BASIC_AUTH_PASS", "")
    if bool(user) != bool(password):
        raise TodalError("Set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither.")
    if password and len(password) < MIN_TOKEN:
        raise TodalError(f"BASIC_AUTH_PASS must be at least {MIN_TOKEN} characters (a short one can be guessed). Got "
                         f"{len(password)}; make one with "
                         "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`.")
    if host not in LOOPBACK and not user:
        raise TodalError(f"--host {host} lets other machines in: set BASIC_AUTH_USER and BASIC_AUTH_PASS (a password "
                         f"of at least {MIN_TOKEN} characters) and connect Label Studio with them, or bind 127.0.0.1.")
    return (user, password) if user else None


def serve(project_dir, *, host: str = "127.0.0.1", port: int = PORT, retrain_every: int = 100, budget: int = 100,
          strategy: str = "cod", device: str | None = None, quiet: bool = False) -> None:
    """Serve the project as Label Studio's ML backend until interrupted."""
    credentials = credentials_from_env(host)
    label_studio = LabelStudio.from_env()
    check_port(host, port, PORT)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    app = make_app(project_dir, credentials=credentials, retrain_every=retrain_every, budget=budget,
                   strategy=strategy, device=device, label_studio=label_studio)
    print(f"ML backend: http://{url_host(host)}:{port} serving {app.state.backend.version()}"
          + (" (Basic auth)" if credentials else "")
          + ("; Label Studio's API at " + label_studio.url if label_studio else
             "; set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to refresh Label Studio's predictions after each step"),
          flush=True)
    run(app, host, port, quiet)


def main(argv: list[str] | None = None) -> int:
    from .cli import add_ml_backend_arguments, ml_backend_options

    return module_main("python -m todal.project.mlbackend", serve, add_ml_backend_arguments, ml_backend_options,
                       argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
