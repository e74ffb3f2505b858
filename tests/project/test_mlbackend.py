"""The ML backend's contract, without Label Studio: the requests Label Studio 1.23.2 sends (captured, in
data/), the answers it needs, the labels they write, and malformed requests that must write nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest
import torch
from mlkit import CLASSES, annotation_event, body, make_project, requests, task
from serverkit import ThreadServer, snapshot
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from todal.errors import TodalError
from todal.inference import predict as run_model
from todal.project.labelstudio import read_export
from todal.project.mlbackend import (NO_SAMPLE, LabelStudio, credentials_from_env, make_app, parse_config,
                                     version_of)
from todal.project.server import BadRequest

CONFIG = body("setup")["schema"]


@pytest.fixture
def proj(tmp_path):
    project, truth = make_project(tmp_path)
    return project


def client(project, **kw) -> TestClient:
    app = make_app(project.root, **{"retrain_every": 0, **kw})
    c = TestClient(app, base_url="http://127.0.0.1:9090")
    c.backend = app.state.backend
    return c


@pytest.fixture
def api(proj):
    c = client(proj)
    yield c
    c.backend.close()


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def wait_step(backend, step: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (backend.steps.last or {}).get("step") != step or "seconds" not in backend.steps.last:
        assert time.monotonic() < deadline, f"step {step} did not finish: {backend.health()}"
        assert not (backend.steps.last or {}).get("error"), backend.steps.last
        time.sleep(0.05)
    assert backend.models.latest_step(backend.store) == step


def label_queue(project, truth, *, relabel=lambda c: c) -> None:
    rows = [{"sample": it.sample, "class": relabel(truth[it.path]), "annotator": "t"} for it in project.store.queued()]
    project.store.add_labels(rows, source="test")


def expected_scores(project, probs: torch.Tensor | None) -> torch.Tensor:
    """The documented score: position / Q among the queued samples, else 1 + the top probability (1 before a model)."""
    n = project.store.num_samples()
    order = project.store.queue_order()
    score = torch.ones(n) if probs is None else 1 + probs.max(1).values
    score[torch.tensor(order)] = torch.arange(len(order), dtype=torch.float) / len(order)
    return score


# --- health, setup ---------------------------------------------------------------------------------

def test_health_and_setup_answer_the_model_version(api):
    h = ok(api.get("/health"))
    assert h["status"] == "UP" and h["model_version"] == "todal-step-0-no-model"
    assert ok(api.get("/"))["status"] == "UP"
    captured = requests()["setup"]
    assert ok(api.post(captured["path"], json=captured["body"])) == {"model_version": "todal-step-0-no-model"}
    assert ok(api.get("/versions")) == {"versions": ["todal-step-0-no-model"]}


def test_the_config_gives_the_names_of_the_prediction():
    cfg = parse_config(CONFIG, CLASSES)
    assert (cfg.from_name, cfg.to_name, cfg.image_key) == ("label", "image", "image")
    other = CONFIG.replace('name="label"', 'name="klass"').replace('name="image"', 'name="pic"') \
        .replace('toName="image"', 'toName="pic"').replace("$image", "$img")
    cfg = parse_config(other, CLASSES)
    assert (cfg.from_name, cfg.to_name, cfg.image_key) == ("klass", "pic", "img")
    with pytest.raises(BadRequest, match="not the project's classes"):
        parse_config(CONFIG, ["cat", "dog", "fish"])


# --- predictions ----------------------------------------------------------------------------------

def test_predict_before_the_first_step_scores_by_the_queue_and_chooses_nothing(api, proj):
    captured = requests()["predict"]
    tasks = captured["body"]["tasks"]  # todal_id 0, 1, 2 and the uploaded a/img3.png
    results = ok(api.post("/predict", json=captured["body"]))["results"]
    assert len(results) == len(tasks) == 4
    want = expected_scores(proj, None)
    assert [r["score"] for r in results] == pytest.approx([float(want[s]) for s in (0, 1, 2, 3)])
    assert all(r["result"] == [] and r["model_version"] == "todal-step-0-no-model" for r in results)


def test_predict_after_a_step_gives_the_models_top_class_and_todals_order(tmp_path):
    project, truth = make_project(tmp_path)
    label_queue(project, truth)
    project.step(budget=8, strategy="cod")
    c = client(project)
    try:
        samples = project.store.samples()
        # every sample, by its local-files URL (no todal_id): the path in the URL finds it; reversed order
        tasks = [task(100 + i, {"image": f"/data/local-files/?d=images/{p}"}) for i, p, *_ in reversed(samples)]
        results = ok(c.post("/predict", json={"tasks": tasks, "project": "5.1796401549", "label_config": CONFIG,
                                              "params": {"login": None, "password": None, "context": None}}))["results"]
    finally:
        c.backend.close()
    ids = torch.tensor([i for i, *_ in reversed(samples)])
    model = project.model(1)
    probs = torch.cat([lg.softmax(1) for _, lg in run_model(model, project.dataset(), ids)])
    assert [r["model_version"] for r in results] == ["todal-step-1"] * len(ids)
    assert [r["result"][0]["value"]["choices"] for r in results] == [[CLASSES[int(k)]] for k in probs.argmax(1)]
    assert [r["result"][0]["score"] for r in results] == pytest.approx(probs.max(1).values.tolist(), abs=5e-5)
    assert all(r["result"][0]["from_name"] == "label" and r["result"][0]["to_name"] == "image" for r in results)
    score = expected_scores(project, torch.zeros(len(samples), 3).index_copy(0, ids, probs))
    assert [r["score"] for r in results] == pytest.approx(score[ids].tolist(), abs=1e-5)
    # ascending score is todal's order: the newest queue by rank, then the older queue, then the least sure
    by_score = [int(ids[j]) for j in sorted(range(len(ids)), key=lambda j: results[j]["score"])]
    assert by_score[: len(project.store.queue_order())] == project.store.queue_order()
    assert [it.sample for it in project.store.queued()] == [s for s in by_score if s in
                                                            {it.sample for it in project.store.queued()}]


def test_a_task_whose_image_is_not_in_the_project_gets_an_empty_prediction_and_status_reports_it(api, proj, capsys):
    from todal.project.cli import cmd_status

    stranger = task(77, {"image": "/data/upload/5/0123abcd-elsewhere.png"})
    known = task(78, {"image": "/data/upload/5/72496dc0-img3.png"})
    results = ok(api.post("/predict", json={"tasks": [stranger, known], "project": "5.1", "label_config": CONFIG}))[
        "results"]
    assert results[0] == {"result": [], "score": NO_SAMPLE, "model_version": "todal-step-0-no-model"}
    assert results[1]["score"] < NO_SAMPLE
    st = proj.status()
    assert st["unmatched"]["count"] == 1 and st["unmatched"]["examples"][0][1] == "project 5 task 77"

    class Args:
        project, json = str(proj.root), False

    cmd_status(Args)
    assert "label studio: 1 tasks whose image is not in this project, e.g. project 5 task 77" in capsys.readouterr().out


def test_tasks_are_matched_by_content_when_nothing_else_matches(proj, tmp_path):
    raw = (proj.images / "b" / "img010.png").read_bytes()
    served = {"/data/upload/5/renamed.png": raw}

    def image(request):
        return Response(served.get(request.url.path, b""), status_code=200 if request.url.path in served else 404)

    ls_app = Starlette(routes=[Route("/data/upload/5/{name}", image)])
    with ThreadServer(ls_app) as url:
        c = client(proj, label_studio=LabelStudio(url, "0123456789abcdef0123456789abcdef"))
        try:
            uri = "data:image/png;base64," + base64.b64encode(raw).decode()
            tasks = [task(1, {"image": uri}), task(2, {"image": "/data/upload/5/renamed.png"}),
                     task(3, {"image": "/data/upload/5/gone.png"})]
            results = ok(c.post("/predict", json={"tasks": tasks, "project": "5.1"}))["results"]
            matched = c.backend.matcher.match(tasks, "image")
        finally:
            c.backend.close()
    assert matched == [10, 10, None]
    assert results[0]["score"] == results[1]["score"] < NO_SAMPLE == results[2]["score"]
    assert hashlib.sha256(raw).hexdigest() == proj.store.samples()[10][2]


# --- labels by webhook ----------------------------------------------------------------------------

def test_annotations_created_updated_skipped_and_deleted_reach_the_store(api, proj):
    store = proj.store
    for name, want in (("ANNOTATION_CREATED", {0: ("label", 1, None, "1")}),   # task 8 (todal_id 0): dog
                       ("ANNOTATION_UPDATED", {0: ("label", 2, None, "1")}),   # changed to bird
                       ("ANNOTATION_CREATED_skipped", {0: ("label", 2, None, "1")}),  # task 9 skipped: no label
                       ("ANNOTATIONS_DELETED", {0: ("undo", None, None, "1")})):
        answer = ok(api.post("/webhook", json=body(name)))
        assert answer["status"] == "ok", answer
        assert store.current() == want, name
    assert [(h["kind"], h["class"], h["source"]) for h in store.history(0)] == \
        [("label", 1, "label-studio"), ("label", 2, "label-studio"), ("undo", None, "label-studio")]
    assert store.history(1) == []


def test_bulk_annotations_are_written_together(api, proj):
    answer = ok(api.post("/webhook", json=body("ANNOTATIONS_CREATED")))  # tasks 10 (todal_id 2) and 11 (upload)
    assert answer["written"] == 2
    assert proj.store.current() == {2: ("label", 0, None, "1"), 3: ("label", 0, None, "1")}


def test_a_retried_webhook_and_a_later_import_of_the_export_write_each_answer_once(api, proj, tmp_path):
    from lskit import annotation, export_task

    event = body("ANNOTATION_CREATED")
    ok(api.post("/webhook", json=event))
    assert ok(api.post("/webhook", json=event))["duplicates"] == 1
    a = event["annotation"]
    export = tmp_path / "export.json"
    export.write_text(json.dumps([export_task(8, event["task"]["data"],
                                              [{**annotation(a["id"], ["dog"], updated=a["updated_at"]),
                                                "created_at": a["created_at"]}])]))
    rows, problems = read_export(export, proj.store)
    assert not problems and proj.store.add_labels(rows, source="label-studio") == (0, 1)
    assert len(proj.store.history(0)) == 1


def test_deleting_the_latest_annotation_brings_back_the_one_still_standing(api, proj):
    t = body("ANNOTATION_CREATED")["task"]
    ok(api.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 100, t, "dog", by=1)))
    ok(api.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 101, t, "bird", by=2)))
    assert proj.store.current()[0] == ("label", 2, None, "2")
    ok(api.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 101}], "project": {"id": 5}}))
    assert proj.store.current()[0] == ("label", 1, None, "1")
    ok(api.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 100}], "project": {"id": 5}}))
    assert proj.store.current()[0][0] == "undo"
    # an annotation deleted after another answer came stays history: the later answer stands
    ok(api.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 102, t, "cat", by=1)))
    proj.store.add_label(0, 1, annotator="page", source="web")
    ok(api.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 102}], "project": {"id": 5}}))
    assert proj.store.current()[0] == ("label", 1, None, "page")


def test_an_annotation_on_a_task_outside_the_project_writes_no_label(api, proj):
    stranger = task(90, {"image": "/data/upload/5/0123abcd-elsewhere.png"})
    answer = ok(api.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 300, stranger, "dog")))
    assert answer["unmatched"] == 1 and proj.store.last_label_id() == 0
    assert proj.store.unmatched()["count"] == 1


def test_other_events_are_answered_and_ignored(api, proj):
    before = snapshot(proj.root)
    for event in (body("TASKS_CREATED"), {"action": "PROJECT_UPDATED", "project": {"id": 5}}, {"action": "WHATEVER"}):
        assert ok(api.post("/webhook", json=event))["status"] == "ignored"
    assert snapshot(proj.root) == before


# --- malformed requests ---------------------------------------------------------------------------

def _bad_events():
    def edit(name, fn):
        b = body(name)
        fn(b)
        return b

    return {
        "no action": {"annotation": {}},
        "action not a string": {"action": 3},
        "annotation not an object": edit("ANNOTATION_CREATED", lambda b: b.update(annotation=[1])),
        "annotation without id": edit("ANNOTATION_CREATED", lambda b: b["annotation"].pop("id")),
        "id a string": edit("ANNOTATION_CREATED", lambda b: b["annotation"].update(id="7")),
        "result not a list": edit("ANNOTATION_CREATED", lambda b: b["annotation"].update(result={"a": 1})),
        "choice not a class": edit("ANNOTATION_CREATED", lambda b: b["annotation"]["result"][0]["value"].update(
            choices=["fish"])),
        "several choices": edit("ANNOTATION_CREATED", lambda b: b["annotation"]["result"][0]["value"].update(
            choices=["cat", "dog"])),
        "choices not names": edit("ANNOTATION_CREATED", lambda b: b["annotation"]["result"][0].update(value="dog")),
        "task without data": edit("ANNOTATION_CREATED", lambda b: b["task"].pop("data")),
        "no task": edit("ANNOTATION_CREATED", lambda b: b.pop("task")),
        "project not an id": edit("ANNOTATION_CREATED", lambda b: b.update(project="five")),
        "config of other classes": edit("ANNOTATION_CREATED", lambda b: b["project"].update(
            label_config=CONFIG.replace('"bird"', '"fish"'))),
        "bulk: one bad annotation": edit("ANNOTATIONS_CREATED", lambda b: b["annotation"][1]["result"][0]["value"]
                                         .update(choices=["fish"])),
        "bulk: a task missing": edit("ANNOTATIONS_CREATED", lambda b: b["task"].pop()),
        "deleted: not a list": edit("ANNOTATIONS_DELETED", lambda b: b.update(annotations={"id": 1})),
        "deleted: id missing": edit("ANNOTATIONS_DELETED", lambda b: b.update(annotations=[{"x": 1}])),
        "deleted: no project": edit("ANNOTATIONS_DELETED", lambda b: b.pop("project")),
    }


BAD = [("/webhook", name, event) for name, event in _bad_events().items()] + [
    ("/predict", "tasks missing", {"project": "5.1"}),
    ("/predict", "tasks not a list", {"tasks": {"id": 1}}),
    ("/predict", "task without data", {"tasks": [{"id": 1}]}),
    ("/predict", "config not XML", {"tasks": [], "label_config": "<View"}),
    ("/predict", "config without choices", {"tasks": [], "label_config": "<View><Image name='i' value='$i'/></View>"}),
    ("/predict", "params not an object", {"tasks": [], "params": "x"}),
    ("/setup", "no schema", {"project": "5.1"}),
    ("/setup", "no project", {"schema": CONFIG}),
    ("/setup", "schema of other classes", {"project": "5.1", "schema": CONFIG.replace('"dog"', '"cow"')}),
]


@pytest.mark.parametrize("path, name, payload", BAD, ids=[f"{p} {n}" for p, n, _ in BAD])
def test_a_malformed_request_gets_a_4xx_with_one_line_and_writes_nothing(api, proj, path, name, payload):
    ok(api.post("/webhook", json=body("ANNOTATION_CREATED")))  # something in the store already
    before = snapshot(proj.root)
    r = api.post(path, json=payload)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    error = r.json()["error"]
    assert "\n" not in error and len(error) < 400 and error.strip() == error
    assert snapshot(proj.root) == before


def test_the_reason_of_a_refused_request_is_logged(api, caplog):
    # Label Studio keeps only "422 Client Error" of a refused /setup: the backend's log says why
    with caplog.at_level("WARNING", logger="todal.mlbackend"):
        r = api.post("/setup", json={"project": "5.1", "schema": CONFIG.replace('"dog"', '"cow"')})
    assert r.status_code == 422
    assert "POST /setup refused (422): The labeling config's choices (cat, cow, bird)" in caplog.text


@pytest.mark.parametrize("raw, content_type, status", [(b"{not json", "application/json", 400),
                                                       (b"[1, 2]", "application/json", 400),
                                                       (b'{"action": "START_TRAINING"}', "text/plain", 415)])
def test_a_body_that_is_not_a_json_object_is_refused(api, proj, raw, content_type, status):
    before = snapshot(proj.root)
    r = api.post("/webhook", content=raw, headers={"content-type": content_type})
    assert r.status_code == status and "\n" not in r.json()["error"]
    assert snapshot(proj.root) == before


def test_an_oversized_body_is_refused_unread(api, proj, monkeypatch):
    import todal.project.mlbackend as mlbackend

    monkeypatch.setattr(mlbackend, "MAX_BODY", 1000)
    r = api.post("/predict", json={"tasks": [task(i, {"image": "x" * 50}) for i in range(40)]})
    assert r.status_code == 413 and "fewer tasks" in r.json()["error"]


# --- steps in the background ----------------------------------------------------------------------

def test_every_n_labels_start_a_step_in_the_background_and_its_model_is_served_next(proj):
    c = client(proj, retrain_every=3)
    try:
        queued = [it for it in proj.store.queued() if it.path.startswith("b/")]
        answers = []
        for k, it in enumerate(queued[:3]):
            event = annotation_event("ANNOTATION_CREATED", 500 + k, task(600 + k, {"todal_id": it.sample,
                                                                                 "path": it.path}), "dog")
            t0 = time.perf_counter()
            answers.append((ok(c.post("/webhook", json=event)), time.perf_counter() - t0))
        assert [a.get("step") for a, _ in answers] == [None, None, "started"]
        assert c.backend.models.latest_step(c.backend.store) == 0  # the answer came before the step's end
        wait_step(c.backend, 1)
        took = c.backend.steps.last["seconds"]
        assert answers[-1][1] < took
        assert ok(c.get("/health"))["model_version"] == "todal-step-1"
        r = ok(c.post("/predict", json={"tasks": [task(1, {"todal_id": 5})], "label_config": CONFIG}))["results"][0]
        assert r["model_version"] == "todal-step-1" and len(r["result"]) == 1
        assert ok(c.get("/versions"))["versions"] == ["todal-step-0-no-model", "todal-step-1"]
        # the step trained on the labels Label Studio sent
        snap = proj.store.steps()[1]["snapshot"]
        trained = {s for s, (k, *_r) in proj.store.current(snap).items() if k == "label"}
        assert trained == {it.sample for it in queued[:3]}
    finally:
        c.backend.close()


def test_start_training_runs_a_step_and_retrain_every_zero_never_does(proj):
    c = client(proj, retrain_every=0)
    try:
        queued = [it for it in proj.store.queued() if it.path.startswith("b/")]
        for k, it in enumerate(queued[:4]):
            event = annotation_event("ANNOTATION_CREATED", 700 + k, task(800 + k, {"todal_id": it.sample}), "bird")
            assert "step" not in ok(c.post("/webhook", json=event))
        time.sleep(0.3)
        assert c.backend.steps.running is None and len(proj.store.steps()) == 1
        assert ok(c.post("/webhook", json=body("START_TRAINING"))) == {"status": "ok", "step": "started"}
        wait_step(c.backend, 1)
        assert ok(c.post("/train", json={"project": "5.1"}))["step"] in ("started", "queued")
        wait_step(c.backend, 2)
    finally:
        c.backend.close()


def test_a_step_that_cannot_run_is_reported_and_the_backend_goes_on(api, proj):
    ok(api.post("/webhook", json=body("START_TRAINING")))  # no labels yet
    deadline = time.monotonic() + 30
    while not (api.backend.steps.last or {}).get("error"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "No labels to train on yet" in ok(api.get("/health"))["step"]["last"]["error"]
    assert ok(api.get("/health"))["status"] == "UP"


# --- access -------------------------------------------------------------------------------------

def test_basic_auth_guards_every_route_when_set(proj):
    c = client(proj, credentials=("todal", "p" * 20))
    try:
        assert c.get("/health").status_code == 401
        wrong = base64.b64encode(b"todal:" + b"q" * 20).decode()
        r = c.post("/webhook", json=body("ANNOTATION_CREATED"), headers={"authorization": f"Basic {wrong}"})
        assert r.status_code == 401 and "Basic auth" in r.json()["error"] and proj.store.last_label_id() == 0
        right = base64.b64encode(b"todal:" + b"p" * 20).decode()
        assert ok(c.get("/health", headers={"authorization": f"Basic {right}"}))["status"] == "UP"
        # a URL with the credentials (what Label Studio's webhook needs) sends the same header
        with TestClient(c.app, base_url="http://todal:" + "p" * 20 + "@10.0.0.7:9090") as remote:
            assert remote.get("/health", auth=("todal", "p" * 20)).status_code == 200
    finally:
        c.backend.close()


def test_without_credentials_only_loopback_names_are_answered(api):
    with TestClient(api.app, base_url="http://evil.example:9090") as other:
        r = other.get("/health")
    assert r.status_code == 403 and "loopback" in r.json()["error"]


def test_binding_beyond_loopback_needs_credentials(monkeypatch):
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
    assert credentials_from_env("127.0.0.1") is None
    with pytest.raises(TodalError, match="set BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        credentials_from_env("0.0.0.0")
    monkeypatch.setenv("BASIC_AUTH_USER", "todal")
    monkeypatch.setenv("BASIC_AUTH_PASS", "short")
    with pytest.raises(TodalError, match="at least 16 characters"):
        credentials_from_env("0.0.0.0")
    monkeypatch.setenv("BASIC_AUTH_PASS", "x" * 16)
    assert credentials_from_env("0.0.0.0") == ("todal", "x" * 16)


def test_a_segmentation_project_is_refused(tmp_path):
    from serverkit import make_project as make_store_project

    folder = make_store_project(tmp_path, 4, task="segmentation")
    with pytest.raises(TodalError, match="serves classification projects"):
        make_app(folder)


def test_the_model_version_names_the_step():
    assert version_of(0) == "todal-step-0-no-model" and version_of(3) == "todal-step-3"


def test_a_step_left_unfinished_is_finished_at_start_with_the_options_it_began_with(tmp_path, monkeypatch):
    import todal.project.core as core

    project, truth = make_project(tmp_path)
    label_queue(project, truth)
    with monkeypatch.context() as m:
        m.setattr(core.Project, "_run_step", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError):
            project.step(budget=5, strategy="margin")
    assert [r["state"] for r in project.store.steps()] == ["done", "started"]
    c = client(project, budget=100, strategy="cod")  # other options: the unfinished step keeps its own
    try:
        wait_step(c.backend, 1)
    finally:
        c.backend.close()
    metrics = project.store.steps()[1]["metrics"]
    assert (metrics["strategy"], metrics["queued"]) == ("margin", 5)
