import json
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch

import todal.engine as engine
import todal.project.core as core
from projkit import CLASSES, answer_queue, write_images
from todal.errors import TodalError
from todal.flavor import flavor_for
from todal.objectives import Eq7Consistency
from todal.project.core import Project, wilson
from todal.project.store import Store

TRAIN = {"epochs": 12, "batch_size": 16, "lr": 0.05}


def make(tmp_path, n=150, **kw):
    truth = write_images(tmp_path / "images", n)
    kw = {"size": 12, "seed_batch": 60, "train": TRAIN, **kw}
    project, report = Project.init(tmp_path / "proj", tmp_path / "images", CLASSES, **kw)
    return project, report, truth


def test_wilson_interval_matches_hand_values():
    lo, hi = wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson(0, 0) == (0.0, 1.0)


def test_init_indexes_nested_folders_into_a_disk_cache(tmp_path):
    project, report, truth = make(tmp_path, n=40, seed_batch=10)
    rows = project.store.samples()
    assert sorted(p for _, p, *_ in rows) == sorted(truth)
    assert len(report.added) == 40 and not report.missing
    sha = {p: h for _, p, h, *_ in rows}
    import hashlib
    some = next(iter(truth))
    assert sha[some] == hashlib.sha256((tmp_path / "images" / some).read_bytes()).hexdigest()
    cache = project.cache
    assert cache.path.stat().st_size == 40 * 1 * 12 * 12  # uint8, grayscale, 12x12, on disk
    assert isinstance(cache.array(), np.memmap)
    from PIL import Image
    i = next(i for i, p, *_ in rows if p == some)
    assert np.array_equal(cache.array()[i, 0], np.asarray(Image.open(tmp_path / "images" / some)))
    assert len(project.store.queued()) == 10  # the random seed batch


def test_init_writes_the_decoded_pool_to_disk_as_it_comes(tmp_path, monkeypatch):
    from todal.project.images import ImageCache

    writes = []
    real = ImageCache.write
    monkeypatch.setattr(core, "FLUSH_ROWS", 8)
    monkeypatch.setattr(ImageCache, "write", lambda self, rows: (writes.append(len(rows)), real(self, rows))[1])
    project, _, _ = make(tmp_path, n=50, seed_batch=5)
    assert max(writes) <= 8 and sum(writes) == 50
    assert project.cache.path.stat().st_size == 50 * 12 * 12


def test_init_again_reports_new_moved_changed_missing_and_unreadable(tmp_path):
    project, _, truth = make(tmp_path, n=30, seed_batch=10)
    images = tmp_path / "images"
    ids = project.store.ids_by_path()
    paths = sorted(truth)
    moved, deleted, changed = paths[0], paths[1], paths[2]
    project.store.add_label(ids[moved], 1, annotator="a", source="test")
    (images / "elsewhere").mkdir()
    shutil.move(images / moved, images / "elsewhere" / "moved.png")
    (images / deleted).unlink()
    from PIL import Image
    Image.fromarray(np.full((12, 12), 200, np.uint8)).save(images / changed)
    write_images(images, 5, seed=9, start=1000)
    (images / "broken.png").write_bytes(b"not a png at all")
    project, report = Project.init(tmp_path / "proj", images, CLASSES)
    assert len(report.added) == 6 and report.moved == [(moved, "elsewhere/moved.png")]
    assert report.missing == [deleted] and report.changed == [changed]
    assert [p for p, _ in report.unreadable] == ["broken.png"]
    now = project.store.ids_by_path()
    assert now["elsewhere/moved.png"] == ids[moved]  # the same sample, its label kept
    assert project.store.current()[ids[moved]][1] == 1
    status = {p: s for _, p, _, _, s, _ in project.store.samples()}
    assert status[deleted] == "missing" and status["broken.png"] == "unreadable"
    assert any("unreadable (skipped): broken.png" in line for line in report.lines())
    assert len(project.store.steps()) == 1  # indexing again does not queue another seed batch
    assert ids[deleted] not in {it.sample for it in project.store.queued()}  # a missing file is not served


