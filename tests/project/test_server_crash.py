"""The server under load and a kill -9: 8 annotators label 2,000 samples while a reader process reads snapshots."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict

import httpx

from serverkit import free_port, labels, make_project, start_server
from todal.project.store import DB_NAME, Store

N, ANNOTATORS, KILL_AFTER, DEADLINE = 2000, 8, 600, 90.0

# A stand-in for `todal step`: reopens the store and reads the label snapshot, over and over, while the
# server writes; it must never fail, and no snapshot may lose an answer an earlier one had.
READER = """
import sys, time
from pathlib import Path
from todal.project.store import Store
db, stop = sys.argv[1], Path(sys.argv[2])
reads, last = 0, 0
while not stop.exists():
    s = Store(db)
    snap = s.last_label_id()
    current = s.current(snap)
    answered = sum(k != "undo" for k, *_ in current.values())
    assert answered >= last, (answered, last)
    assert s.progress()["labeled"] >= answered
    last = answered
    s.close()
    reads += 1
    time.sleep(0.01)
print(reads)
"""


class Client(threading.Thread):
    """One annotator: lease 10, label them, repeat; a dropped connection retries the same request."""

    def __init__(self, url: str, name: str, acked: list, leases: list, stop_at: float):
        super().__init__(daemon=True)
        self.url, self.name, self.acked, self.leases, self.stop_at = url, name, acked, leases, stop_at
        self.error: BaseException | None = None

    def post(self, http: httpx.Client, path: str, body: dict) -> dict:
        while time.monotonic() < self.stop_at:
            try:
                r = http.post(path, json=body)
            except httpx.TransportError:  # the server is down: wait for its restart
                time.sleep(0.02)
                continue
            assert r.status_code == 200, r.text
            return r.json()
        raise TimeoutError(f"{self.name}: no answer to {path} before the deadline")

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=10.0) as http:
                while True:
                    items = self.post(http, "/api/next", {"annotator": self.name, "n": 10})["items"]
                    got = time.time()
                    if not items:
                        return
                    for it in items:
                        self.leases.append((it["sample"], self.name, got, it["until"]))
                        cls, request = it["sample"] % 10, str(uuid.uuid4())
                        self.post(http, "/api/label", {"sample": it["sample"], "class": cls,
                                                       "annotator": self.name, "request": request})
                        self.acked.append((request, it["sample"], cls, self.name))
        except BaseException as e:  # reported by the test
            self.error = e


def test_kill_9_mid_run_loses_no_acknowledged_label_and_leases_stay_exclusive(tmp_path):
    project = make_project(tmp_path, N, same_image=True)
    db = project / DB_NAME
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(project, port)
    stop = tmp_path / "stop-reader"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(db), str(stop)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    acked, leases = [], []
    stop_at = time.monotonic() + DEADLINE
    clients = [Client(url, f"annotator-{i}", acked, leases, stop_at) for i in range(ANNOTATORS)]
    try:
        for c in clients:
            c.start()
        while len(acked) < KILL_AFTER and any(c.is_alive() for c in clients) and time.monotonic() < stop_at:
            time.sleep(0.005)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        killed_at = len(acked)
        server = start_server(project, port)
        for c in clients:
            c.join(max(0.0, stop_at - time.monotonic()))
    finally:
        stop.touch()
        server.kill()
        server.wait(10)
        out, err = reader.communicate(timeout=30)
    assert [c.error for c in clients] == [None] * ANNOTATORS
    assert KILL_AFTER <= killed_at < N  # the kill came midway

    # Every acknowledged label is stored exactly once, as sent; every sample is labeled once.
    rows = labels(project)
    assert len(rows) == N and len({s for s, *_ in rows}) == N
    store = Store(db)
    by_request = {h["request"]: (s, h["class"], h["annotator"]) for s in range(N) for h in store.history(s)}
    assert len(acked) == N and {r: (s, c, a) for r, s, c, a in acked} == by_request
    # No sample was leased to two annotators (the TTL is 600 s: no lease expired during the run).
    holders = defaultdict(set)
    for sample, holder, _, _ in leases:
        holders[sample].add(holder)
    assert len(holders) == N and all(len(h) == 1 for h in holders.values())
    assert store.leases() == [] and store.integrity() == "ok"
    # The reader read snapshots all along and never failed.
    assert reader.returncode == 0, err
    assert int(out) > 10
