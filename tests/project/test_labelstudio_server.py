"""The Label Studio round trip against a real Label Studio 1.23 server on 127.0.0.1.

The server runs from `.venv-label-studio` (scripts/setup_label_studio.sh; another path through the env
var TODAL_LABEL_STUDIO) with its data in a temp folder. It creates its admin user and API token at start
(`label-studio start --username --password --user-token`); `--enable-legacy-api-token` lets that token
authenticate as `Authorization: Token <t>` (1.23 turns legacy tokens off for new organizations).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from lskit import CLASSES, make_project, other_class

from todal.project.labelstudio import export_tasks, label_config, read_export

httpx = pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
LABEL_STUDIO = Path(os.environ.get("TODAL_LABEL_STUDIO", REPO / ".venv-label-studio" / "bin" / "label-studio"))
START_TIMEOUT = 150.0  # the first start runs Django's migrations (~25 s on 2 cores)


@dataclass
class Server:
    url: str
    client: "httpx.Client"
    files: Path  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not LABEL_STUDIO.exists():
        why = f"Label Studio is not installed at {LABEL_STUDIO}; run scripts/setup_label_studio.sh"
        if os.environ.get("CI"):
            pytest.fail(why + " (CI must run this test)")
        pytest.skip(why)
    base = tmp_path_factory.mktemp("label-studio")
    files = base / "files"
    files.mkdir()
    port, token = _free_port(), secrets.token_hex(20)
    # A clean environment: Label Studio also reads unprefixed HOST, PORT, USERNAME, ... variables.
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT") if k in os.environ}
    env.update(HOME=str(base), LABEL_STUDIO_BASE_DATA_DIR=str(base / "data"),
               LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true", LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(files),
               # No traffic beyond 127.0.0.1: no version check, analytics, error reports or resource downloads.
               LABEL_STUDIO_LATEST_VERSION_CHECK="false", LABEL_STUDIO_COLLECT_ANALYTICS="false",
               LABEL_STUDIO_SENTRY_DSN="", LABEL_STUDIO_FRONTEND_SENTRY_DSN="",
               LABEL_STUDIO_CONVERTER_DOWNLOAD_RESOURCES="false", LABEL_STUDIO_DEBUG="false")
    log_path = base / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
             "--username", "todal@example.org", "--password", secrets.token_hex(12), "--user-token", token,
             "--enable-legacy-api-token"],
            env=env, cwd=base, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: teardown kills the runserver child too
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=60.0, trust_env=False)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Label Studio exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Label Studio did not answer in {START_TIMEOUT:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(url, client, files)
    finally:
        client.close()
        _stop(proc)


def _ok(response, status=(200, 201)):
    assert response.status_code in status, f"{response.request.method} {response.request.url}: " \
                                           f"{response.status_code} {response.text[:500]}"
    return response.json()


def test_label_studio_round_trip(server, tmp_path):
    api = server.client
    assert _ok(api.get("/api/version"))["release"] == "1.23.2"
    store = make_project(server.files, n=5)  # images under the document root: files/images
    tasks_json = tmp_path / "tasks.json"
    assert export_tasks(store, tasks_json) == 5
    tasks_file = json.loads(tasks_json.read_text())

    project = _ok(api.post("/api/projects", json={"title": "todal demo", "label_config": label_config(CLASSES)}))
    pid = project["id"]
    # The documented local-files setup: a source storage on the images folder lets Label Studio serve them.
    _ok(api.post("/api/storages/localfiles/", json={"project": pid, "path": str(server.files / "images"),
                                                     "title": "todal images", "use_blob_urls": False}))
    first = tasks_file[0]["data"]
    image = api.get(first["image"])
    assert image.status_code == 200 and image.content == (server.files / "images" / first["path"]).read_bytes()

    imported = _ok(api.post(f"/api/projects/{pid}/import", json=tasks_file))
    assert (imported["task_count"], imported["prediction_count"]) == (5, 5)
    ls_tasks = _ok(api.get("/api/tasks", params={"project": pid, "page_size": 100}))["tasks"]
    by_todal = {t["data"]["todal_id"]: t for t in ls_tasks}
    assert sorted(by_todal) == sorted(t["data"]["todal_id"] for t in tasks_file)
    preds = _ok(api.get("/api/predictions/", params={"task": by_todal[first["todal_id"]]["id"]}))
    assert preds[0]["score"] == pytest.approx(tasks_file[0]["predictions"][0]["score"])

    # An annotator answers: classes that differ from the model's guesses; task 1 is answered, then corrected;
    # task 3 is skipped (a cancelled annotation); task 4 is left alone.
    k, want = len(CLASSES), {}
    for i, t in enumerate(tasks_file):
        sample = t["data"]["todal_id"]
        guess = CLASSES.index(t["predictions"][0]["result"][0]["value"]["choices"][0])
        answer = other_class(guess, k)

        def post(cls=None, cancelled=False):
            result = [] if cls is None else [{"from_name": "label", "to_name": "image", "type": "choices",
                                             "value": {"choices": [CLASSES[cls]]}}]
            _ok(api.post(f"/api/tasks/{by_todal[sample]['id']}/annotations/",
                         json={"result": result, "was_cancelled": cancelled}))
        if i == 1:
            post(guess)
            time.sleep(0.01)
        if i == 3:
            post(cancelled=True)
        elif i < 4:
            post(answer)
            want[sample] = answer

    export = api.get(f"/api/projects/{pid}/export", params={"exportType": "JSON"})
    assert export.status_code == 200, export.text[:500]
    export_path = tmp_path / "export.json"
    export_path.write_bytes(export.content)
    rows, problems = read_export(export_path, store)
    skipped = tasks_file[3]["data"]["todal_id"]
    assert problems == [f"task {by_todal[skipped]['id']} (todal_id {skipped}): only cancelled (skipped) annotations"]
    assert store.add_labels(rows, source="label-studio") == (3, 0)
    user = str(_ok(api.get("/api/current-user/whoami"))["id"])
    assert store.current() == {s: ("label", c, None, user) for s, c in want.items()}
    assert [h["source"] for s in want for h in store.history(s)] == ["label-studio"] * 3
