"""The labeling page in Debian's Chromium (Playwright): keyboard labeling, undo, skip, two annotators, progress."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from serverkit import CLASSES, ThreadServer, free_port, labels, make_project, snapshot, start_server
from todal.project.server import make_app
from todal.project.store import DB_NAME, Store

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser tests (run scripts/setup.sh)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e .[dev])")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        _missing(f"Debian's chromium is not at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def guesses(s: int) -> list:
    """Every guess is one of classes 0-3; the tests answer 5-9, so a stored answer came from a key press."""
    return [[s % 4, 0.7], [(s + 1) % 4, 0.2]]


def open_page(browser, url: str, name: str):
    """A new browser context at `url` (its page when `url` has no path), labeling as `name`."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(url if "/" in url.partition("//")[2] else url + "/")
    page.fill("#name-input", name)
    page.click("#name-form button[type=submit]")
    return page


def shown(page) -> int:
    """The sample on screen, once its image has loaded."""
    page.wait_for_function("(() => { const i = document.getElementById('image');"
                           " return i.alt.startsWith('sample ') && i.complete && i.naturalWidth > 0; })()")
    return int(page.get_attribute("#image", "alt").split()[1])


def press(page, key: str) -> int | None:
    """Press `key` on the sample shown; returns the next sample shown (None: queue empty)."""
    before = page.get_attribute("#image", "alt")
    page.keyboard.press(key)
    page.wait_for_function(f"document.getElementById('image').alt !== {before!r} || "
                           "!document.getElementById('empty').hidden")
    return None if page.is_visible("#empty") else shown(page)


def settled(page) -> None:
    page.wait_for_function("document.getElementById('saved').textContent === 'all saved'")


def test_keyboard_labels_undo_and_skip_reach_the_database(browser, tmp_path):
    project = make_project(tmp_path, 6, guesses=guesses, size=28)
    with ThreadServer(make_app(project)) as url:
        page = open_page(browser, url, "ana")
        first = shown(page)
        assert page.inner_text("#guesses").split("\n")[:2] == [CLASSES[first % 4], "70%"]
        second = press(page, "6")          # first: class 5
        third = press(page, "7")           # second: class 6
        fourth = press(page, "s")          # third: skipped
        fifth = press(page, "8")           # fourth: class 7...
        assert press(page, "z") == fourth  # ...undone: the fourth is back on screen
        assert press(page, "9") == fifth   # fourth: class 8
        sixth = press(page, "a")           # fifth: class 9
        settled(page)
        page.screenshot(path=str(tmp_path / "labeled.png"))
        store = Store(project / DB_NAME)
        current = {s: (k, c, a) for s, (k, c, _, a) in store.current().items()}
        assert current == {first: ("label", 5, "ana"), second: ("label", 6, "ana"), fourth: ("label", 8, "ana"),
                           fifth: ("label", 9, "ana")}
        assert [(k, c) for s, k, c, _ in labels(project) if s == fourth] == [("label", 7), ("undo", None),
                                                                             ("label", 8)]
        assert third not in current and [r[:2] for r in snapshot(project)["skips"]] == [(third, "ana")]
        assert sixth not in (first, second, third, fourth, fifth)
        page.wait_for_function("document.getElementById('batch-text').textContent.startsWith('4 done')")
        assert page.inner_text("#batch-text") == "4 done · 2 left in this batch"
        assert "ana (you)" in page.inner_text("#per-annotator")
        page.context.close()


def test_two_annotators_never_see_the_same_image(browser, tmp_path):
    project = make_project(tmp_path, 8, guesses=guesses)
    with ThreadServer(make_app(project)) as url:
        ana, ben = open_page(browser, url, "ana"), open_page(browser, url, "ben")
        seen = {"ana": [shown(ana)], "ben": [shown(ben)]}
        for _ in range(8):
            for name, page in (("ana", ana), ("ben", ben)):
                if page.is_visible("#empty"):
                    continue
                nxt = press(page, "6")
                if nxt is not None:
                    seen[name].append(nxt)
        for page in (ana, ben):
            page.wait_for_selector("#empty", state="visible")
            assert "Queue empty" in page.inner_text("#empty") and "todal step PROJECT" in page.inner_text("#empty")
            settled(page)
        ana.screenshot(path=str(tmp_path / "ana-empty.png"))
        assert not set(seen["ana"]) & set(seen["ben"])
        assert sorted(seen["ana"] + seen["ben"]) == list(range(8))
        by = {s: a for s, (_, _, _, a) in Store(project / DB_NAME).current().items()}
        assert {s for s, a in by.items() if a == "ana"} == set(seen["ana"])
        ben.wait_for_function("document.getElementById('batch-text').textContent.startsWith('8 done')")
        assert "0 left" in ben.inner_text("#batch-text")
        ana.context.close()
        ben.context.close()


