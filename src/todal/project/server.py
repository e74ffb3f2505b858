"""The labeling page of `todal annotate`: a Starlette app over the project's `Store`.

Endpoints (JSON in and out; every error is 4xx with `{"error": "<one line: what is wrong, the fix>"}`
and changes nothing):

    GET  /                    the page (static/index.html)
    GET  /static/{file}       app.js, app.css
    POST /api/session         {}: with `Authorization: Bearer TOKEN`, sets the token cookie (the page's login)
    GET  /api/config          {name, task, classes, keys: {classes: [key per class], skip, unsure, undo}}
    POST /api/next            {annotator, n=5} -> {items: [Item + image url]}: leases up to n samples
    GET  /api/image/{id}      the sample's image bytes (path from the store, kept inside the images root)
    POST /api/label           {sample, class (name or index), annotator, request?} -> {id, duplicate}
    POST /api/unsure          {sample, annotator, request?} -> {id, duplicate}: records kind "unsure"
    POST /api/skip            {sample, annotator} -> {}: the sample goes to the others, never back to them
    POST /api/undo            {annotator} -> {item | null}: takes back their latest answer, leased back to them
    GET  /api/progress        Store.progress(): batch done/left, per class, per annotator

With a token every request but the page's files needs it: the cookie /api/session sets (HttpOnly,
SameSite=Strict) or an `Authorization: Bearer` header; else 401. The printed URL carries the token in
its fragment (`/#token=T`), which browsers never send, so no access log or proxy sees it; the page trades
it for the cookie. Without a token the app answers only loopback Host names (no DNS rebinding) and POSTs
must be `application/json` (no cross-site form posts).
"""

from __future__ import annotations

import argparse
import copy
import errno
import json
import logging
import mimetypes
import secrets
import socket
import string
import sys
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import TodalError
from .store import DB_NAME, Store

STATIC = Path(__file__).parent / "static"
COOKIE = "todal_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Action keys; class keys are 1-9, then the letters these leave free.
SKIP_KEY, UNSURE_KEY, UNDO_KEYS = "s", "u", ("Backspace", "z")
MAX_BATCH = 50
MIN_TOKEN = 16
MAX_BODY = 64 * 1024  # an answer is a small JSON object


def class_keys(n: int) -> list[str | None]:
    """The keyboard shortcut of each of `n` classes: 1-9, then a, b, c... without the action keys."""
    letters = [c for c in string.ascii_lowercase if c not in (SKIP_KEY, UNSURE_KEY, *UNDO_KEYS)]
    keys = [str(i) for i in range(1, 10)] + letters
    return [keys[i] if i < len(keys) else None for i in range(n)]


