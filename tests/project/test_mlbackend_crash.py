"""kill -9 of the ML backend while a background step runs: every label a webhook was answered for is kept,
and the step resumes at the restart (same step, same label snapshot) and finishes."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import httpx
from mlkit import CLASSES, annotation_event, make_project, start_backend, task
from serverkit import free_port

from todal.project.mlbackend import SOURCE
from todal.project.store import DB_NAME, Store

SENDERS, RETRAIN_EVERY, DEADLINE = 4, 20, 240.0


class Sender(threading.Thread):
    """Posts annotation webhooks as Label Studio does; a dropped connection retries the same payload."""

    def __init__(self, url: str, events: list[tuple[int, int, int]], acked: list, stop_at: float):
        super().__init__(daemon=True)
        self.url, self.events, self.acked, self.stop_at = url, events, acked, stop_at
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=10.0) as http:
                for ident, sample, cls in self.events:
                    event = annotation_event("ANNOTATION_CREATED", ident, task(10_000 + ident, {"todal_id": sample}),
                                             CLASSES[cls])
                    while True:
                        assert time.monotonic() < self.stop_at, "no answer before the deadline"
                        try:
                            r = http.post(self.url + "/webhook", json=event)
                        except httpx.TransportError:  # the backend is down: wait for its restart
                            time.sleep(0.02)
                            continue
                        assert r.status_code == 200, r.text
                        self.acked.append((ident, sample, cls))
                        break
                    time.sleep(0.01)
        except BaseException as e:  # reported by the test
            self.error = e


def steps(db) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT step, state, snapshot FROM steps ORDER BY step").fetchall()
    finally:
        con.close()


def test_kill_9_during_a_background_step_keeps_every_acknowledged_label_and_the_step_resumes(tmp_path):
    project, truth = make_project(tmp_path, n=160, seed_batch=100, train={"epochs": 60, "batch_size": 16, "lr": 0.05})
    root, db = project.root, project.root / DB_NAME
    # the labels differ from the truth (and so from what a model trained on them would guess)
    events = [(i, it.sample, (truth[it.path] + 1) % 3) for i, it in enumerate(project.store.queued())]
    project.store.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "backend.log"
    extra = ("--retrain-every", str(RETRAIN_EVERY), "--budget", "10", "--quiet")
    backend = start_backend(root, port, *extra, log=log)
    acked: list = []
    stop_at = time.monotonic() + DEADLINE
    senders = [Sender(url, events[k::SENDERS], acked, stop_at) for k in range(SENDERS)]
    try:
        for s in senders:
            s.start()
        while not any(st == 1 for st, *_ in steps(db)):  # step 1 has begun in the background
            assert time.monotonic() < stop_at and backend.poll() is None, log.read_text()[-2000:]
            time.sleep(0.005)
        before = next(r for r in steps(db) if r[0] == 1)
        os.kill(backend.pid, signal.SIGKILL)
        backend.wait(10)
        killed_at = len(acked)
        assert before[1] != "done"  # killed midway
        backend = start_backend(root, port, *extra, log=log)
        for s in senders:
            s.join(max(0.0, stop_at - time.monotonic()))
        # the interrupted step finishes after the restart, on the labels it had read
        deadline = time.monotonic() + 120
        while (one := next(r for r in steps(db) if r[0] == 1))[1] != "done":
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        assert one[2] == before[2]
        health = httpx.get(url + "/health").json()
        assert health["model_version"].startswith("todal-step-") and health["model_version"] != "todal-step-0-no-model"
    finally:
        backend.kill()
        backend.wait(10)
    assert [s.error for s in senders] == [None] * SENDERS
    assert RETRAIN_EVERY <= killed_at < len(events)  # webhooks came before and after the kill
    assert len(acked) == len(events)
    store = Store(db)
    recorded = store.external(SOURCE)
    current = store.current()
    for ident, sample, cls in acked:
        got_sample, row, withdrawn = recorded[f"5:{ident}"]
        assert (got_sample, withdrawn) == (sample, False)
        assert current[sample][:2] == ("label", cls)
    # one label row per answer, however often a webhook was retried around the kill
    assert store.last_label_id() == len(events) and store.integrity() == "ok"
    assert "Traceback" not in log.read_text()