def test_a_failed_label_post_is_retried_with_the_same_request_id(browser, tmp_path):
    project = make_project(tmp_path, 3, guesses=guesses)
    sent = []

    def flaky(route):
        sent.append(route.request.post_data_json)
        if len(sent) == 1:
            route.abort("connectionreset")
        else:
            route.continue_()

    with ThreadServer(make_app(project)) as url:
        page = open_page(browser, url, "ana")
        page.route("**/api/label", flaky)
        first = shown(page)
        press(page, "7")
        settled(page)
        assert len(sent) == 2 and sent[0] == sent[1] and sent[0]["sample"] == first
        history = Store(project / DB_NAME).history(first)
        assert [(h["kind"], h["class"], h["request"]) for h in history] == [("label", 6, sent[0]["request"])]
        page.context.close()


def test_the_token_url_opens_the_page_and_labels_go_through(browser, tmp_path):
    project = make_project(tmp_path, 2, guesses=guesses)
    with ThreadServer(make_app(project, token="t0ken")) as url:
        context = browser.new_context()
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#error", state="visible")
        assert "needs its token" in page.inner_text("#error")
        page = context.new_page()
        page.goto(url + "/#token=t0ken")
        page.fill("#name-input", "ana")
        page.click("#name-form button[type=submit]")
        first = shown(page)
        assert page.url == url + "/"  # the token left the address bar for an HttpOnly cookie
        assert context.cookies()[0]["httpOnly"] and context.cookies()[0]["sameSite"] == "Strict"
        press(page, "9")
        settled(page)
        assert labels(project) == [(first, "label", 8, "ana")]
        context.close()


def test_the_printed_url_logs_in_and_the_token_stays_out_of_the_server_log(browser, tmp_path):
    project, port, log = make_project(tmp_path, 3, guesses=guesses), free_port(), tmp_path / "server.log"
    token = "k" * 8 + "-secret-" + "q" * 16
    server = start_server(project, port, token=token, log=log)
    try:
        printed = next(line for line in log.read_text().splitlines() if line.startswith("Labeling page: "))
        url = printed.removeprefix("Labeling page: ")
        assert url == f"http://127.0.0.1:{port}/#token={token}"  # a fragment: the browser never sends it
        page = open_page(browser, url, "ana")
        first = shown(page)
        assert page.url == f"http://127.0.0.1:{port}/" and page.is_visible("#classes button")
        page.screenshot(path=str(tmp_path / "after-login.png"))
        press(page, "6")
        settled(page)
        assert labels(project) == [(first, "label", 5, "ana")]
        # A client that still sends the token in a query string: refused, and the query is not logged.
        assert httpx.get(f"http://127.0.0.1:{port}/api/config?token={token}").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/?token={token}").status_code == 200
        page.context.close()
    finally:
        server.terminate()
        server.wait(20)
    lines = log.read_text().splitlines()
    assert '"POST /api/session HTTP/1.1" 200' in "\n".join(lines)  # the access log is on
    assert '"GET /api/config HTTP/1.1" 401' in "\n".join(lines)
    assert [line for line in lines if token in line] == [printed]


def test_the_page_shows_the_latest_steps_accuracy_estimate(browser, tmp_path):
    project = make_project(tmp_path, 4, guesses=guesses, size=28)
    store = Store(project / DB_NAME)
    with ThreadServer(make_app(project)) as url:
        page = open_page(browser, url, "ana")
        shown(page)
        page.wait_for_function("document.getElementById('batch-text').textContent.includes('done')")
        assert not page.is_visible("#estimate")  # no model yet, no estimate
        store.begin_step(1, {"strategy": "cod"})
        store.finish_step(1, {"val_accuracy": 0.75, "val_low": 0.6, "val_high": 0.86, "val_size": 40,
                              "recommendation": "keep labeling: κ 0.9"}, [])
        page.reload()
        page.wait_for_function("!document.getElementById('estimate').hidden")
        assert page.inner_text("#estimate") == ("Model accuracy ≈ 75.0% (95% interval 60.0%–86.0%, 40 validation labels, "
                                                "step 1) · keep labeling")
        page.context.close()