def test_init_refuses_a_changed_class_list(tmp_path):
    make(tmp_path, n=20, seed_batch=5)
    with pytest.raises(TodalError, match="class list changed since init"):
        Project.init(tmp_path / "proj", tmp_path / "images", ["horizontal", "vertical", "other"])


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", ".", "..", "nul\x00", "tab\there", "bell\x07", "x" * 101])
def test_init_refuses_a_class_name_that_is_not_a_safe_folder_name(tmp_path, bad):
    write_images(tmp_path / "images", 3)
    with pytest.raises(TodalError, match="is not usable as a folder name") as e:
        Project.init(tmp_path / "proj", tmp_path / "images", [bad, "cat"])
    assert repr(bad) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "proj").exists()


def test_init_takes_a_long_unicode_class_name_and_strips_spaces_around_names(tmp_path):
    write_images(tmp_path / "images", 3)
    project, _ = Project.init(tmp_path / "proj", tmp_path / "images", "Ankle boot, T-shirt.top ," + "é" * 100,
                              seed_batch=2)
    assert project.classes == ["Ankle boot", "T-shirt.top", "é" * 100]


def test_export_imagefolder_refuses_an_older_project_with_an_unsafe_class_name(tmp_path):
    from serverkit import make_project

    root = make_project(tmp_path, 2, classes=["../escaped", "cat"])
    Store(root / "project.db").add_label(0, 0, annotator="ana", source="web")
    with pytest.raises(TodalError, match="'../escaped' is not usable as a folder name") as e:
        Project(root).export("imagefolder", tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"random bytes, not sqlite" * 100, "foreign"])
def test_a_corrupted_or_foreign_database_is_refused_in_one_line(tmp_path, content):
    (tmp_path / "proj").mkdir()
    db = tmp_path / "proj" / "project.db"
    if content == "foreign":
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        con.execute("CREATE TABLE users (name TEXT)")
        con.commit()
        con.close()
    else:
        db.write_bytes(content)
    with pytest.raises(TodalError, match="not a readable todal project database") as e:
        Project(tmp_path / "proj")
    assert "\n" not in str(e.value)


def test_step_trains_on_the_persons_labels(tmp_path):
    """The images carry no labels: what the model learns can only come from the person. Labels given
    as a permutation of the truth make the model's guesses follow the permutation."""
    project, _, truth = make(tmp_path)
    swap = {0: 1, 1: 2, 2: 0}
    answer_queue(project, truth, relabel=swap.get)
    m = project.step(budget=30, strategy="entropy")
    assert m["val_size"] == 12 and m["val_accuracy"] >= 0.9  # 20% of the 60 random seed labels held out
    queued = project.store.queued()
    hits = sum(it.guesses[0][0] == swap[truth[it.path]] for it in queued)
    assert hits >= 0.8 * len(queued)


def test_holdout_is_never_trained_on_and_every_step_adds_a_random_validation_slice(tmp_path, monkeypatch):
    project, _, truth = make(tmp_path)
    answer_queue(project, truth)
    seen = []
    real = engine.fit

    def spy(model, task, data, labeled, **kw):
        seen.append(set(labeled.tolist()))
        return real(model, task, data, labeled, **kw)

    monkeypatch.setattr(engine, "fit", spy)
    m = project.step(budget=20, strategy="cod")
    holdout = {i for i, *_, h in project.store.samples() if h}
    rows = project.store._con().execute("SELECT step, sample, rank, strategy, score FROM queue").fetchall()
    seed_batch = {x for st, x, *_ in rows if st == 0}
    slice1 = {x for st, x, _, who, _ in rows if st == 1 and who == "validation"}
    assert len(slice1) == 4 == m["holdout_added"] and holdout == (holdout & seed_batch) | slice1
    assert len(holdout & seed_batch) == 12 and not (seen[0] & holdout) and len(seen[0]) == 48
    picks = [(rank, who, score) for st, _, rank, who, score in rows if st == 1]
    assert sorted(r for r, *_ in picks) == list(range(20))  # one queue: 16 COD picks with 4 validation among them
    assert [who for _, who, _ in sorted(picks)].count("cod") == 16
    assert all(score is None for _, who, score in picks if who == "validation")
    answer_queue(project, truth)
    m = project.step(budget=20, strategy="cod")
    assert not (seen[1] & holdout) and m["val_size"] == 16  # the estimate rests on 16 labels now, not 12
    assert m["stop_kappa"] is not None and m["paired"][2] == 12 and 0 <= m["pool_uncertainty"] <= 1
    assert m["recommendation"].startswith(("keep labeling", "diminishing returns", "stop"))


