"""The labeling server's endpoints through Starlette's TestClient: answers, bad input, token, images by id."""

from __future__ import annotations

import json
import sqlite3

import pytest
from starlette.testclient import TestClient

from serverkit import CLASSES, free_port, labels, make_project, snapshot
from todal.errors import TodalError
from todal.project.server import class_keys, make_app, serve
from todal.project.store import DB_NAME, Store

LOCAL = "http://127.0.0.1:8765"


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path, 12, guesses=lambda s: [[s % 10, 0.8], [(s + 1) % 10, 0.15]])


@pytest.fixture
def client(project):
    with TestClient(make_app(project), base_url=LOCAL) as c:
        yield c


def lease(client, annotator="ana", n=3):
    r = client.post("/api/next", json={"annotator": annotator, "n": n})
    assert r.status_code == 200, r.text
    return r.json()["items"]


# --- endpoints ---------------------------------------------------------------------------------
def test_page_and_static_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "app.js" in r.text
    assert client.get("/static/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")


def test_config_lists_classes_and_shortcuts(client):
    c = client.get("/api/config").json()
    assert c["name"] == "demo" and c["classes"] == CLASSES and c["task"] == "classification"
    assert c["keys"]["classes"] == [str(i) for i in range(1, 10)] + ["a"]
    assert c["keys"]["skip"] not in c["keys"]["classes"] and c["keys"]["unsure"] not in c["keys"]["classes"]


def test_class_keys_skip_action_letters():
    keys = class_keys(40)
    assert keys[:10] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "a"]
    assert not {"s", "u", "z"} & set(keys) and len(set(k for k in keys if k)) == sum(k is not None for k in keys)
    assert keys[-1] is None  # more classes than keys: no shortcut, still a button


def test_next_leases_items_with_guesses_and_image_url(client, project):
    items = lease(client, "ana", 3)
    assert [it["sample"] for it in items] == [0, 1, 2]
    assert items[0]["guesses"] == [[0, 0.8], [1, 0.15]] and items[0]["image"] == "/api/image/0"
    assert {s: h for s, h, _ in Store(project / DB_NAME).leases()} == {0: "ana", 1: "ana", 2: "ana"}
    assert [it["sample"] for it in lease(client, "ana", 4)] == [0, 1, 2, 3]  # held ones first, renewed


def test_two_annotators_never_get_the_same_sample(client):
    a = {it["sample"] for it in lease(client, "ana", 5)}
    b = {it["sample"] for it in lease(client, "ben", 5)}
    c = {it["sample"] for it in lease(client, "cid", 5)}
    assert len(a) == len(b) == 5 and len(c) == 2 and not (a & b) and not (a & c) and not (b & c)


def test_image_is_served_by_id(client, project):
    r = client.get("/api/image/3")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (project.parent / "images" / "b" / "img_00003.png").read_bytes()


@pytest.mark.parametrize("url", ["/api/image/99", "/api/image/99999999999999999999", "/api/image/-1", "/api/image/abc", "/api/image/3.0",
                                 "/api/image/..%2F..%2Fetc%2Fpasswd", "/api/image/../../etc/passwd",
                                 "/api/image/%2e%2e/%2e%2e/etc/passwd"])
def test_image_never_serves_a_path_from_the_request(client, url):
    r = client.get(url)
    assert r.status_code in (404, 422) and "root:" not in r.text
    assert "\n" not in r.json()["error"]


def test_image_outside_the_images_root_is_refused(client, project, tmp_path):
    (tmp_path / "secret.png").write_bytes(b"not for you")
    store = Store(project / DB_NAME)
    store.update_samples([(4, "../secret.png", "x", 11, "ok")])
    r = client.get("/api/image/4")
    assert r.status_code == 404 and "images root" in r.json()["error"] and b"not for you" not in r.content


