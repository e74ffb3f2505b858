"""The Label Studio round trip against a real Label Studio 1.23 server on 127.0.0.1.

The server runs from `.venv-label-studio` (scripts/setup_label_studio.sh; another path through the env
var TODAL_LABEL_STUDIO) with its data in a temp folder. It creates its admin user and API token at start
(`label-studio start --username --password --user-token`); `--enable-legacy-api-token` lets that token
authenticate as `Authorization: Token <t>` (1.23 turns legacy tokens off for new organizations).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from lskit import CLASSES, label_studio, make_project, other_class

from todal.project.labelstudio import export_tasks, label_config, read_export

httpx = pytest.importorskip("httpx")


@dataclass
class Server:
    url: str
    client: "httpx.Client"
    files: Path  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with label_studio(tmp_path_factory.mktemp("label-studio")) as ls:
        client = httpx.Client(base_url=ls.url, headers={"Authorization": f"Token {ls.token}"}, timeout=60.0,
                              trust_env=False)
        try:
            yield Server(ls.url, client, ls.files)
        finally:
            client.close()


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