def test_the_validation_reserve_is_a_fixed_random_share_that_grows_with_the_pool():
    from todal.project.core import reserve_keys

    keys = reserve_keys(7, 200_000)
    assert torch.equal(reserve_keys(7, 1000), keys[:1000])  # a sample's key never changes as images are added
    assert not torch.equal(reserve_keys(8, 1000), keys[:1000])
    share = float((keys < 0.2).double().mean())
    assert abs(share - 0.2) < 0.005 and 0 <= float(keys.min()) and float(keys.max()) < 1
    assert abs(float(keys.mean()) - 0.5) < 0.005  # uniform: the mean of U[0, 1)


def test_validation_labels_come_from_the_reserve_the_strategy_never_sees(tmp_path):
    """The strategy takes the hard images, so what it leaves grows easier; a validation slice drawn from its
    leftovers would estimate too high. Every step's slice must come from the fixed reserve, and no strategy pick
    may come from it."""
    from todal.project.core import reserve_keys

    project, _, truth = make(tmp_path)
    reserve = set((reserve_keys(project.meta["seed"], 150) < project.meta["holdout"]).nonzero().flatten().tolist())
    for _ in range(3):
        answer_queue(project, truth)
        project.step(budget=20, strategy="margin")
    rows = project.store._con().execute("SELECT step, sample, strategy FROM queue WHERE step > 0").fetchall()
    validation = {x for _, x, who in rows if who == "validation"}
    picks = {x for _, x, who in rows if who == "margin"}
    assert len(validation) == 12 and validation <= reserve and not picks & reserve and len(picks) == 48


def test_a_step_killed_midway_resumes_to_the_same_queue(tmp_path, monkeypatch):
    a, _, truth = make(tmp_path / "a")
    b, _, _ = make(tmp_path / "b")
    for p in (a, b):
        answer_queue(p, truth)
    a.step(budget=25, strategy="cod", semi=True)

    class Killed(Exception):
        pass

    real = core.Project._validate

    def dying(self, *args, **kw):
        raise Killed

    monkeypatch.setattr(core.Project, "_validate", dying)
    with pytest.raises(Killed):
        b.step(budget=25, strategy="cod", semi=True)
    assert b.store.steps()[-1]["state"] == "trained"
    answer_queue(b, truth, limit=5, annotator="late")  # labels given meanwhile do not change this step
    monkeypatch.setattr(core.Project, "_validate", real)
    b.step(budget=25, strategy="cod", semi=True)
    qa = [(it.sample, it.rank) for it in a.store.queued()]
    qb = [(it.sample, it.rank) for it in b.store.queued()]
    assert qa == qb and len(qa) == 25
    assert a.store.steps()[-1]["metrics"]["val_accuracy"] == b.store.steps()[-1]["metrics"]["val_accuracy"]


