"""A labeling project's state: one SQLite file (WAL), safe for a web server, imports and a step at once.

Tables:
    meta      key -> JSON value: format, version, classes, task, images root, model, size, seed, ...
    samples   id (the sample's index in the project's dataset), relative path, sha256, bytes,
              status (ok | missing | unreadable), holdout (1: a validation sample, never trained on)
    labels    the history: one row per answer (kind label | unsure | undo), class, mask, annotator,
              source, time, request id (a retried submit records one row); a sample's latest row counts
    queue     per step: the samples to label, rank, score, strategy, the model's top guesses
    leases    sample -> holder, until: who is labeling it now (one holder per sample)
    skips     (sample, annotator): not shown to that annotator again
    steps     step -> state (started | trained | done), the label snapshot it read, config, metrics
    external  answers given in another tool (Label Studio), by that tool's id: the sample, the label row it
              wrote, withdrawn (deleted there); so a deletion there becomes an "undo" row here
    unmatched tasks of another tool whose image is not in the project (reported by `todal status`)

Every write is one transaction; with `synchronous=FULL` an acknowledged label survives a kill -9 of
any process. Readers see a consistent snapshot while writers go on (WAL).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import TodalError

FORMAT = "todal.project"
VERSION = 1
DB_NAME = "project.db"
NO_LABEL = -1  # class of a sample without a current label
UNSURE = -2    # class of a sample whose latest answer is "not sure"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'missing', 'unreadable')),
    holdout INTEGER NOT NULL DEFAULT 0,
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_sha ON samples(sha256);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sample INTEGER NOT NULL REFERENCES samples(id),
    kind TEXT NOT NULL CHECK (kind IN ('label', 'unsure', 'undo')),
    class INTEGER,
    mask TEXT,
    annotator TEXT NOT NULL,
    source TEXT NOT NULL,
    time REAL NOT NULL,
    request TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS labels_sample ON labels(sample, id);
CREATE INDEX IF NOT EXISTS labels_annotator ON labels(annotator, id);
CREATE TABLE IF NOT EXISTS queue (
    step INTEGER NOT NULL,
    sample INTEGER NOT NULL REFERENCES samples(id),
    rank INTEGER NOT NULL,
    score REAL,
    strategy TEXT NOT NULL,
    guesses TEXT,
    PRIMARY KEY (step, sample)
);
CREATE INDEX IF NOT EXISTS queue_sample ON queue(sample);
CREATE TABLE IF NOT EXISTS leases (
    sample INTEGER PRIMARY KEY REFERENCES samples(id),
    holder TEXT NOT NULL,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS skips (
    sample INTEGER NOT NULL,
    annotator TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (sample, annotator)
);
CREATE TABLE IF NOT EXISTS steps (
    step INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('started', 'trained', 'done')),
    snapshot INTEGER NOT NULL,
    config TEXT NOT NULL,
    checkpoint TEXT,
    metrics TEXT,
    started REAL NOT NULL,
    finished REAL
);
"""
# Tables added after format version 1 was released: created on open where missing (old projects read on).
_EXTRA_SCHEMA = """
CREATE TABLE IF NOT EXISTS external (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    sample INTEGER NOT NULL REFERENCES samples(id),
    label INTEGER NOT NULL REFERENCES labels(id),
    withdrawn INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, key)
);
CREATE INDEX IF NOT EXISTS external_sample ON external(sample, label);
CREATE TABLE IF NOT EXISTS unmatched (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    detail TEXT NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (source, key)
);
"""

# The latest answer per sample among the rows with id <= ? (a snapshot).
_CURRENT = """
SELECT l.sample, l.kind, l.class, l.mask, l.annotator, l.id FROM labels l
JOIN (SELECT sample, MAX(id) AS id FROM labels WHERE id <= ? GROUP BY sample) last ON l.id = last.id
"""
# Samples whose latest answer is a label or "not sure": done, not to be served again.
_ANSWERED = "SELECT sample FROM labels WHERE id IN (SELECT MAX(id) FROM labels GROUP BY sample) AND kind != 'undo'"