def test_label_by_name_or_index_is_recorded(client, project):
    assert client.post("/api/label", json={"sample": 0, "class": "Bag", "annotator": "ana", "request": "r1"}).json() \
        == {"id": 1, "duplicate": False}
    assert client.post("/api/label", json={"sample": 1, "class": 3, "annotator": "ana"}).status_code == 200
    assert labels(project) == [(0, "label", 8, "ana"), (1, "label", 3, "ana")]


def test_unsure_skip_and_undo(client, project):
    lease(client, "ana", 3)
    assert client.post("/api/unsure", json={"sample": 0, "annotator": "ana", "request": "u1"}).status_code == 200
    assert client.post("/api/skip", json={"sample": 1, "annotator": "ana"}).json() == {}
    undone = client.post("/api/undo", json={"annotator": "ana"}).json()["item"]
    assert undone["sample"] == 0 and undone["image"] == "/api/image/0"
    assert labels(project) == [(0, "unsure", None, "ana"), (0, "undo", None, "ana")]
    assert 1 not in {it["sample"] for it in lease(client, "ana", 12)}  # skipped: never back to ana
    assert 1 in {it["sample"] for it in lease(client, "ben", 12)}
    assert client.post("/api/undo", json={"annotator": "nobody"}).json() == {"item": None}


def test_progress_counts_batch_classes_and_annotators(client):
    client.post("/api/label", json={"sample": 0, "class": "Bag", "annotator": "ana"})
    client.post("/api/label", json={"sample": 1, "class": "Bag", "annotator": "ben"})
    client.post("/api/unsure", json={"sample": 2, "annotator": "ben"})
    p = client.get("/api/progress").json()
    assert p["batch"] == {"size": 12, "done": 3, "left": 9}
    assert p["per_class"]["Bag"] == 2 and p["per_annotator"] == {"ana": 1, "ben": 2} and p["unsure"] == 1


def test_double_submit_records_one_label(client, project):
    body = {"sample": 5, "class": "Coat", "annotator": "ana", "request": "same-id"}
    first, again = client.post("/api/label", json=body), client.post("/api/label", json=body)
    other_tab = client.post("/api/label", json={**body, "request": "another-id"})
    assert first.json()["duplicate"] is False and again.json()["duplicate"] is True
    assert other_tab.json()["duplicate"] is True
    assert labels(project) == [(5, "label", 4, "ana")]


# --- bad input: 4xx, one line, nothing changed ------------------------------------------------
BAD = [
    ("/api/label", {"sample": 0, "class": "Cat", "annotator": "ana"}, "Unknown class 'Cat'"),
    ("/api/label", {"sample": 0, "class": 10, "annotator": "ana"}, "outside [0, 10)"),
    ("/api/label", {"sample": 0, "class": -1, "annotator": "ana"}, "outside [0, 10)"),
    ("/api/label", {"sample": 0, "class": True, "annotator": "ana"}, "'class' field must be"),
    ("/api/label", {"sample": 0, "class": 1.5, "annotator": "ana"}, "'class' field must be"),
    ("/api/label", {"sample": 999, "class": 1, "annotator": "ana"}, "Unknown sample id 999"),
    ("/api/label", {"sample": 2**70, "class": 1, "annotator": "ana"}, "Unknown sample id"),
    ("/api/label", {"sample": 0, "class": 2**70, "annotator": "ana"}, "outside [0, 10)"),
    ("/api/label", {"sample": 0, "class": 1, "annotator": "a\x00b"}, "printable"),
    ("/api/label", {"sample": 0, "class": 1, "annotator": "ana", "request": 5}, "'request' field must be a string"),
    ("/api/label", {"sample": "0", "class": 1, "annotator": "ana"}, "'sample' field must be an integer"),
    ("/api/label", {"class": 1, "annotator": "ana"}, "misses 'sample'"),
    ("/api/label", {"sample": 0, "annotator": "ana"}, "misses 'class'"),
    ("/api/label", {"sample": 0, "class": 1}, "misses 'annotator'"),
    ("/api/label", {"sample": 0, "class": 1, "annotator": ""}, "'annotator' field must be a name"),
    ("/api/label", {"sample": 0, "class": 1, "annotator": "   "}, "'annotator' field must be a name"),
    ("/api/label", {"sample": 0, "class": 1, "annotator": 7}, "'annotator' field must be a string"),
    ("/api/label", {"sample": 0, "class": 1, "annotator": "ana", "request": ""}, "'request' field"),
    ("/api/label", [1, 2], "must be a JSON object"),
    ("/api/unsure", {"sample": 999, "annotator": "ana"}, "Unknown sample id"),
    ("/api/unsure", {"sample": 0, "annotator": ""}, "'annotator' field"),
    ("/api/skip", {"sample": 999, "annotator": "ana"}, "Unknown sample id"),
    ("/api/skip", {"sample": 0}, "misses 'annotator'"),
    ("/api/skip", {"sample": 2**70, "annotator": "ana"}, "Unknown sample id"),
    ("/api/undo", {}, "misses 'annotator'"),
    ("/api/undo", {"annotator": "x" * 65}, "1 to 64"),
    ("/api/next", {"annotator": ""}, "'annotator' field"),
    ("/api/next", {"annotator": "ana", "n": 0}, "'n' field"),
    ("/api/next", {"annotator": "ana", "n": 1000}, "'n' field"),
    ("/api/next", {"annotator": "ana", "n": "5"}, "'n' field must be an integer"),
]