def test_resuming_with_other_options_is_refused(tmp_path, monkeypatch):
    project, _, truth = make(tmp_path)
    answer_queue(project, truth)
    monkeypatch.setattr(core.Project, "_validate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        project.step(budget=25, strategy="cod")
    monkeypatch.undo()
    with pytest.raises(TodalError, match="Step 1 was started with .* run it again with the same options"):
        project.step(budget=25, strategy="entropy")


def test_step_without_labels_says_what_to_do(tmp_path):
    project, _, _ = make(tmp_path, n=30, seed_batch=10)
    with pytest.raises(TodalError, match="No labels to train on yet: label the queue first"):
        project.step()


def test_export_and_import_csv(tmp_path):
    project, _, truth = make(tmp_path)
    answer_queue(project, truth)
    project.step(budget=10, strategy="margin")
    out = tmp_path / "queue.csv"
    assert project.export("csv", out) == 10
    lines = out.read_text().splitlines()
    assert lines[0] == "id,path,score,guess"
    rows = [line.split(",") for line in lines[1:]]
    by_path = project.store.ids_by_path()
    assert all(by_path[p] == int(i) and g in CLASSES for i, p, _, g in rows)
    scores = [float(s) for _, _, s, _ in rows if s]  # the validation slice has no score
    assert len(scores) == 8 and scores == sorted(scores, reverse=True)  # by rank: the most informative first
    # A person's answers: some by path, one by absolute path, problems reported, nothing fatal.
    answers = tmp_path / "answers.csv"
    answers.write_text("path,label,annotator\n"
                       f"{rows[0][1]},vertical,ann\n{tmp_path / 'images' / rows[1][1]},diagonal,ann\n"
                       f"{rows[2][1]},cat,ann\nmissing.png,vertical,ann\n")
    r = project.import_csv(answers)
    assert r["imported"] == 2 and len(r["problems"]) == 2
    assert "label 'cat' is not a class" in r["problems"][0] and "'missing.png' is not an image" in r["problems"][1]
    cur = project.store.current()
    assert cur[int(rows[0][0])][1] == 1 and cur[int(rows[1][0])][1] == 2 and cur[int(rows[0][0])][3] == "ann"
    assert project.import_csv(answers)["duplicates"] == 2  # the same file again records nothing new
    ids = tmp_path / "ids.csv"
    ids.write_text(f"{rows[3][0]},horizontal\n")  # no header: id,label
    assert project.import_csv(ids)["imported"] == 1


def test_export_imagefolder(tmp_path):
    project, _, truth = make(tmp_path, n=30, seed_batch=9)
    answer_queue(project, truth)
    n = project.export("imagefolder", tmp_path / "out")
    files = sorted((tmp_path / "out").rglob("*.png"))
    assert n == len(files) == 9
    assert all(CLASSES.index(f.parent.name) == truth[f.name.replace("__", "/")] for f in files)


def test_status_reports_per_step_accuracy_interval_and_size(tmp_path):
    project, _, truth = make(tmp_path)
    answer_queue(project, truth)
    project.step(budget=20, strategy="random")
    st = project.status()
    assert st["labeled"] == 60 and st["holdout_labeled"] == 12
    assert sum(st["per_class"].values()) == 60
    s1 = st["steps"][1]
    assert s1["val_size"] == 12 and s1["val_low"] <= s1["val_accuracy"] <= s1["val_high"]
    assert st["queue"]["waiting"] == 20
    holdout = [i for i, *_, h in project.store.samples() if h]
    assert len(holdout) == 12 + 4  # a random step adds its own holdout slice
    assert (project.root / "learning_curve.png").exists()


def test_segmentation_project_trains_on_imported_masks(tmp_path):
    from PIL import Image

    truth = write_images(tmp_path / "images", 40, nested=False)
    project, _ = Project.init(tmp_path / "proj", tmp_path / "images", ["background", "bar"], task="segmentation",
                              model="seg_cnn", size=12, seed_batch=20, train={"epochs": 3, "batch_size": 8, "lr": 1e-3})
    masks = tmp_path / "masks"
    masks.mkdir()
    for it in project.store.queued():
        img = np.asarray(Image.open(tmp_path / "images" / it.path))
        Image.fromarray((img == 255).astype(np.uint8)).save(masks / it.path)
    (masks / "nothing.png").write_bytes(b"")
    r = project.import_masks(masks)
    assert r["imported"] == 20 and len(r["problems"]) == 1
    assert sorted((project.root / "masks").glob("*.png"))
    m = project.step(budget=5, strategy="entropy")
    assert m["val_size"] == 4 and 0 <= m["val_miou"] <= 1 and m["queued"] == 5


def test_cli_workflow(tmp_path, capsys):
    from todal.cli import main

    truth = write_images(tmp_path / "images", 90)

    def todal(*args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    proj = tmp_path / "proj"
    rc, out, _ = todal("init", proj, "--images", tmp_path / "images", "--classes", ",".join(CLASSES), "--size", "12",
                       "--seed-batch", "30", "--epochs", "5", "--quiet")
    assert rc == 0 and "90 images" in out and "30 queued" in out
    assert todal("export", proj, "--format", "csv", tmp_path / "q.csv")[0] == 0
    rows = [line.split(",") for line in (tmp_path / "q.csv").read_text().splitlines()[1:]]
    (tmp_path / "a.csv").write_text("path,label\n" + "".join(f"{p},{CLASSES[truth[p]]}\n" for _, p, _, _ in rows))
    rc, out, _ = todal("import", proj, tmp_path / "a.csv", "--format", "csv")
    assert rc == 0 and "imported 30 labels" in out
    rc, out, _ = todal("step", proj, "--budget", "10", "--strategy", "entropy", "--quiet")
    assert rc == 0 and "step 1: trained on 24 labels" in out and "6 images" in out
    rc, out, _ = todal("status", proj, "--json")
    st = json.loads(out)
    assert st["labeled"] == 30 and st["steps"][1]["val_size"] == 6
    rc, out, _ = todal("status", proj)
    assert "holdout accuracy" in out and "queue: 10 waiting" in out
    rc, out, _ = todal("export", proj, "--format", "label-studio", tmp_path / "tasks.json", "--image-url", "data-uri")
    assert rc == 0 and "wrote 10 queued samples" in out and (tmp_path / "tasks.label_config.xml").exists()
    assert len(json.loads((tmp_path / "tasks.json").read_text())) == 10
    rc, _, err = todal("init", proj, "--images", tmp_path / "images", "--classes", "a,b")
    assert rc == 2 and err.count("\n") == 1 and "class list changed" in err
    rc, _, err = todal("step", tmp_path / "nothing")
    assert rc == 2 and "is not a todal project" in err


def test_cli_error_exits_without_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "todal.cli", "status", str(tmp_path / "nothing")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is not a todal project" in r.stderr


def test_cod_scores_the_pool_with_one_pass_from_the_second_step_on(tmp_path, monkeypatch):
    """The previous step's outputs are kept, so the previous model is not built or run again."""
    from todal.strategies.base import Context

    project, _, truth = make(tmp_path)
    answer_queue(project, truth)
    runs = {"n": 0}
    real = Context.previous_model

    def counting(self):
        runs["n"] += 1
        return real.fget(self)

    monkeypatch.setattr(Context, "previous_model", property(counting))
    project.step(budget=20, strategy="cod")
    assert runs["n"] > 0  # the first step compares with the initial model
    answer_queue(project, truth)
    runs["n"] = 0
    project.step(budget=20, strategy="cod")
    assert runs["n"] == 0  # previous outputs came from strategy_1.pt


def test_people_keep_labeling_while_a_step_runs(tmp_path, monkeypatch):
    """8 writers add labels during a step: every label lands once, the step trains on its snapshot only."""
    import threading

    started = threading.Event()
    real_begin = Store.begin_step

    def begin(self, *args):
        snap = real_begin(self, *args)
        started.set()  # the writers start once the step holds its snapshot
        return snap

    monkeypatch.setattr(Store, "begin_step", begin)
    project, _, truth = make(tmp_path, n=600)
    answer_queue(project, truth)
    started.clear()  # init began step 0
    snapshot = project.store.last_label_id()
    rest = [i for i, p, *_ in project.store.samples() if i not in project.store.current()]
    paths = {i: p for i, p, *_ in project.store.samples()}
    acked, errors = [], []

    def writer(k):
        store = Store(project.root / "project.db")  # its own connection, as another process would have
        started.wait(60)
        try:
            for i in rest[k::8][:40]:
                store.add_label(i, truth[paths[i]], annotator=f"w{k}", source="web", request=f"{k}-{i}")
                acked.append(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    m = project.step(budget=20, strategy="entropy")
    for t in threads:
        t.join()
    assert not errors and len(acked) == 320
    assert project.store.steps()[-1]["snapshot"] == snapshot
    assert m["trained_on"] == 48  # the 60 seed labels less the holdout; nothing posted during the step
    cur = project.store.current()
    assert all(cur[i][1] == truth[paths[i]] for i in acked)
    rows = project.store._con().execute("SELECT sample, COUNT(*) FROM labels GROUP BY sample HAVING COUNT(*) > 1")
    assert rows.fetchall() == []
    assert project.store.integrity() == "ok"


KILL_SCRIPT = """
import os, signal, sys
import todal.engine as engine
import todal.project.core as core
from todal.project.store import Store

root, point = sys.argv[1], sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(obj, name):
    real = getattr(obj, name)
    def wrapped(*a, **k):
        out = real(*a, **k)
        die()
    setattr(obj, name, wrapped)

def before(obj, name):
    setattr(obj, name, lambda *a, **k: die())

if point == "training":
    after(engine, "fit")                # trained, nothing saved yet
elif point == "checkpoint":
    after(engine, "torch_save")         # the checkpoint is on disk, the database does not know it
elif point == "trained":
    after(Store, "step_trained")        # the database knows the checkpoint
elif point == "scoring":
    after(core.Project, "_guesses")     # selected, nothing queued
elif point == "queueing":
    before(Store, "finish_step")        # the queue transaction never starts
core.Project(root).step(budget=15, strategy="cod", semi=True)
"""


def test_a_step_killed_with_sigkill_anywhere_resumes_to_the_same_queue(tmp_path):
    script = tmp_path / "step.py"
    script.write_text(KILL_SCRIPT)
    projects = {}
    for name in ("ref", "killed"):
        project, _, truth = make(tmp_path / name)
        answer_queue(project, truth)
        projects[name] = project

    def step(name, point="none"):
        return subprocess.run([sys.executable, str(script), str(projects[name].root), point], timeout=300,
                              capture_output=True, text=True)

    assert step("ref").returncode == 0
    for point in ("training", "checkpoint", "trained", "scoring", "queueing"):
        r = step("killed", point)
        assert r.returncode == -9, (point, r.stderr[-500:])
    assert step("killed").returncode == 0
    ref, killed = projects["ref"].store, projects["killed"].store
    assert [(i.sample, i.rank, i.score) for i in killed.queued()] == [(i.sample, i.rank, i.score) for i in ref.queued()]
    assert [s["state"] for s in killed.steps()] == ["done", "done"] and killed.integrity() == "ok"
    assert killed.steps()[1]["metrics"]["val_accuracy"] == ref.steps()[1]["metrics"]["val_accuracy"]


def test_a_semi_supervised_step_trains_with_the_default_flavors_tod_loss(tmp_path, monkeypatch):
    project, _, truth = make(tmp_path)
    answer_queue(project, truth)
    seen = {}
    real = engine.fit

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(engine, "fit", spy)
    project.step(budget=10, strategy="cod", semi=True, train={"epochs": 1})
    default, unsup = flavor_for("default"), seen["consistency"]
    assert isinstance(unsup, Eq7Consistency) and seen["unlabeled"] is not None
    assert (unsup.lam, unsup.reduction, unsup.teacher_train_mode) == (
        default.lam, default.consistency_reduction, default.teacher_train_mode)


def test_a_project_checkpoint_holding_code_is_refused_and_never_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    project, _, truth = make(tmp_path)
    answer_queue(project, truth)
    project.step(budget=20, strategy="cod")
    answer_queue(project, truth)
    path = project.root / "checkpoints" / "step_1.pt"
    torch.save({**torch.load(path, weights_only=True), "ema": Payload()}, path)
    with pytest.raises(TodalError, match=r"step_1.pt is not a weights-only checkpoint"):
        project.step(budget=20, strategy="cod")
    with pytest.raises(TodalError, match=r"step_1.pt is not a weights-only checkpoint"):
        project.model(1)
    assert not (tmp_path / "ran").exists()


def test_status_the_page_and_the_curve_give_the_same_estimate_and_a_recommendation(tmp_path, capsys):
    from todal.cli import main

    project, _, truth = make(tmp_path)
    for _ in range(3):
        answer_queue(project, truth)
        project.step(budget=20, strategy="cod")
    st = project.status()
    last = st["steps"][-1]
    rec = st["recommendation"]
    assert rec["estimate"] == {k: last[k] for k in ("val_accuracy", "val_low", "val_high", "val_size")}
    assert last["val_size"] == 20 and rec["verdict"] in ("keep labeling", "diminishing returns", "stop")
    assert rec["kappa"] == last["stop_kappa"] and rec["gain"] is not None
    page = project.store.progress()["estimate"]
    assert (page["accuracy"], page["low"], page["high"], page["n"], page["step"]) == (
        last["val_accuracy"], last["val_low"], last["val_high"], 20, 3)
    assert main(["status", str(project.root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith(f"accuracy estimate: {100 * last['val_accuracy']:.1f}% (95% interval")
    assert out[-1] == f"recommendation: {rec['text']}"
    assert main(["status", str(project.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recommendation"]["text"] == rec["text"]
    assert (project.root / "learning_curve.png").exists()


def test_a_piped_step_prints_lines_not_bars_and_logs_to_tensorboard(tmp_path):
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    project, _, truth = make(tmp_path)
    answer_queue(project, truth)
    log = tmp_path / "step.log"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "todal", "step", str(project.root), "--budget", "20", "--epochs", "3",
                            "--log-dir", str(tmp_path / "tb")], stdout=f, stderr=subprocess.STDOUT, timeout=300)
    assert r.returncode == 0
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    epochs = [line for line in lines if re.fullmatch(r"step 1 train: epoch [1-3]/3, loss \d+\.\d{3} \(\d+\.\ds\)", line)]
    assert len(epochs) == 3 and lines[-1].startswith("recommendation: ") and len(lines) <= 8, lines
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("cycle/val_accuracy")] == [1]
    assert [e.step for e in events.Scalars("curve/val_accuracy")] == [60]
    assert [e.step for e in events.Images("queued")] == [1]