class BadRequest(Exception):
    """A 4xx answer with a one-line message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


async def _body(request: Request, fields: dict[str, type | tuple]) -> dict:
    """The request's JSON object, checked against `fields` (name -> type; optional names end in '?')."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest("The request body must be JSON; send it with Content-Type: application/json.", 415)
    try:
        body = json.loads(await _read(request))
    except ValueError:
        raise BadRequest("The request body is not valid JSON; send a JSON object like "
                         '{"annotator": "ana", "sample": 3}.') from None
    if not isinstance(body, dict):
        raise BadRequest(f"The request body must be a JSON object. Got {type(body).__name__}.")
    out = {}
    for name, kind in fields.items():
        key = name.rstrip("?")
        if key not in body or body[key] is None:
            if name.endswith("?"):
                continue
            raise BadRequest(f"The request body misses {key!r}; add it (expected {_kind_name(kind)}).")
        value = body[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise BadRequest(f"The {key!r} field must be {_kind_name(kind)}. Got {_short(value)}.")
        out[key] = value
    if "annotator" in out:
        out["annotator"] = _annotator(out["annotator"])
    if "request" in out and not 0 < len(out["request"]) <= 128:
        raise BadRequest("The 'request' field must be a non-empty id of at most 128 characters, "
                         "like crypto.randomUUID().")
    return out


async def _read(request: Request) -> bytes:
    """The request body, refused (413) past MAX_BODY bytes without reading the rest (chunked bodies too)."""
    too_large = BadRequest(f"The request body must be at most {MAX_BODY // 1024} KiB; send one answer per "
                           "request.", 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", str: "a string"}[k] for k in kinds)


def _annotator(name: str) -> str:
    name = name.strip()
    if not 0 < len(name) <= 64 or not name.isprintable():
        raise BadRequest(f"The 'annotator' field must be a name of 1 to 64 printable characters. Got {_short(name)}.")
    return name


class _Gate:
    """ASGI middleware: the token (cookie or bearer) on all but the page's files when one is set, else loopback
    Host names only."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if self.token is None:
            host = request.url.hostname or ""
            if host.strip("[]") not in LOOPBACK:
                return await _error(f"Host {host!r} is not a loopback name; open the page at 127.0.0.1, "
                                    "or serve with a token.", 403)(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope["path"] == "/" or scope["path"].startswith("/static/"):  # no data: loads, then logs in
            return await self.app(scope, receive, send)
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return await _error("This labeling server needs its token; open the URL it printed "
                                "(http://HOST:PORT/#token=...) or send Authorization: Bearer TOKEN.",
                                401)(scope, receive, send)
        return await self.app(scope, receive, send)


def make_app(project_dir, *, token: str | None = None, lease_ttl: float = 600.0) -> Starlette:
    """The labeling app over `project_dir`/project.db; refuses a segmentation project or an unreadable file."""
    if token == "":
        raise TodalError("An empty token lets anyone in; pass a token of at least 16 characters, or none "
                         "(loopback only).")
    project_dir = Path(project_dir)
    store = Store(project_dir / DB_NAME)
    meta = store.meta()
    if meta.get("task", "classification") != "classification":
        raise TodalError(f"{project_dir} is a {meta.get('task')} project; the labeling page labels classification "
                         "projects only; export its queue and label the masks in a segmentation tool.")
    classes: list[str] = list(meta["classes"])
    root = Path(meta["images"]).resolve()
    index = {c: i for i, c in enumerate(classes)}
    name = meta.get("name") or project_dir.resolve().name
    # One writer at a time in this process: threads queue on a lock instead of SQLite's busy handler,
    # which sleeps in growing steps and slowed concurrent annotators down (benchmarks/labeling-session).
    writing = threading.Lock()

    def locked(fn, *args):
        with writing:
            return fn(*args)

    def sample_id(value: int) -> int:
        if not 0 <= value < 2**63 or store.sample_path(value) is None:  # SQLite integers are 64-bit
            raise BadRequest(f"Unknown sample id {value}; take ids from /api/next.", 404)
        return value

    def class_index(value: int | str) -> int:
        if isinstance(value, str):
            if value not in index:
                raise BadRequest(f"Unknown class {value!r}; use one of: {', '.join(classes)} (or its index).")
            return index[value]
        if not 0 <= value < len(classes):
            raise BadRequest(f"Class index {value} is outside [0, {len(classes)}); classes: {', '.join(classes)}.")
        return value

    def config(request: Request) -> JSONResponse:
        return JSONResponse({"name": name, "task": meta.get("task", "classification"), "classes": classes,
                             "keys": {"classes": class_keys(len(classes)), "skip": SKIP_KEY,
                                      "unsure": UNSURE_KEY, "undo": list(UNDO_KEYS)}})

    def item(it) -> dict:
        return {**it.to_dict(), "image": f"/api/image/{it.sample}"}

    async def next_(request: Request) -> JSONResponse:
        b = await _body(request, {"annotator": str, "n?": int})
        n = b.get("n", 5)
        if not 1 <= n <= MAX_BATCH:
            raise BadRequest(f"The 'n' field must be an integer in [1, {MAX_BATCH}]. Got {n}.")
        items = await run_in_threadpool(locked, store.lease, b["annotator"], n, lease_ttl)
        return JSONResponse({"items": [item(it) for it in items]})

    def image(request: Request) -> Response:
        sid = sample_id(request.path_params["sample_id"])
        rel = store.sample_path(sid)
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise BadRequest(f"The image of sample {sid} is not under the images root {root}; "
                             "re-index the project with `todal init`.", 404)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"cache-control": "private, max-age=3600",
                                                             "x-content-type-options": "nosniff"})

    async def answer(request: Request, kind: str) -> JSONResponse:
        fields = {"sample": int, "annotator": str, "request?": str}
        if kind == "label":
            fields["class"] = (int, str)
        b = await _body(request, fields)

        def write():
            sid = sample_id(b["sample"])
            cls = class_index(b["class"]) if kind == "label" else None
            return store.add_label(sid, cls, annotator=b["annotator"], source="web", kind=kind,
                                   request=b.get("request"))

        row, duplicate = await run_in_threadpool(locked, write)
        return JSONResponse({"id": row, "duplicate": duplicate})

    async def label(request: Request) -> JSONResponse:
        return await answer(request, "label")

    async def unsure(request: Request) -> JSONResponse:
        return await answer(request, "unsure")

    async def skip(request: Request) -> JSONResponse:
        b = await _body(request, {"sample": int, "annotator": str})

        def write():
            store.skip(sample_id(b["sample"]), b["annotator"])

        await run_in_threadpool(locked, write)
        return JSONResponse({})

    async def undo(request: Request) -> JSONResponse:
        b = await _body(request, {"annotator": str})
        it = await run_in_threadpool(locked, store.undo, b["annotator"], lease_ttl)
        return JSONResponse({"item": item(it) if it else None})

    def session(request: Request) -> JSONResponse:
        # The gate has checked the bearer token: hand the page a cookie, which JS cannot read.
        response = JSONResponse({})
        if token is not None:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    def progress(request: Request) -> JSONResponse:
        return JSONResponse(store.progress())

    def page(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def bad_request(request: Request, exc: Exception) -> JSONResponse:
        return _error(str(exc), exc.status if isinstance(exc, BadRequest) else 400)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.detail if exc.status_code != 404 else f"No such page or endpoint: {request.url.path}; "
                      "see the endpoints in todal.project.server.", exc.status_code)

    routes = [
        Route("/", page),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/session", session, methods=["POST"]),
        Route("/api/config", config),
        Route("/api/next", next_, methods=["POST"]),
        Route("/api/image/{sample_id:int}", image),
        Route("/api/label", label, methods=["POST"]),
        Route("/api/unsure", unsure, methods=["POST"]),
        Route("/api/skip", skip, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/api/progress", progress),
    ]
    app = Starlette(routes=routes, exception_handlers={BadRequest: bad_request, TodalError: bad_request,
                                                       HTTPException: http_error})
    app.add_middleware(_Gate, token=token)
    app.state.store = store
    return app


def check_port(host: str, port: int, example: int = 8765) -> None:
    """Refuse, in one line, a port uvicorn could not listen on (it would log its start-up, then exit 3)."""
    if not 0 <= port <= 65535:
        raise TodalError(f"--port must be in [0, 65535]. Got {port}; pick a free port, e.g. --port {example}.")
    # The socket uvicorn makes: IPv6 for a host with ':', SO_REUSEADDR so a port in TIME_WAIT counts as free.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise TodalError(f"Cannot listen on {host}:{port}: port {port} is in use (another todal server?); "
                                 "stop that program, or pick another port with --port.") from None
            raise TodalError(f"Cannot listen on {host}:{port} ({e.strerror or e}); check --host, or pick another "
                             "port with --port.") from None


class _PathOnly(logging.Filter):
    """Drops the query string from uvicorn's access-log lines: no secret sent in a query reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(a.split("?", 1)[0] if isinstance(a, str) and a.startswith("/") else a
                                for a in record.args)
        return True


def log_config() -> dict:
    """uvicorn's logging, with `_PathOnly` on the access logger."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["path_only"] = {"()": _PathOnly}
    config["loggers"]["uvicorn.access"]["filters"] = ["path_only"]
    return config


def url_host(host: str) -> str:
    """`host` as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def run(app, host: str, port: int, quiet: bool) -> None:
    """uvicorn serving `app` until interrupted: the access log (query strings dropped) unless `quiet`."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=not quiet,
                log_config=log_config())


def module_main(prog: str, serve_fn, add_arguments, options, argv: list[str] | None) -> int:
    """`python -m todal.project.<server>`: parse `argv` with the CLI's own arguments, serve, exit 2 on a TodalError."""
    p = argparse.ArgumentParser(prog=prog, description=serve_fn.__doc__)
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        serve_fn(a.project, **options(a))
    except TodalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def serve(project_dir, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          quiet: bool = False) -> None:
    """Serve the labeling page until interrupted; a host other than loopback needs a token (one is made)."""

    if token is not None and len(token) < MIN_TOKEN:
        raise TodalError(f"--token must be at least {MIN_TOKEN} characters (a short one can be guessed). Got "
                         f"{len(token)}; omit --token to get a generated one.")
    if host not in LOOPBACK and token is None:
        token = secrets.token_urlsafe(24)
    app = make_app(project_dir, token=token)
    check_port(host, port)
    print(f"Labeling page: http://{url_host(host)}:{port}/" + (f"#token={token}" if token else ""), flush=True)
    run(app, host, port, quiet)


def main(argv: list[str] | None = None) -> int:
    from .cli import add_annotate_arguments, annotate_options

    return module_main("python -m todal.project.server", serve, add_annotate_arguments, annotate_options, argv)


if __name__ == "__main__":
    sys.exit(main())