@pytest.mark.parametrize("url,body,message", BAD, ids=[f"{u}-{m}" for u, _, m in BAD])
def test_bad_input_is_refused_and_changes_nothing(client, project, url, body, message):
    lease(client, "ana", 2)
    client.post("/api/label", json={"sample": 1, "class": 2, "annotator": "ana"})
    before = snapshot(project)
    r = client.post(url, json=body)
    assert 400 <= r.status_code < 500
    error = r.json()["error"]
    assert message in error and "\n" not in error
    assert snapshot(project) == before


@pytest.mark.parametrize("content,ctype,status", [(b"{not json", "application/json", 400),
                                                  (b"", "application/json", 400),
                                                  (b'{"sample": 0, "class": 1, "annotator": "a"}', "text/plain", 415),
                                                  (b"x" * 70_000, "application/json", 413)])
def test_malformed_body_is_refused_and_changes_nothing(client, project, content, ctype, status):
    before = snapshot(project)
    r = client.post("/api/label", content=content, headers={"content-type": ctype})
    assert r.status_code == status and "\n" not in r.json()["error"]
    assert snapshot(project) == before


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_64_kib_is_refused_in_one_line(client, project, chunked):
    body = json.dumps({"sample": 0, "class": 1, "annotator": "ana", "pad": "x" * 70_000}).encode()
    before = snapshot(project)
    content = iter([body[i : i + 8192] for i in range(0, len(body), 8192)]) if chunked else body
    r = client.post("/api/label", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 413
    error = r.json()["error"]
    assert "at most 64 KiB" in error and "\n" not in error
    assert snapshot(project) == before


def test_unknown_endpoint_and_wrong_method_answer_json(client):
    assert client.get("/api/nothing").status_code == 404 and "error" in client.get("/api/nothing").json()
    assert client.get("/api/label").status_code == 405


# --- token and host -----------------------------------------------------------------------------
def test_token_is_required_by_every_api_route_but_not_by_the_page(project):
    with TestClient(make_app(project, token="s3cret"), base_url="http://192.168.1.5:8765") as c:
        for url in ["/", "/static/app.js", "/static/app.css"]:  # the page holds no data: it loads, then logs in
            assert c.get(url).status_code == 200, url
        for url in ["/api/config", "/api/progress", "/api/image/0", "/api/nothing", "/nothing"]:
            r = c.get(url)
            assert r.status_code == 401 and "#token=" in r.json()["error"] and "\n" not in r.json()["error"], url
        assert c.post("/api/next", json={"annotator": "ana"}).status_code == 401
        assert c.post("/api/session").status_code == 401
        assert c.get("/api/config", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/config", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert "set-cookie" not in c.get("/?token=s3cret").headers  # no login by query string (access logs)
        assert c.get("/api/config").status_code == 401
        assert c.post("/api/session", headers={"authorization": "Bearer wrong"}).status_code == 401
        r = c.post("/api/session", headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json() == {}
        cookie = r.headers["set-cookie"].lower()
        assert cookie.startswith("todal_token=s3cret;") and "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/api/config").status_code == 200 and c.get("/api/image/0").status_code == 200
    assert Store(project / DB_NAME).leases() == []


def test_an_empty_token_is_refused(project):
    with pytest.raises(TodalError, match="empty token") as e:
        make_app(project, token="")
    assert "\n" not in str(e.value)


def test_without_token_only_loopback_hosts_are_answered(project):
    with TestClient(make_app(project), base_url="http://evil.example:8765") as c:
        assert c.get("/api/config").status_code == 403
    for host in ("http://localhost:8765", "http://[::1]:8765", LOCAL):
        with TestClient(make_app(project), base_url=host) as c:
            assert c.get("/api/config").status_code == 200


# --- projects the page refuses ----------------------------------------------------------------
def test_segmentation_project_is_refused_in_one_line(tmp_path):
    project = make_project(tmp_path, 2, task="segmentation")
    with pytest.raises(TodalError, match="segmentation project") as e:
        make_app(project)
    assert "\n" not in str(e.value)


def test_missing_project_is_refused_in_one_line(tmp_path):
    with pytest.raises(TodalError, match="run `todal init` first"):
        make_app(tmp_path)


@pytest.mark.parametrize("kind", ["random bytes", "foreign sqlite"])
def test_corrupted_or_foreign_database_is_a_one_line_error(tmp_path, kind):
    db = tmp_path / DB_NAME
    if kind == "random bytes":
        db.write_bytes(bytes(range(256)) * 16)
    else:
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE photos (id INTEGER, name TEXT)")
        con.commit()
        con.close()
    with pytest.raises(TodalError, match="not a readable todal project database") as e:
        make_app(tmp_path)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_corrupted_database_from_the_command_line_has_no_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / DB_NAME).write_bytes(b"\x00garbage" * 100)
    r = subprocess.run([sys.executable, "-m", "todal.project.server", str(tmp_path), "--port", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "not a readable todal project database" in r.stderr


# --- serve ------------------------------------------------------------------------------------
def test_serve_makes_a_token_for_a_non_loopback_host(project, monkeypatch, capsys):
    import uvicorn

    ran, port = {}, free_port()
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    serve(project, host="0.0.0.0", port=port, quiet=True)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"Labeling page: http://0.0.0.0:{port}/#token=") and ran["host"] == "0.0.0.0"
    token = line.split("#token=")[1]
    assert len(token) >= 24
    with TestClient(ran["app"], base_url="http://192.168.1.5:9999") as c:
        assert c.get("/api/config").status_code == 401
        assert c.get("/api/config", headers={"authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
@pytest.mark.parametrize("token", ["", "x" * 15])
def test_serve_refuses_an_empty_or_short_token(project, monkeypatch, host, token):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("uvicorn started"))
    with pytest.raises(TodalError, match=r"at least 16 characters.*omit --token") as e:
        serve(project, host=host, port=free_port(), token=token)
    assert "\n" not in str(e.value)


def test_serve_on_loopback_needs_no_token(project, monkeypatch, capsys):
    import uvicorn

    ran, port = {}, free_port()
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    serve(project, port=port)
    assert capsys.readouterr().out.strip() == f"Labeling page: http://127.0.0.1:{port}/"
    with TestClient(ran["app"], base_url="http://127.0.0.1:9999") as c:
        assert c.get("/api/config").status_code == 200