@dataclass(frozen=True)
class Item:
    """A queued sample as the labeling page gets it."""

    sample: int
    step: int
    rank: int
    score: float | None
    strategy: str
    guesses: list  # [[class index, probability], ...] best first; [] before the first model
    path: str
    until: float

    def to_dict(self) -> dict:
        return {"sample": self.sample, "step": self.step, "rank": self.rank, "score": self.score,
                "strategy": self.strategy, "guesses": self.guesses, "path": self.path, "until": self.until}


def _corrupt(path: Path, why: str) -> TodalError:
    return TodalError(f"{path} is not a readable todal project database ({why}); restore it from a backup "
                      "or run `todal init` in a new folder.")


class Store:
    """The project database at `path` (a file). `Store.create(path, meta)` makes a new one.

    One connection per thread (the web server's handlers run in a thread pool); every public method
    is one transaction. `busy_timeout` makes concurrent writers wait instead of failing.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise TodalError(f"No todal project database at {self.path}; run `todal init` first.")
        self._local = threading.local()
        self._check()
        self._upgrade()

    # --- connection ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, meta: dict) -> Store:
        path = Path(path)
        if path.exists():
            raise TodalError(f"{path} already exists; open it with Store(path) or choose a new project folder.")
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript("BEGIN;" + _SCHEMA + _EXTRA_SCHEMA + "COMMIT;")
            rows = [("format", FORMAT), ("version", VERSION), *meta.items()]
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in rows])
            con.execute("COMMIT")
        finally:
            con.close()
        return cls(path)

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=True)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def _check(self) -> None:
        try:
            rows = dict(self._con().execute("SELECT key, value FROM meta WHERE key IN ('format', 'version')"))
        except sqlite3.DatabaseError as e:
            self.close()
            raise _corrupt(self.path, str(e)) from None
        if json.loads(rows.get("format", "null")) != FORMAT:
            self.close()
            raise _corrupt(self.path, "it is not a todal project")
        if json.loads(rows.get("version", "null")) != VERSION:
            self.close()
            raise _corrupt(self.path, f"format version {rows.get('version')}, this todal reads {VERSION}")

    def _upgrade(self) -> None:
        have = {r[0] for r in self._con().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"external", "unmatched"} <= have:
            self._con().executescript("BEGIN IMMEDIATE;" + _EXTRA_SCHEMA + "COMMIT;")

    def _write(self):
        """A write transaction that takes the lock up front (no deadlock between two upgrading readers)."""
        return _Transaction(self._con(), "BEGIN IMMEDIATE")

    def _read(self):
        """A read transaction: every query inside it sees one snapshot."""
        return _Transaction(self._con(), "BEGIN")

    def integrity(self) -> str:
        """`PRAGMA integrity_check`: "ok" for a sound file."""
        return self._con().execute("PRAGMA integrity_check").fetchone()[0]

    # --- meta ---------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {k: json.loads(v) for k, v in self._con().execute("SELECT key, value FROM meta")}

    def set_meta(self, **values) -> None:
        with self._write() as con:
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])

    @property
    def classes(self) -> list[str]:
        return self.meta()["classes"]

    # --- samples ------------------------------------------------------------------------------
    def add_samples(self, rows: Sequence[tuple[str, str, int]], status: Sequence[str] | None = None) -> list[int]:
        """Append `(relative path, sha256, bytes)` rows; returns their ids (consecutive, after the last)."""
        now = time.time()
        with self._write() as con:
            start = con.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM samples").fetchone()[0]
            status = status or ["ok"] * len(rows)
            con.executemany("INSERT INTO samples (id, path, sha256, bytes, status, added) VALUES (?, ?, ?, ?, ?, ?)",
                            [(start + i, p, h, b, s, now) for i, ((p, h, b), s) in enumerate(zip(rows, status))])
        return list(range(start, start + len(rows)))

    def update_samples(self, changes: Iterable[tuple[int, str, str, int, str]]) -> None:
        """Rewrite `(id, path, sha256, bytes, status)` of known samples (moved, changed, missing files)."""
        with self._write() as con:
            # Two moved files may swap paths: clear them first so the UNIQUE path never collides midway.
            changes = list(changes)
            con.executemany("UPDATE samples SET path = '#moving#' || id WHERE id = ?", [(c[0],) for c in changes])
            con.executemany("UPDATE samples SET path = ?, sha256 = ?, bytes = ?, status = ? WHERE id = ?",
                            [(p, h, b, s, i) for i, p, h, b, s in changes])

    def samples(self) -> list[tuple[int, str, str, int, str, int]]:
        """Every sample: `(id, path, sha256, bytes, status, holdout)`, by id."""
        return self._con().execute("SELECT id, path, sha256, bytes, status, holdout FROM samples ORDER BY id").fetchall()

    def num_samples(self) -> int:
        return self._con().execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def samples_stamp(self) -> tuple:
        """A cheap fingerprint of the samples table: it changes when a sample is added, moved, changed or goes
        missing (what `todal init` writes), so a cache of it knows when to rebuild."""
        return self._con().execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(path) * (id + 1)), 0), COALESCE(SUM(CASE status WHEN 'ok' THEN "
            "id + 1 ELSE 0 END), 0), COALESCE(SUM(bytes * (id + 1)), 0) FROM samples").fetchone()

    def sample_path(self, sample: int) -> str | None:
        row = self._con().execute("SELECT path FROM samples WHERE id = ?", (int(sample),)).fetchone()
        return row[0] if row else None

    def ids_by_path(self) -> dict[str, int]:
        return dict(self._con().execute("SELECT path, id FROM samples"))

    def set_holdout(self, ids: Iterable[int]) -> None:
        with self._write() as con:
            con.executemany("UPDATE samples SET holdout = 1 WHERE id = ?", [(int(i),) for i in ids])

    # --- labels -------------------------------------------------------------------------------
    def add_label(self, sample: int, cls: int | None, *, annotator: str, source: str, kind: str = "label",
                  request: str | None = None, mask: str | None = None) -> tuple[int, bool]:
        """Record one answer; returns `(label row id, duplicate)`.

        A duplicate (nothing written): a `request` id seen before, or the same annotator giving the
        same answer as the sample's current one (a retried submit, a second tab). The sample's lease
        is released: it is done.
        """
        self._check_answer(sample, cls, kind)
        with self._write() as con:
            return self._insert_label(con, int(sample), cls, kind, annotator, source, request, mask, time.time())

    def add_labels(self, rows: Sequence[dict], *, source: str) -> tuple[int, int]:
        """Many answers in one transaction (imports): dicts with sample, class, annotator, and optionally
        kind, mask, request. Returns `(written, duplicates)`."""
        for r in rows:
            self._check_answer(r["sample"], r.get("class"), r.get("kind", "label"))
        now, written = time.time(), 0
        with self._write() as con:
            for r in rows:
                _, dup = self._insert_label(con, int(r["sample"]), r.get("class"), r.get("kind", "label"),
                                            r.get("annotator") or source, source, r.get("request"), r.get("mask"), now)
                written += not dup
        return written, len(rows) - written

    def _check_answer(self, sample, cls, kind) -> None:
        if kind not in ("label", "unsure", "undo"):
            raise TodalError(f"Unknown answer kind {kind!r}; use label, unsure or undo.")
        if kind == "label" and cls is not None:
            n = len(self.classes)
            if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < n:
                raise TodalError(f"Class {cls!r} is not a class index in [0, {n}); classes: {', '.join(self.classes)}.")

    @staticmethod
    def _insert_label(con, sample, cls, kind, annotator, source, request, mask, now) -> tuple[int, bool]:
        if con.execute("SELECT 1 FROM samples WHERE id = ?", (sample,)).fetchone() is None:
            raise TodalError(f"Unknown sample id {sample}; ids come from the project's queue or export.")
        if request is not None:
            row = con.execute("SELECT id FROM labels WHERE request = ?", (request,)).fetchone()
            if row:
                return row[0], True
        last = con.execute("SELECT id, kind, class, mask, annotator FROM labels WHERE sample = ? ORDER BY id DESC "
                           "LIMIT 1", (sample,)).fetchone()
        if last and kind != "undo" and last[1:] == (kind, cls, mask, annotator):
            return last[0], True
        cur = con.execute("INSERT INTO labels (sample, kind, class, mask, annotator, source, time, request) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (sample, kind, cls, mask, annotator, source, now, request))
        if kind != "undo":
            con.execute("DELETE FROM leases WHERE sample = ?", (sample,))
        return cur.lastrowid, False

    def last_label_id(self) -> int:
        return self._con().execute("SELECT COALESCE(MAX(id), 0) FROM labels").fetchone()[0]

    def current(self, snapshot: int | None = None) -> dict[int, tuple[str, int | None, str | None, str]]:
        """sample -> `(kind, class, mask, annotator)` of its latest answer (among label rows <= snapshot)."""
        snap = self.last_label_id() if snapshot is None else int(snapshot)
        return {s: (k, c, m, a) for s, k, c, m, a, _ in self._con().execute(_CURRENT, (snap,))}

    def history(self, sample: int) -> list[dict]:
        cols = ("id", "kind", "class", "mask", "annotator", "source", "time", "request")
        rows = self._con().execute(f"SELECT {', '.join(cols)} FROM labels WHERE sample = ? ORDER BY id", (int(sample),))
        return [dict(zip(cols, r)) for r in rows]

    def labels_since(self, snapshot: int, source: str) -> int:
        """How many label rows from `source` were written after the row `snapshot` (a step's snapshot)."""
        return self._con().execute("SELECT COUNT(*) FROM labels WHERE id > ? AND source = ? AND kind = 'label'",
                                   (int(snapshot), source)).fetchone()[0]

    # --- answers given in another tool --------------------------------------------------------
    def add_external(self, rows: Sequence[dict], *, source: str) -> tuple[int, int]:
        """Answers given in another tool, in one transaction: dicts with key (that tool's id of the answer),
        sample, class, annotator and request. Each is a label row (duplicates as in `add_label`) linked to its
        key, so `withdraw_external` can take it back. Returns `(written, duplicates)`."""
        for r in rows:
            self._check_answer(r["sample"], r["class"], "label")
        now, written = time.time(), 0
        with self._write() as con:
            for r in rows:
                row, dup = self._insert_label(con, int(r["sample"]), r["class"], "label", r["annotator"], source,
                                              r.get("request"), None, now)
                con.execute("INSERT OR REPLACE INTO external VALUES (?, ?, ?, ?, 0)",
                            (source, str(r["key"]), int(r["sample"]), row))
                written += not dup
        return written, len(rows) - written

    def withdraw_external(self, keys: Iterable[str], *, source: str) -> int:
        """Take back answers given in another tool (deleted or emptied there), in one transaction.

        Where the withdrawn answer is its sample's current one, an "undo" row is written (the history is kept),
        then the latest answer to the sample still standing in that tool, if any, is written again. Returns how
        many samples changed their current answer."""
        now, changed = time.time(), 0
        with self._write() as con:
            for key in keys:
                row = con.execute("SELECT sample, label FROM external WHERE source = ? AND key = ? AND withdrawn = 0",
                                  (source, str(key))).fetchone()
                if row is None:
                    continue
                sample, label = row
                con.execute("UPDATE external SET withdrawn = 1 WHERE source = ? AND key = ?", (source, str(key)))
                last = con.execute("SELECT MAX(id) FROM labels WHERE sample = ?", (sample,)).fetchone()[0]
                if last != label:
                    continue  # answered again since (here or there): that answer stands
                annotator = con.execute("SELECT annotator FROM labels WHERE id = ?", (label,)).fetchone()[0]
                con.execute("INSERT INTO labels (sample, kind, class, mask, annotator, source, time, request) "
                            "VALUES (?, 'undo', NULL, NULL, ?, ?, ?, NULL)", (sample, annotator, source, now))
                changed += 1
                standing = con.execute("SELECT e.key, l.class, l.annotator FROM external e JOIN labels l ON l.id = "
                                       "e.label WHERE e.source = ? AND e.sample = ? AND e.withdrawn = 0 ORDER BY "
                                       "e.label DESC LIMIT 1", (source, sample)).fetchone()
                if standing is not None:
                    again = con.execute("INSERT INTO labels (sample, kind, class, mask, annotator, source, time, "
                                        "request) VALUES (?, 'label', ?, NULL, ?, ?, ?, NULL)",
                                        (sample, standing[1], standing[2], source, now)).lastrowid
                    con.execute("UPDATE external SET label = ? WHERE source = ? AND key = ?", (again, source, standing[0]))
        return changed

    def external(self, source: str) -> dict[str, tuple[int, int, bool]]:
        """key -> `(sample, label row, withdrawn)` of every answer recorded from `source`."""
        return {k: (s, l, bool(w)) for k, s, l, w in self._con().execute(
            "SELECT key, sample, label, withdrawn FROM external WHERE source = ?", (source,))}

    def note_unmatched(self, rows: Sequence[tuple[str, str]], *, source: str) -> None:
        """Record `(key, detail)` of tasks in another tool whose image is not in the project (kept until matched)."""
        with self._write() as con:
            con.executemany("INSERT OR REPLACE INTO unmatched VALUES (?, ?, ?, ?)",
                            [(source, str(k), d, time.time()) for k, d in rows])

    def clear_unmatched(self, keys: Iterable[str], *, source: str) -> None:
        with self._write() as con:
            con.executemany("DELETE FROM unmatched WHERE source = ? AND key = ?", [(source, str(k)) for k in keys])

    def unmatched_keys(self, source: str) -> set[str]:
        return {k for k, in self._con().execute("SELECT key FROM unmatched WHERE source = ?", (source,))}

    def unmatched(self, limit: int = 5) -> dict:
        """`{"count": n, "examples": [(source, key, detail), ...]}` of the unmatched tasks, the newest first."""
        con = self._con()
        n = con.execute("SELECT COUNT(*) FROM unmatched").fetchone()[0]
        rows = con.execute("SELECT source, key, detail FROM unmatched ORDER BY seen DESC, key LIMIT ?", (limit,))
        return {"count": n, "examples": [list(r) for r in rows]}

    # --- the queue and leases -----------------------------------------------------------------
    def enqueue(self, step: int, rows: Sequence[tuple[int, int, float | None, str, list]]) -> None:
        """Queue `(sample, rank, score, strategy, guesses)` rows for `step` (idempotent)."""
        with self._write() as con:
            con.executemany("INSERT OR REPLACE INTO queue VALUES (?, ?, ?, ?, ?, ?)",
                            [(step, int(s), int(r), None if sc is None else float(sc), st, json.dumps(g))
                             for s, r, sc, st, g in rows])

    def pending(self) -> list[tuple[int, int, int]]:
        """Queued samples without an answer whose file is readable: `(step, sample, rank)`, newest step first,
        then by rank."""
        return self._con().execute(
            f"SELECT step, sample, MIN(rank) FROM queue WHERE sample NOT IN ({_ANSWERED}) "
            "AND sample IN (SELECT id FROM samples WHERE status = 'ok') GROUP BY sample ORDER BY step DESC, rank").fetchall()

    def queue_order(self) -> list[int]:
        """Every sample any step queued, answered or not, in the order `lease` serves them: the newest step's
        queue first, by rank."""
        return [r[0] for r in self._con().execute(
            "SELECT sample FROM queue GROUP BY sample ORDER BY MAX(step) DESC, MIN(rank), sample")]

    def queued(self) -> list[Item]:
        """Every queued sample without an answer, as `Item`s (no lease taken), newest step first, by rank."""
        with self._read() as con:
            return self._items(con, [s for _, s, _ in self.pending()], 0.0)

    def lease(self, annotator: str, n: int, ttl: float = 600.0) -> list[Item]:
        """Up to `n` queued samples for `annotator`, none held by anyone else: the ones they already hold
        first (renewed), then new ones from the newest step's queue by rank. A lease expires after `ttl` s."""
        now = time.time()
        with self._write() as con:
            con.execute("DELETE FROM leases WHERE until < ?", (now,))
            con.execute(f"DELETE FROM leases WHERE sample IN ({_ANSWERED})")
            con.execute("UPDATE leases SET until = ? WHERE holder = ?", (now + ttl, annotator))
            held = [r[0] for r in con.execute("SELECT sample FROM leases WHERE holder = ? ORDER BY until, sample",
                                              (annotator,))]
            want = max(0, n - len(held))
            fresh = [r[0] for r in con.execute(
                f"""SELECT q.sample FROM queue q JOIN samples s ON s.id = q.sample
                    WHERE s.status = 'ok' AND q.sample NOT IN ({_ANSWERED})
                      AND q.sample NOT IN (SELECT sample FROM leases)
                      AND q.sample NOT IN (SELECT sample FROM skips WHERE annotator = ?)
                    GROUP BY q.sample ORDER BY MAX(q.step) DESC, MIN(q.rank), q.sample LIMIT ?""",
                (annotator, want))]
            con.executemany("INSERT INTO leases VALUES (?, ?, ?)", [(s, annotator, now + ttl) for s in fresh])
            return self._items(con, held[:n] + fresh, now + ttl)

    @staticmethod
    def _items(con, samples: list[int], until: float) -> list[Item]:
        out = []
        for s in samples:
            row = con.execute("SELECT q.step, q.rank, q.score, q.strategy, q.guesses, p.path FROM queue q "
                              "JOIN samples p ON p.id = q.sample WHERE q.sample = ? ORDER BY q.step DESC LIMIT 1",
                              (s,)).fetchone()
            if row is None:  # an undone sample that was labeled outside the queue (an import)
                path = con.execute("SELECT path FROM samples WHERE id = ?", (s,)).fetchone()[0]
                out.append(Item(s, -1, 0, None, "", [], path, until))
                continue
            step, rank, score, strategy, guesses, path = row
            out.append(Item(s, step, rank, score, strategy, json.loads(guesses) if guesses else [], path, until))
        return out

    def release(self, sample: int, annotator: str) -> None:
        with self._write() as con:
            con.execute("DELETE FROM leases WHERE sample = ? AND holder = ?", (int(sample), annotator))

    def skip(self, sample: int, annotator: str) -> None:
        """The annotator passes on `sample`: it goes back to the queue for the others, never to them again."""
        with self._write() as con:
            con.execute("INSERT OR REPLACE INTO skips VALUES (?, ?, ?)", (int(sample), annotator, time.time()))
            con.execute("DELETE FROM leases WHERE sample = ? AND holder = ?", (int(sample), annotator))

    def undo(self, annotator: str, ttl: float = 600.0) -> Item | None:
        """Take back the annotator's latest answer that still stands; the sample is leased back to them."""
        now = time.time()
        with self._write() as con:
            row = con.execute("""SELECT l.sample FROM labels l WHERE l.annotator = ? AND l.kind != 'undo'
                                  AND l.id IN (SELECT MAX(id) FROM labels GROUP BY sample)
                                  ORDER BY l.id DESC LIMIT 1""", (annotator,)).fetchone()
            if row is None:
                return None
            sample = row[0]
            con.execute("INSERT INTO labels (sample, kind, class, mask, annotator, source, time, request) "
                        "VALUES (?, 'undo', NULL, NULL, ?, 'web', ?, NULL)", (sample, annotator, now))
            con.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (sample, annotator, now + ttl))
            return self._items(con, [sample], now + ttl)[0]

    def leases(self) -> list[tuple[int, str, float]]:
        return self._con().execute("SELECT sample, holder, until FROM leases ORDER BY sample").fetchall()

    # --- progress -----------------------------------------------------------------------------
    def progress(self) -> dict:
        """What the labeling page and `status` show: the current batch (the newest step's queue), labels
        per class and per annotator, and the latest step's accuracy estimate on its validation labels."""
        with self._read() as con:
            classes = json.loads(con.execute("SELECT value FROM meta WHERE key = 'classes'").fetchone()[0])
            current = con.execute(_CURRENT, (2**62,)).fetchall()
            step = con.execute("SELECT MAX(step) FROM queue").fetchone()[0]
            last = con.execute("SELECT step, metrics FROM steps WHERE state = 'done' AND step > 0 ORDER BY step DESC "
                               "LIMIT 1").fetchone()
            batch = [r[0] for r in con.execute("SELECT sample FROM queue WHERE step = ?", (step,))]
            pending = len(con.execute(f"SELECT DISTINCT sample FROM queue WHERE sample NOT IN ({_ANSWERED})").fetchall())
        per_class = {c: 0 for c in classes}
        per_annotator: dict[str, int] = {}
        answered = set()
        unsure = 0
        for _, kind, cls, mask, annotator, _ in current:
            if kind == "undo":
                continue
            if kind == "unsure":
                unsure += 1
            elif cls is not None:
                per_class[classes[cls]] += 1
            per_annotator[annotator] = per_annotator.get(annotator, 0) + 1
        answered = {s for s, kind, *_ in current if kind != "undo"}
        done = sum(s in answered for s in batch)
        labeled = sum(1 for _, kind, cls, mask, *_ in current if kind == "label")
        m = json.loads(last[1]) if last and last[1] else {}
        estimate = None if not m.get("val_size") or m.get("val_accuracy") is None else {
            "step": last[0], "accuracy": m["val_accuracy"], "low": m["val_low"], "high": m["val_high"],
            "n": m["val_size"], "recommendation": (m.get("recommendation") or "").split(":")[0] or None}
        return {"step": step, "estimate": estimate, "batch": {"size": len(batch), "done": done, "left": len(batch) - done},
                "queued": pending, "labeled": labeled, "unsure": unsure, "per_class": per_class,
                "per_annotator": per_annotator}

    def guess_hits(self) -> dict[int, tuple[int, int]]:
        """Per step, `(answered, hits)`: of the samples it queued with the model's guesses that a person then
        labeled, how many, and how often the top guess was the class they gave (their current label)."""
        current = self.current()
        out: dict[int, list[int]] = {}
        for step, sample, guesses in self._con().execute("SELECT step, sample, guesses FROM queue WHERE guesses "
                                                         "IS NOT NULL AND guesses != '[]'"):
            kind, cls, *_ = current.get(sample, (None, None))
            if kind != "label" or cls is None:
                continue
            top = json.loads(guesses)[0][0]
            counts = out.setdefault(step, [0, 0])
            counts[0] += 1
            counts[1] += int(top == cls)
        return {step: (n, hits) for step, (n, hits) in sorted(out.items())}

    # --- steps --------------------------------------------------------------------------------
    def steps(self) -> list[dict]:
        cols = ("step", "state", "snapshot", "config", "checkpoint", "metrics", "started", "finished")
        out = []
        for r in self._con().execute(f"SELECT {', '.join(cols)} FROM steps ORDER BY step"):
            d = dict(zip(cols, r))
            d["config"] = json.loads(d["config"])
            d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else None
            out.append(d)
        return out

    def begin_step(self, step: int, config: dict) -> int:
        """Record that `step` started, with the label snapshot it reads (the newest label row now)."""
        with self._write() as con:
            snap = con.execute("SELECT COALESCE(MAX(id), 0) FROM labels").fetchone()[0]
            con.execute("INSERT INTO steps (step, state, snapshot, config, started) VALUES (?, 'started', ?, ?, ?)",
                        (step, snap, json.dumps(config), time.time()))
        return snap

    def step_trained(self, step: int, checkpoint: str, metrics: dict) -> None:
        with self._write() as con:
            con.execute("UPDATE steps SET state = 'trained', checkpoint = ?, metrics = ? WHERE step = ?",
                        (checkpoint, json.dumps(metrics), step))

    def finish_step(self, step: int, metrics: dict, queue: Sequence[tuple[int, int, float | None, str, list]],
                    holdout: Iterable[int] = ()) -> None:
        """The step's queue, holdout samples and metrics, in one transaction: the step is done or not at all."""
        with self._write() as con:
            con.executemany("INSERT OR REPLACE INTO queue VALUES (?, ?, ?, ?, ?, ?)",
                            [(step, int(s), int(r), None if sc is None else float(sc), st, json.dumps(g))
                             for s, r, sc, st, g in queue])
            con.executemany("UPDATE samples SET holdout = 1 WHERE id = ?", [(int(i),) for i in holdout])
            con.execute("UPDATE steps SET state = 'done', metrics = ?, finished = ? WHERE step = ?",
                        (json.dumps(metrics), time.time(), step))


class _Transaction:
    def __init__(self, con: sqlite3.Connection, begin: str):
        self.con, self.begin = con, begin

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute(self.begin)
        return self.con

    def __exit__(self, exc_type, exc, tb) -> None:
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")
