"""Label Studio export/import, against hand-written files in Label Studio 1.23's formats."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlsplit

import pytest
from lskit import CLASSES, annotation, export_task, make_project, other_class

from todal.errors import TodalError
from todal.project.labelstudio import config_path, export_tasks, label_config, read_export


def _export(store, tmp_path, **kw) -> list[dict]:
    out = tmp_path / "ls" / "tasks.json"
    n = export_tasks(store, out, **kw)
    tasks = json.loads(out.read_text())
    assert n == len(tasks)
    return tasks


def _write(tmp_path, tasks, name="export.json"):
    path = tmp_path / name
    path.write_text(json.dumps(tasks))
    return path


# --- the labeling config ------------------------------------------------------------------------

def test_label_config_lists_every_class_escaped():
    root = ET.fromstring(label_config(CLASSES))
    image = root.find("Image")
    choices = root.find("Choices")
    assert image.get("name") == choices.get("toName") and image.get("value") == "$image"
    assert choices.get("choice") == "single"
    assert [c.get("value") for c in choices.findall("Choice")] == CLASSES


def test_label_config_refuses_no_classes():
    with pytest.raises(TodalError, match="at least one class"):
        label_config([])


# --- export -------------------------------------------------------------------------------------

def test_export_writes_one_task_per_queued_sample_by_rank(tmp_path):
    store = make_project(tmp_path, n=4)
    tasks = _export(store, tmp_path)
    items = sorted(store.queued(), key=lambda it: it.rank)
    assert [t["data"]["todal_id"] for t in tasks] == [it.sample for it in items]
    assert [t["data"]["path"] for t in tasks] == [it.path for it in items]


def test_export_prediction_carries_the_top_guess_and_the_queue_order_as_score(tmp_path):
    """Label Studio serves the lowest prediction score first: the score is the queue position / n (the ML
    backend's definition), the acquisition score travels in the task's data."""
    store = make_project(tmp_path, n=3)
    tasks = _export(store, tmp_path)
    by_id = {it.sample: it for it in store.queued()}
    assert [t["predictions"][0]["score"] for t in tasks] == pytest.approx([0, 1 / 3, 2 / 3])
    for t in tasks:
        it = by_id[t["data"]["todal_id"]]
        (pred,) = t["predictions"]
        assert t["data"]["todal_score"] == pytest.approx(it.score)
        assert pred["model_version"] == "todal-step-1-cod"
        (res,) = pred["result"]
        assert res["type"] == "choices" and res["from_name"] == "label" and res["to_name"] == "image"
        assert res["value"]["choices"] == [CLASSES[it.guesses[0][0]]]
        assert res["score"] == pytest.approx(it.guesses[0][1])


def test_export_without_guesses_keeps_the_order(tmp_path):
    store = make_project(tmp_path, n=2)
    store.finish_step(1, {}, [(s, r, 0.5, "random", []) for r, s in enumerate(sorted(store.ids_by_path().values()))])
    tasks = _export(store, tmp_path)
    assert [t["predictions"][0]["result"] for t in tasks] == [[], []]
    assert [(t["predictions"][0]["score"], t["data"]["todal_score"]) for t in tasks] == [(0.0, 0.5), (0.5, 0.5)]


def test_export_writes_the_label_config_beside_the_tasks(tmp_path):
    store = make_project(tmp_path, n=2)
    out = tmp_path / "tasks.json"
    export_tasks(store, out)
    assert config_path(out) == tmp_path / "tasks.label_config.xml"
    assert config_path(out).read_text() == label_config(CLASSES)


def test_export_local_files_urls_are_relative_to_the_document_root(tmp_path):
    store = make_project(tmp_path, n=2)
    for t in _export(store, tmp_path):
        url = urlsplit(t["data"]["image"])
        assert url.path == "/data/local-files/"
        assert parse_qs(url.query)["d"] == ["images/" + t["data"]["path"]]  # root: the images folder's parent
        assert " " not in t["data"]["image"]
    (t, _) = _export(store, tmp_path, document_root=tmp_path / "images")
    assert parse_qs(urlsplit(t["data"]["image"]).query)["d"] == [t["data"]["path"]]


def test_export_local_files_refuses_a_root_outside_the_images(tmp_path):
    store = make_project(tmp_path, n=1)
    with pytest.raises(TodalError, match="not under the document root"):
        export_tasks(store, tmp_path / "t.json", document_root=tmp_path / "elsewhere")


def test_export_document_root_only_with_local_files(tmp_path):
    store = make_project(tmp_path, n=1)
    with pytest.raises(TodalError, match="document_root applies only"):
        export_tasks(store, tmp_path / "t.json", image_url="data-uri", document_root=tmp_path)


def test_export_data_uri_inlines_the_image(tmp_path):
    store = make_project(tmp_path, n=2)
    for t in _export(store, tmp_path, image_url="data-uri"):
        head, b64 = t["data"]["image"].split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(b64) == (tmp_path / "images" / t["data"]["path"]).read_bytes()


def test_export_data_uri_names_an_unreadable_image(tmp_path):
    store = make_project(tmp_path, n=1)
    (tmp_path / "images" / "a" / "img 0.png").unlink()
    with pytest.raises(TodalError, match="img 0.png.*image_url='local-files'"):
        export_tasks(store, tmp_path / "t.json", image_url="data-uri")


def test_export_url_prefix_joins_the_quoted_path(tmp_path):
    store = make_project(tmp_path, n=2)
    tasks = _export(store, tmp_path, image_url="https://cdn.example.org/set/")
    assert [t["data"]["image"] for t in tasks] == ["https://cdn.example.org/set/a/img%200.png",
                                                   "https://cdn.example.org/set/b/img%201.png"]


# --- read_export --------------------------------------------------------------------------------

def test_read_export_maps_by_todal_id_path_and_url(tmp_path):
    store = make_project(tmp_path, n=4)
    ids = store.ids_by_path()
    tasks = [
        export_task(1, {"image": "x", "todal_id": ids["a/img 0.png"]}, [annotation(1, ["dog"])]),
        export_task(2, {"image": "x", "path": "b/img 1.png"}, [annotation(2, ["cat"])]),
        export_task(3, {"image": "/data/local-files/?d=images/a/img%202.png"}, [annotation(3, ["cat"])]),
        export_task(4, {"image": "https://cdn.example.org/set/b/img%203.png"}, [annotation(4, ["dog"])]),
    ]
    rows, problems = read_export(_write(tmp_path, tasks), store)
    assert problems == []
    assert [(r["sample"], r["class"], r["annotator"]) for r in rows] == [
        (ids["a/img 0.png"], 1, "1"), (ids["b/img 1.png"], 0, "1"), (ids["a/img 2.png"], 0, "1"),
        (ids["b/img 3.png"], 1, "1")]


def test_read_export_latest_non_cancelled_annotation_wins(tmp_path):
    store = make_project(tmp_path, n=2)
    tasks = [export_task(1, {"todal_id": 0}, [
        annotation(7, ["dog"], updated="2025-01-01T10:00:00Z"),
        annotation(5, ["bird & \"fish\" <x>"], updated="2025-01-02T10:00:00.5Z"),  # older id, edited later
        annotation(9, ["cat"], updated="2025-01-03T10:00:00Z", cancelled=True)])]
    rows, problems = read_export(_write(tmp_path, tasks), store)
    assert problems == [] and [(r["sample"], r["class"]) for r in rows] == [(0, 2)]


def test_read_export_annotator_keeps_the_id_or_the_email(tmp_path):
    store = make_project(tmp_path, n=2)
    tasks = [export_task(1, {"todal_id": 0}, [annotation(1, ["dog"], by=3)]),
             export_task(2, {"todal_id": 1}, [annotation(2, ["dog"], by={"id": 4, "email": "ann@example.org"})])]
    rows, _ = read_export(_write(tmp_path, tasks), store)
    assert [r["annotator"] for r in rows] == ["3", "ann@example.org"]


def test_read_export_reports_every_unusable_task_and_keeps_the_rest(tmp_path):
    store = make_project(tmp_path, n=4)
    tasks = [
        export_task(1, {"todal_id": 99, "path": "nope.png", "image": "/data/upload/1/zz-nope.png"},
                    [annotation(1, ["dog"])]),
        export_task(2, {"todal_id": 0}, [annotation(2, ["horse"])]),
        export_task(3, {"todal_id": 1}, []),
        export_task(4, {"todal_id": 2}, [annotation(4, ["cat", "dog"])]),
        export_task(5, {"todal_id": 3}, [annotation(5, ["cat"], cancelled=True)]),
        export_task(6, {"todal_id": 3}, [annotation(6, None)]),
        export_task(7, {"todal_id": 3}, [annotation(7, ["dog"])]),
    ]
    rows, problems = read_export(_write(tmp_path, tasks), store)
    assert [(r["sample"], r["class"]) for r in rows] == [(3, 1)]
    assert len(problems) == 6 and all("\n" not in p for p in problems)
    assert "task 1: no todal sample matches" in problems[0]
    assert "task 2 (todal_id 0): choice 'horse' is not a class" in problems[1]
    assert "task 3 (todal_id 1): no annotation" in problems[2]
    assert "task 4 (todal_id 2): several choices" in problems[3]
    assert "task 5 (todal_id 3): only cancelled" in problems[4]
    assert "task 6 (todal_id 3): the latest annotation has no choice" in problems[5]


@pytest.mark.parametrize("text, match", [
    ("not json at all", "is not JSON"),
    ('{"tasks": []}', "is not a Label Studio JSON export"),
    ('[{"image": "a.png", "label": "cat"}]', "is not a Label Studio JSON export"),
    ('[{"data": {"image": "a.png"}}]', "without annotations"),
])
def test_read_export_refuses_a_file_that_is_not_a_label_studio_export(tmp_path, text, match):
    store = make_project(tmp_path, n=1)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TodalError, match=match) as e:
        read_export(path, store)
    assert "exportType=JSON" in str(e.value) and "\n" not in str(e.value)


def test_read_export_names_a_missing_file(tmp_path):
    store = make_project(tmp_path, n=1)
    with pytest.raises(TodalError, match="Cannot read the Label Studio export"):
        read_export(tmp_path / "missing.json", store)


def test_read_export_twice_records_each_answer_once(tmp_path):
    store = make_project(tmp_path, n=2)
    path = _write(tmp_path, [export_task(1, {"todal_id": 0}, [annotation(1, ["dog"])])])
    assert store.add_labels(read_export(path, store)[0], source="label-studio") == (1, 0)
    assert store.add_labels(read_export(path, store)[0], source="label-studio") == (0, 1)


# --- round trip ---------------------------------------------------------------------------------

def test_round_trip_answers_that_differ_from_the_guesses_reach_the_store(tmp_path):
    store = make_project(tmp_path, n=4)
    tasks = _export(store, tmp_path)
    k, want = len(CLASSES), {}
    for i, t in enumerate(tasks):  # as Label Studio would export them after labeling
        guess = CLASSES.index(t["predictions"][0]["result"][0]["value"]["choices"][0])
        want[t["data"]["todal_id"]] = other_class(guess, k)
        t.update(id=100 + i, annotations=[annotation(200 + i, [CLASSES[other_class(guess, k)]], by=i)])
    rows, problems = read_export(_write(tmp_path, tasks), store)
    assert problems == []
    assert store.add_labels(rows, source="label-studio") == (4, 0)
    assert store.current() == {s: ("label", c, None, str(i)) for i, (s, c) in enumerate(want.items())}
    assert store.queued() == []


def test_read_export_refuses_a_todal_id_whose_path_disagrees(tmp_path):
    store = make_project(tmp_path, n=2)
    ids = store.ids_by_path()
    tasks = [export_task(1, {"todal_id": ids["a/img 0.png"], "path": "b/img 1.png"}, [annotation(1, ["dog"])])]
    rows, problems = read_export(_write(tmp_path, tasks), store)
    assert rows == [] and problems == ["task 1: no todal sample matches its data (todal_id, path or image URL); "
                                       "was it exported from this project?"]
