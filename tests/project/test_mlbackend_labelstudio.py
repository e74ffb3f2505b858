"""todal ml-backend against a real Label Studio 1.23.2 on 127.0.0.1, through Label Studio's API only.

One scenario, in order (the tests share it and run in file order): connect the backend to a Label Studio
project; import tasks four ways (todal's export, local-files URLs, an upload by name, an upload of a copy
under another name) and one image that is not in the project; Label Studio retrieves todal's predictions;
its Data Manager, ordered by prediction score, lists todal's queue first; annotations made in Label Studio
reach the store through the webhook Label Studio made for the backend; they start a step in the
background, whose predictions Label Studio then retrieves (the backend asks, with LABEL_STUDIO_URL and
LABEL_STUDIO_API_KEY) and whose version becomes the project's; ordering and uncertainty sampling follow it.

Label Studio refuses ML backends and webhooks on 127.0.0.1 unless ML_BLOCK_LOCAL_IP=false and
SSRF_PROTECTION_ENABLED=false (its SSRF protection), as README says.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from lskit import free_port, label_studio
from mlkit import CLASSES, make_project, start_backend
from PIL import Image

from todal.inference import predict as run_model
from todal.project.core import Project
from todal.project.labelstudio import export_tasks, label_config
from todal.project.mlbackend import NO_SAMPLE

httpx = pytest.importorskip("httpx")

LOCAL = {"ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false"}
RETRAIN_EVERY = 4


@dataclass
class Scene:
    api: "httpx.Client"
    root: Path          # the todal project
    truth: dict
    backend_url: str
    base: Path
    pid: int = 0
    sample_of: dict = field(default_factory=dict)  # Label Studio task id -> sample id (None: not in the project)
    sent: dict = field(default_factory=dict)       # sample -> class index annotated in Label Studio (None: deleted)


def _ok(response, status=(200, 201)):
    assert response.status_code in status, f"{response.request.method} {response.request.url}: " \
                                           f"{response.status_code} {response.text[:500]}"
    return response.json() if response.content else None


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    base = tmp_path_factory.mktemp("ls-ml")
    with label_studio(base, LOCAL) as ls:
        project, truth = make_project(ls.files, n=36, seed_batch=12)
        project.store.close()
        api = httpx.Client(base_url=ls.url, headers={"Authorization": f"Token {ls.token}"}, timeout=120.0,
                           trust_env=False)
        # the backend's key: a personal access token (a JWT refresh token), what 1.23 gives new users
        key = _ok(api.post("/api/token/"))["token"]
        assert key.count(".") == 2
        port = free_port()
        backend = start_backend(project.root, port, "--retrain-every", str(RETRAIN_EVERY), "--budget", "8",
                                env={"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": key},
                                log=base / "backend.log")
        try:
            yield Scene(api, project.root, truth, f"http://127.0.0.1:{port}", base)
        finally:
            api.close()
            stop_backend(backend)


def stop_backend(proc) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except Exception:
        proc.kill()
        proc.wait(10)


def tasks_of(scene: Scene, ordering: str | None = None) -> list[dict]:
    query = {"ordering": [ordering]} if ordering else {}
    return _ok(scene.api.get("/api/tasks", params={"project": scene.pid, "fields": "all", "page_size": 1000,
                                                   "query": json.dumps(query)}))["tasks"]


def predictions(scene: Scene) -> dict[int, list[dict]]:
    """Label Studio task id -> every prediction it holds, of every model version."""
    out = {}
    for t in tasks_of(scene):
        out[t["id"]] = _ok(scene.api.get("/api/predictions/", params={"task": t["id"]}))
    return out


def wait_for(what: str, check, timeout: float = 180.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def expected_scores(root: Path, step: int) -> torch.Tensor:
    """The documented score of every sample for the model of `step` (0: before any model)."""
    project = Project(root)
    n = project.store.num_samples()
    if step:
        probs = torch.cat([lg.softmax(1) for _, lg in run_model(project.model(step), project.dataset(),
                                                                torch.arange(n))])
        score = 1 + probs.max(1).values.double()
    else:
        probs, score = None, torch.ones(n, dtype=torch.float64)
    order = project.store.queue_order()
    score[torch.tensor(order)] = torch.arange(len(order), dtype=torch.float64) / len(order)
    return score, probs


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# --- the scenario ----------------------------------------------------------------------------------

def test_connecting_the_backend_sets_it_up_and_makes_its_webhook(scene):
    api = scene.api
    assert _ok(api.get("/api/version"))["release"] == "1.23.2"
    pid = _ok(api.post("/api/projects", json={"title": "todal ml", "label_config": label_config(CLASSES)}))["id"]
    scene.pid = pid
    _ok(api.post("/api/storages/localfiles/", json={"project": pid, "path": str(scene.root.parent / "images"),
                                                     "title": "todal images", "use_blob_urls": False}))
    ml = _ok(api.post("/api/ml", json={"url": scene.backend_url, "project": pid, "title": "todal"}))
    assert (ml["state"], ml["model_version"]) == ("CO", "todal-step-0-no-model")
    hooks = _ok(api.get("/api/webhooks", params={"project": pid}))
    assert [(h["url"], h["send_payload"], h["send_for_all_actions"]) for h in hooks] == \
        [(scene.backend_url + "/webhook", True, True)]


def test_label_studio_retrieves_todals_predictions_for_tasks_imported_every_way(scene):
    api, pid, root = scene.api, scene.pid, scene.root
    project = Project(root)
    samples = {p: i for i, p, *_ in project.store.samples()}
    exported = scene.base / "tasks.json"
    export_tasks(project.store, exported)  # the seed batch, with todal_id and path
    queued = {t["data"]["todal_id"] for t in json.loads(exported.read_text())}
    assert _ok(api.post(f"/api/projects/{pid}/import", json=json.loads(exported.read_text())))["task_count"] == 12
    by_name, by_copy = [p for p, i in samples.items() if p.startswith("b/") and i not in queued][:2]
    plain = [{"data": {"image": f"/data/local-files/?d=images/{p}"}} for p, i in samples.items()
             if i not in queued and p not in (by_name, by_copy)]
    _ok(api.post(f"/api/projects/{pid}/import", json=plain))
    images = scene.root.parent / "images"
    foreign = png(np.random.default_rng(99).integers(0, 256, (12, 12), dtype=np.uint8))
    uploads = ((Path(by_name).name, (images / by_name).read_bytes()), ("copy.png", (images / by_copy).read_bytes()),
               ("foreign.png", foreign))
    for name, raw in uploads:
        _ok(api.post(f"/api/projects/{pid}/import", files={"file": (name, raw, "image/png")}))
    # Label Studio's Data Manager action "Retrieve predictions" (the button; the backend also asks it itself)
    _ok(api.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                 json={"selectedItems": {"all": True, "excluded": []}}))

    tasks = tasks_of(scene)
    assert len(tasks) == 36 - 2 + 3
    for t in tasks:
        d = t["data"]
        if "todal_id" in d:
            scene.sample_of[t["id"]] = d["todal_id"]
        elif "?d=images/" in d["image"]:
            scene.sample_of[t["id"]] = samples[d["image"].split("?d=images/", 1)[1]]
        else:
            name = d["image"].rsplit("-", 1)[1]
            scene.sample_of[t["id"]] = {Path(by_name).name: samples[by_name], "copy.png": samples[by_copy]}.get(name)
    score, _ = expected_scores(root, 0)
    preds = predictions(scene)
    for tid, sample in scene.sample_of.items():
        (p,) = [p for p in preds[tid] if p["model_version"] == "todal-step-0-no-model"][:1]
        assert p["result"] == []
        assert p["score"] == pytest.approx(NO_SAMPLE if sample is None else float(score[sample])), (tid, sample)
    st = Project(root).status()
    assert st["unmatched"]["count"] == 1 and st["unmatched"]["examples"][0][1].startswith(f"project {pid} task ")
    # with its API key the backend made its version the project's: the one the Data Manager orders by
    wait_for("the project's model version", lambda: _ok(api.get(f"/api/projects/{pid}"))["model_version"]
             == "todal-step-0-no-model", timeout=60)


def test_the_data_manager_ordered_by_prediction_score_lists_todals_queue_first(scene):
    order = Project(scene.root).store.queue_order()
    listed = [scene.sample_of[t["id"]] for t in tasks_of(scene, "tasks:predictions_score")]
    assert listed[: len(order)] == order
    assert listed[-1] is None  # the image that is not in the project
    assert sorted(listed[len(order):-1]) == sorted(set(scene.sample_of.values()) - set(order) - {None})


def test_annotations_made_in_label_studio_reach_the_store_through_the_webhook(scene):
    api, root = scene.api, scene.root
    store = Project(root).store
    holdout = {i for i, *_rest, h in store.samples() if h}
    task_of = {s: t for t, s in scene.sample_of.items()}
    seed = [s for s in Project(root).store.queue_order() if s not in holdout][:3]
    user = str(_ok(api.get("/api/current-user/whoami"))["id"])

    def answer(sample, cls):
        result = [{"from_name": "label", "to_name": "image", "type": "choices",
                   "value": {"choices": [CLASSES[cls]]}}]
        return _ok(api.post(f"/api/tasks/{task_of[sample]}/annotations/", json={"result": result}))["id"]

    def current():
        return {s: (k, c) for s, (k, c, _m, a) in Project(root).store.current().items()}

    # the class is the truth's neighbour for the first, so a label that ignored the answer would show
    first = answer(seed[0], (scene.truth[store.sample_path(seed[0])] + 1) % 3)
    second = answer(seed[1], scene.truth[store.sample_path(seed[1])])
    wait_for("two labels", lambda: len(current()) == 2, timeout=10, every=0.05)
    fixed = scene.truth[store.sample_path(seed[0])]
    _ok(api.patch(f"/api/annotations/{first}/", json={"result": [{"from_name": "label", "to_name": "image",
                                                                   "type": "choices",
                                                                   "value": {"choices": [CLASSES[fixed]]}}]}))
    _ok(api.delete(f"/api/annotations/{second}/"), status=(204,))
    wait_for("the update and the deletion", lambda: current() == {seed[0]: ("label", fixed), seed[1]: ("undo", None)},
             timeout=10, every=0.05)
    answer(seed[2], scene.truth[store.sample_path(seed[2])])  # the 4th label row: a step starts
    wait_for("the third label", lambda: current().get(seed[2], (None,))[0] == "label", timeout=10, every=0.05)
    rows = [h for s in seed for h in Project(root).store.history(s)]
    assert {h["source"] for h in rows} == {"label-studio"} and {h["annotator"] for h in rows} == {user}
    scene.sent = {seed[0]: fixed, seed[1]: None, seed[2]: scene.truth[store.sample_path(seed[2])]}


def test_the_step_runs_in_the_background_and_its_predictions_replace_the_old_ones(scene):
    api, pid = scene.api, scene.pid
    health = wait_for("step 1", lambda: (h := httpx.get(scene.backend_url + "/health").json())["model_version"]
                      == "todal-step-1" and h["step"]["last"] and h, timeout=300)
    assert health["step"]["last"]["error"] is None
    project = Project(scene.root)
    step = project.store.steps()[1]
    assert {s for s, (k, *_r) in project.store.current(step["snapshot"]).items() if k == "label"} == \
        {s for s, c in scene.sent.items() if c is not None}
    # no call from the test: the backend asked Label Studio to retrieve step 1's predictions and use them
    wait_for("the project's model version todal-step-1",
             lambda: _ok(api.get(f"/api/projects/{pid}"))["model_version"] == "todal-step-1", timeout=120)
    score, probs = expected_scores(scene.root, 1)
    preds = predictions(scene)
    for tid, sample in scene.sample_of.items():
        new = [p for p in preds[tid] if p["model_version"] == "todal-step-1"]
        assert len(new) >= 1, tid
        assert new[0]["score"] == pytest.approx(NO_SAMPLE if sample is None else float(score[sample]), abs=1e-5)
        if sample is None:
            assert new[0]["result"] == []
        else:
            assert new[0]["result"][0]["value"]["choices"] == [CLASSES[int(probs[sample].argmax())]]
    # the backend deletes the earlier todal versions' predictions there: the new ones replace them
    wait_for("the old predictions' deletion", lambda: {p["model_version"] for t in tasks_of(scene)
                                                       for p in t["predictions"]} == {"todal-step-1"}, timeout=60)


def test_after_the_step_label_studios_order_is_todals_ranking(scene):
    api, pid = scene.api, scene.pid
    score, _ = expected_scores(scene.root, 1)
    listed = [scene.sample_of[t["id"]] for t in tasks_of(scene, "tasks:predictions_score")]
    want = sorted((s for s in scene.sample_of.values() if s is not None), key=lambda s: float(score[s]))
    assert listed == want + [None]
    assert listed[:8] == Project(scene.root).store.queue_order()[:8]  # step 1's queue, by rank
    # Label Studio's uncertainty sampling serves the lowest score first: todal's next sample
    _ok(api.patch(f"/api/projects/{pid}", json={"sampling": "Uncertainty sampling"}))
    nxt = _ok(api.get(f"/api/projects/{pid}/next"))
    assert scene.sample_of[nxt["id"]] == Project(scene.root).store.queued()[0].sample
