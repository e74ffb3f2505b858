import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import todal.atomic
import todal.loop
from tinydata import Killed, blobs, mlp, run_until_killed
from todal import ActiveLoop, strategies
from todal.errors import TodalError
from todal.oracle import FileOracle

TIMING = ("train_time_s", "select_time_s")


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def make(workdir, strategy="cod", semi=True, seed=0, cycles=3, **kw):
    return ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), strategy=strategy, semi_supervised=semi, initial=20,
                      budget=10, cycles=cycles, epochs=3, train={"batch_size": 8, "lr": 0.05}, workdir=workdir,
                      seed=seed, **kw)


def test_records_per_cycle(tmp_path):
    recs = make(tmp_path).run()
    assert [r["labeled"] for r in recs] == [20, 30, 40]
    assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in recs)
    assert all(len(r["selected"]) == 10 for r in recs[:-1]) and "selected" not in recs[-1]
    assert all("train_time_s" in r for r in recs) and all("select_time_s" in r for r in recs[:-1])
    assert len(recs[0]["per_class_accuracy"]) == 3
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "pool.json", "progress.json", "metrics.jsonl", "checkpoints"} <= files


@pytest.mark.parametrize("strategy, semi", [("cod", True), ("random", False), ("emaod", False)])
def test_same_seed_same_selections_and_metrics(tmp_path, strategy, semi):
    a = make(tmp_path / "a", strategy, semi).run()
    b = make(tmp_path / "b", strategy, semi).run()
    assert strip(a) == strip(b)


def test_different_seeds_differ(tmp_path):
    assert strip(make(tmp_path / "a").run()) != strip(make(tmp_path / "b", seed=1).run())


def _uninterrupted(tmp_path, **kw):
    return strip(make(tmp_path / "ref", **kw).run())


@pytest.mark.parametrize("kill_after", range(1, 11))
def test_resume_after_any_completed_stage(tmp_path, monkeypatch, kill_after):
    expected = _uninterrupted(tmp_path)
    run_until_killed(lambda: make(tmp_path / "run").run(), monkeypatch, kill_after)
    assert strip(make(tmp_path / "run").run()) == expected


@pytest.mark.parametrize("target", ["pool.json", "cycle_1.pt", "metrics.jsonl", "strategy_0.pt"])
def test_resume_after_a_crash_mid_write(tmp_path, monkeypatch, target):
    expected = _uninterrupted(tmp_path)
    real = os.replace

    def dying(src, dst):
        if Path(dst).name == target:
            raise Killed  # the temp file is written, the rename never happens
        real(src, dst)

    monkeypatch.setattr(todal.atomic.os, "replace", dying)
    with pytest.raises(Killed):
        make(tmp_path / "run").run()
    monkeypatch.setattr(todal.atomic.os, "replace", real)
    assert not list((tmp_path / "run").rglob("*.tmp"))  # no half-written file left behind
    assert strip(make(tmp_path / "run").run()) == expected


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from tinydata import blobs, mlp
    from todal import ActiveLoop
    loop = ActiveLoop(mlp, blobs(400, 0), blobs(60, 1), strategy="cod", initial=40, budget=20, cycles=4,
                      epochs=10, train={{"batch_size": 8, "lr": 0.05}}, workdir=sys.argv[1], seed=3)
    loop.run()
""")


def test_sigkill_at_any_time_resumes_to_the_same_result(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(script), str(ref)], check=True)
    run = tmp_path / "run"
    for delay in (1.5, 1.0, 0.7):  # kill at a few points; a finished run just returns
        proc = subprocess.Popen([sys.executable, str(script), str(run)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run([sys.executable, str(script), str(run)], check=True)
    read = lambda d: strip([json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()])
    assert read(run) == read(ref)


def test_different_config_on_existing_run_is_refused(tmp_path):
    make(tmp_path).run()
    with pytest.raises(TodalError, match="different configuration \\(strategy: 'cod' there, 'random' now\\)"):
        make(tmp_path, strategy="random", semi=True).run()


def test_plan_larger_than_the_pool_is_refused():
    with pytest.raises(TodalError, match="needs 170 labels .* training set has 150"):
        ActiveLoop(mlp, blobs(150, 0), blobs(10, 1), initial=20, budget=50, cycles=4)


@pytest.mark.parametrize("kw, message", [
    ({"budget": 1.5}, "'budget' parameter of ActiveLoop must be an int in \\[1, inf\\) or a float in \\(0, 1\\]. Got 1.5"),
    ({"initial": 0}, "'initial' parameter .* Got 0"),
    ({"initial": -0.1}, "'initial' parameter"),
    ({"cycles": 0}, "'cycles' parameter of ActiveLoop must be an int >= 1"),
    ({"strategy": "nope"}, "Unknown strategy 'nope'"),
    ({"flavor": "fast"}, "'flavor' parameter of ActiveLoop must be one of default, paper, official"),
])
def test_bad_loop_arguments(kw, message):
    with pytest.raises(TodalError, match=message):
        ActiveLoop(mlp, blobs(150, 0), blobs(10, 1), **kw)


def test_fractions_resolve_against_the_training_set(tmp_path):
    loop = ActiveLoop(mlp, blobs(200, 0), blobs(10, 1), initial=0.1, budget=0.05, cycles=2, workdir=tmp_path)
    assert (loop.config.initial, loop.config.budget) == (20, 10)


@pytest.mark.parametrize("reinit", [False, True])
def test_model_continues_across_cycles_unless_reinit(tmp_path, monkeypatch, reinit):
    starts, ends = [], []
    real = todal.engine.fit

    def spy(model, *a, **k):
        starts.append({n: t.clone() for n, t in model.state_dict().items()})
        out = real(model, *a, **k)
        ends.append({n: t.clone() for n, t in model.state_dict().items()})
        return out

    monkeypatch.setattr(todal.engine, "fit", spy)
    make(tmp_path, reinit=reinit).run()
    continued = all(torch.equal(starts[1][k], ends[0][k]) for k in ends[0])
    assert continued != reinit


def test_human_oracle_without_initial_labels_asks_for_them(tmp_path):
    with pytest.raises(TodalError, match="label the samples in to_label.csv"):
        ActiveLoop(mlp, blobs(150, 0), blobs(20, 1), initial=10, budget=10, cycles=2, workdir=tmp_path / "run",
                   oracle=FileOracle(tmp_path)).run()
    assert len((tmp_path / "to_label.csv").read_text().split()) == 11


def test_human_oracle_pauses_at_reveal(tmp_path):
    data = blobs(150, 0)
    oracle_dir = tmp_path / "labels"
    oracle_dir.mkdir()
    kw = dict(strategy="random", semi_supervised=False, initial=10, budget=10, cycles=2, epochs=2,
              workdir=tmp_path / "run", seed=0)
    first = ActiveLoop(mlp, data, blobs(20, 1), **kw)
    initial = first.config.initial
    # label the initial set only
    perm = torch.randperm(150, generator=todal.loop.generator(0, "initial"))[:initial]
    (oracle_dir / "labels.csv").write_text("index,label\n" + "".join(f"{int(i)},{int(data.y[i])}\n" for i in perm))
    records = ActiveLoop(mlp, data, blobs(20, 1), oracle=FileOracle(oracle_dir), **kw).run()
    assert len(records) == 0  # cycle 0 trained and evaluated, waiting for the person
    asked = [int(l) for l in (oracle_dir / "to_label.csv").read_text().split()[1:]]
    assert len(asked) == 10
    with open(oracle_dir / "labels.csv", "a") as f:
        f.write("".join(f"{i},{int(data.y[i])}\n" for i in asked))
    records = ActiveLoop(mlp, data, blobs(20, 1), oracle=FileOracle(oracle_dir), **kw).run()
    assert [r["labeled"] for r in records] == [10, 20]
    assert sorted(records[0]["selected"]) == sorted(asked)


def test_keep_checkpoints_keeps_every_cycle(tmp_path):
    make(tmp_path / "a", keep_checkpoints=True).run()
    make(tmp_path / "b").run()
    assert {p.name for p in (tmp_path / "a" / "checkpoints").glob("cycle_*.pt")} == {"cycle_0.pt", "cycle_1.pt", "cycle_2.pt"}
    assert {p.name for p in (tmp_path / "b" / "checkpoints").glob("cycle_*.pt")} == {"cycle_1.pt", "cycle_2.pt"}


def test_restored_teacher_is_on_the_model_device(tmp_path):
    loop = make(tmp_path, strategy="emaod", semi=False)
    loop.run()
    model, teacher = loop.model(), loop.teacher()
    assert next(teacher.parameters()).device == next(model.parameters()).device == loop.device


def test_a_run_gives_its_pool_models_teacher_and_strategy_state(tmp_path):
    loop = make(tmp_path / "r", strategy="ll4al", semi=True, keep_checkpoints=True)
    with pytest.raises(TodalError, match=r"holds no run yet; call run\(\) first"):
        loop.model()
    recs = loop.run()
    pool = loop.pool()
    assert len(pool) == recs[-1]["labeled"] == 40 and pool.labeled.tolist() == sorted(pool.labeled.tolist())
    x = blobs(60, 1).x
    for c in range(3):  # each cycle's model evaluates to that cycle's recorded accuracy
        acc = float((loop.model(c)(x).argmax(1) == blobs(60, 1).y).float().mean())
        assert acc == pytest.approx(recs[c]["accuracy"])
    assert not loop.model(2).training and loop.teacher(2) is not None
    assert not torch.equal(loop.model(2)(x), loop.teacher(2)(x))  # the EMA lags the student
    assert torch.equal(loop.reference(2)(x), loop.model(1)(x))
    init = torch.load(tmp_path / "r" / "checkpoints" / "init.pt", weights_only=False)["model"]
    assert all(torch.equal(v, init[k]) for k, v in loop.reference(0).state_dict().items())
    def tensors(state):  # every tensor of a nested state dict, in order
        if isinstance(state, torch.Tensor):
            return [state.clone()]
        items = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else []
        return [t for v in items for t in tensors(v)]

    before = tensors(loop.strategy.state_dict())
    s0, s2 = loop.strategy_at(0), loop.strategy_at(2)
    assert s0 is not loop.strategy and len(tensors(s0.state_dict())) > 0  # LL4AL's loss module
    after = tensors(loop.strategy.state_dict())
    assert len(after) == len(before) and all(torch.equal(u, v) for u, v in zip(before, after))  # untouched
    assert any(not torch.equal(u, v) for u, v in zip(tensors(s0.state_dict()), tensors(s2.state_dict())))
    with pytest.raises(TodalError, match=r"'cycle' parameter of ActiveLoop must be a trained cycle, 0..2"):
        loop.model(3)
    short = make(tmp_path / "s")
    short.run()
    with pytest.raises(TodalError, match=r"Cycle 0's checkpoint is gone.*keep_checkpoints=True"):
        short.model(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", ["emaod", "cod", "qbc"])
def test_loop_selects_on_cuda(tmp_path, strategy):
    records = make(tmp_path, strategy=strategy, semi=True, device="cuda").run()
    assert [r["labeled"] for r in records] == [20, 30, 40]


def test_cyclic_consistency_targets_the_previous_cycles_model(tmp_path, monkeypatch):
    """Fig. 10's CyclicOD loss: cycle 0 has no previous model (task loss only, as a supervised run), later
    cycles train against the model the previous cycle ended with."""
    import todal.engine as engine_module

    targets = []
    real_fit = engine_module.fit

    def spy(model, *a, consistency=None, **kw):
        teacher = None if consistency is None else consistency.teacher
        targets.append((None if consistency is None else type(consistency).__name__, None if teacher is None else
                        [p.detach().clone() for p in teacher.parameters()], [p.detach().clone() for p in model.parameters()]))
        return real_fit(model, *a, consistency=consistency, **kw)

    monkeypatch.setattr(engine_module, "fit", spy)
    cyc = make(tmp_path / "cyclic", flavor={"consistency": "cyclic"}).run()
    sup = make(tmp_path / "sup", semi=False).run()
    assert strip(cyc)[0] == strip(sup)[0]  # the first cycle is the task loss alone
    assert targets[0][0] is None and targets[0][1] is None
    for consistency, teacher, start in targets[1:3]:
        assert consistency == "Eq7Consistency"
        assert all(torch.equal(a, b) for a, b in zip(teacher, start))  # target = where this cycle starts
    assert strip(cyc)[1] != strip(sup)[1]
    with pytest.raises(TodalError, match="'consistency' parameter of Flavor must be one of eq7, official, cyclic"):
        make(tmp_path / "bad", flavor={"consistency": "nope"})


class _Truth:
    """A person who knows the right labels, which the dataset itself does not hold."""

    def __init__(self, labels):
        self.labels = labels

    def label(self, indices):
        return self.labels[indices]


@pytest.mark.parametrize("own", ["wrong", "missing"])
def test_training_reads_the_labels_the_oracle_gave_not_the_dataset(tmp_path, own):
    data, test = blobs(150, 0), blobs(90, 1)
    truth = data.y.clone()
    data.y = (truth + 1) % 3 if own == "wrong" else torch.full_like(truth, -1)
    kw = dict(strategy="random", semi_supervised=True, initial=30, budget=15, cycles=2, epochs=8,
              train={"batch_size": 8, "lr": 0.05}, num_classes=3, seed=0)
    taught = ActiveLoop(mlp, data, test, oracle=_Truth(truth), workdir=tmp_path / "taught", **kw).run()
    assert taught[-1]["accuracy"] > 0.9
    if own == "wrong":  # the dataset's own labels teach the wrong classes: the oracle's are what mattered
        misled = ActiveLoop(mlp, data, test, workdir=tmp_path / "misled", **kw).run()
        assert misled[-1]["accuracy"] < 0.2


def test_file_oracle_labels_reach_training(tmp_path):
    data, test = blobs(150, 0), blobs(90, 1)
    truth = data.y.clone()
    data.y = torch.zeros_like(truth)  # placeholders, as a user with unlabeled data would have
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "labels.csv").write_text("index,label\n" + "".join(f"{i},{int(truth[i])}\n" for i in range(150)))
    recs = ActiveLoop(mlp, data, test, strategy="entropy", semi_supervised=False, initial=30, budget=15, cycles=2,
                      epochs=8, train={"batch_size": 8, "lr": 0.05}, num_classes=3, oracle=FileOracle(answers),
                      workdir=tmp_path / "run").run()
    assert recs[-1]["accuracy"] > 0.9


def test_file_oracle_takes_class_names_and_writes_paths(tmp_path):
    oracle = FileOracle(tmp_path, classes=["cat", "dog"], paths=[f"img{i}.png" for i in range(5)])
    assert oracle.label(torch.tensor([1, 3])) is None
    assert (tmp_path / "to_label.csv").read_text() == "index,path\n1,img1.png\n3,img3.png\n"
    (tmp_path / "labels.csv").write_text("index,label\n1,dog\n3,0\n")
    assert oracle.label(torch.tensor([1, 3])).tolist() == [1, 0]
    (tmp_path / "labels.csv").write_text("1,bird\n")
    with pytest.raises(TodalError, match=r"line 1 is '1,bird'.*a class name \(cat, dog\) or index"):
        oracle.label(torch.tensor([1]))


@pytest.mark.parametrize("strategy, semi", [("cod", True), ("entropy", False)])
def test_a_finished_run_given_more_cycles_continues_as_if_never_stopped(tmp_path, strategy, semi):
    ref = strip(make(tmp_path / "ref", strategy, semi).run())  # 3 cycles in one go
    short = ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), strategy=strategy, semi_supervised=semi, initial=20,
                       budget=10, cycles=2, epochs=3, train={"batch_size": 8, "lr": 0.05}, workdir=tmp_path / "x")
    assert len(short.run()) == 2
    longer = make(tmp_path / "x", strategy, semi)  # the same run, cycles 2 -> 3
    assert strip(longer.run()) == ref
    assert json.loads((tmp_path / "x" / "config.json").read_text())["cycles"] == 3
    with pytest.raises(TodalError, match=r"has reached cycle 3 of 3; it cannot be cut to 2 cycles: pass cycles >= 3"):
        short.run()


def test_a_one_cycle_run_extends_with_a_budget(tmp_path):
    one = ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), strategy="random", initial=20, budget=10, cycles=1, epochs=2,
                     train={"batch_size": 8}, workdir=tmp_path)
    assert [r["labeled"] for r in one.run()] == [20]  # budget unused (recorded as 0) with one cycle
    more = ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), strategy="random", initial=20, budget=10, cycles=3, epochs=2,
                      train={"batch_size": 8}, workdir=tmp_path)
    assert [r["labeled"] for r in more.run()] == [20, 30, 40]


def test_options_that_would_be_ignored_are_refused_and_instances_are_recorded(tmp_path):
    from todal import strategies

    from todal.models import ModelSource

    base = dict(initial=20, budget=10, cycles=2, epochs=1, train={"batch_size": 8})
    with pytest.raises(TodalError, match="Model options apply to a model given by name"):
        ActiveLoop(ModelSource(mlp, {"width": 2}), blobs(150, 0), blobs(60, 1), **base)
    with pytest.raises(TodalError, match=r"The model is an instance \(Sequential\); pass a function"):
        ActiveLoop(mlp(), blobs(150, 0), blobs(60, 1), **base)
    with pytest.raises(TypeError, match="strategy_options"):  # a strategy's options go in its instance
        ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), strategy="cod", strategy_options={"space": "logits"}, **base)
    a = ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), strategy=strategies.get("cod", space="logits"),
                   workdir=tmp_path, **base)
    a.run()
    assert json.loads((tmp_path / "config.json").read_text())["strategy_options"] == {"space": "logits"}
    b = ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), strategy=strategies.get("cod"), workdir=tmp_path, **base)
    with pytest.raises(TodalError, match="different configuration \\(strategy_options"):
        b.run()


def test_another_architecture_is_refused_on_resume(tmp_path):
    from torch import nn

    base = dict(strategy="random", initial=20, budget=10, cycles=2, epochs=1, train={"batch_size": 8}, workdir=tmp_path)
    ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), **base).run()

    def narrow():  # another width under the same name
        return nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3))

    narrow.__qualname__ = mlp.__qualname__
    with pytest.raises(TodalError, match="different configuration \\(model_arch"):
        ActiveLoop(narrow, blobs(150, 0), blobs(60, 1), **base).run()


def test_the_class_count_comes_from_labels_never_from_inputs(tmp_path):
    import numpy as np
    from torch.utils.data import Dataset, TensorDataset

    x, y = torch.randn(60, 8), torch.arange(60) % 4
    loop = ActiveLoop(lambda: torch.nn.Linear(8, 4), TensorDataset(x, y), TensorDataset(x, y), strategy="random",
                      initial=np.int64(20), budget=np.int64(10), cycles=np.int64(2), seed=np.int64(3), epochs=1)
    assert loop.num_classes == 4 and loop.config.cycles == 2 and isinstance(loop.config.seed, int)
    assert "_engine" in vars(loop)

    reads = []

    class Lazy(Dataset):
        def __len__(self):
            return 60

        def __getitem__(self, i):
            reads.append(i)
            return torch.zeros(8), 0

    with pytest.raises(TodalError, match=r"Lazy has no num_classes .* pass ActiveLoop\(\.\.\., num_classes=C\)"):
        ActiveLoop(lambda: torch.nn.Linear(8, 4), Lazy(), Lazy(), strategy="random", initial=20, budget=10,
                   cycles=2, workdir=tmp_path / "lazy").run()
    lazy = ActiveLoop(lambda: torch.nn.Linear(8, 4), Lazy(), Lazy(), strategy="random", initial=20, budget=10,
                      cycles=2, num_classes=4)
    assert not reads  # constructing reads nothing
    assert lazy.num_classes == 4 and lazy.config.model_arch
    assert len(reads) <= 2  # the up-front probe of the model reads two samples, nothing more
    with pytest.raises(TodalError, match=r"labels are floats .* convert them with \.long\(\)"):
        ActiveLoop(lambda: torch.nn.Linear(8, 4), TensorDataset(x, y.float()), TensorDataset(x, y), strategy="random",
                   initial=20, budget=10, cycles=2).run()


@pytest.mark.parametrize("kw, text", [
    ({"test_set": None}, r"'test_set' parameter of ActiveLoop must be a dataset to evaluate each cycle on"),
    ({"train": {"batchsize": 16}}, r"Unknown train setting 'batchsize'; valid: epochs, batch_size"),
    ({"flavor": {"lam": -1}}, r"'lam' parameter of Flavor must be a float >= 0"),
    ({"model": lambda: torch.nn.Linear(8, 2)}, r"model outputs 2 scores per sample but the data has 3 classes"),
    ({"model": lambda: torch.nn.Linear(5, 3)}, r"model fails on the training set's inputs of shape \[2, 8\] "
                                               r"\(RuntimeError: .*channels first"),
])
def test_mistakes_are_one_line_errors_before_any_training(tmp_path, kw, text):
    args = {"model": mlp, "train_set": blobs(150, 0), "test_set": blobs(60, 1), "strategy": "random",
            "initial": 20, "budget": 10, "cycles": 2, "workdir": tmp_path, **kw}
    with pytest.raises(TodalError, match=text):
        ActiveLoop(**args).run()
    assert not (tmp_path / "config.json").exists()


def test_the_constructor_stores_and_checks_and_run_does_the_work(tmp_path):
    """scikit-learn's rule: no model is built and no sample read until run() (or an accessor) needs it."""
    built = []

    def model():
        built.append(1)
        return mlp()

    loop = ActiveLoop(model, blobs(150, 0), blobs(60, 1), strategy="random", initial=20, budget=10, cycles=2,
                      epochs=1, workdir=tmp_path)
    assert not built and not (tmp_path / "config.json").exists()
    loop.run()
    assert built and (tmp_path / "config.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line():
    with pytest.raises(TodalError, match="sees no CUDA device; pass device='cpu'"):
        ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), strategy="random", initial=20, budget=10, cycles=2, device="cuda")


def test_test_labels_beyond_the_training_classes_are_refused():
    test = blobs(60, 1)
    test.y[0] = 3
    with pytest.raises(TodalError, match="test set has label 3 but the training set only 3 classes; pass num_classes=4"):
        ActiveLoop(mlp, blobs(150, 0), test, strategy="random", initial=20, budget=10, cycles=2).run()


def test_augmentation_is_an_explicit_argument_and_reaches_training(tmp_path):
    seen = []

    def shift(x, generator):  # records what training feeds it
        seen.append(len(x))
        return x + torch.randn(x.shape, generator=generator) * 0.01

    base = dict(strategy="cod", semi_supervised=True, initial=20, budget=10, cycles=2, epochs=1,
                train={"batch_size": 8})
    a = ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), augment=shift, workdir=tmp_path / "a", **base)
    a.run()
    assert seen and json.loads((tmp_path / "a" / "config.json").read_text())["augment"].endswith("shift")
    ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), augment=False, workdir=tmp_path / "n", **base).run()
    assert json.loads((tmp_path / "n" / "config.json").read_text())["augment"] == "none"
    with pytest.raises(TodalError, match="different configuration \\(augment: 'none' there, 'default' now\\)"):
        ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), workdir=tmp_path / "n", **base).run()
    with pytest.raises(TodalError, match="'augment' parameter of ActiveLoop must be None"):
        ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), augment="flip", **base)


@pytest.mark.parametrize("kw, text", [
    ({"epochs": 2, "train": {"epochs": 3}}, r"epochs is set twice \(epochs=2, train epochs=3\)"),
    ({"flavor": {"name": "default", "lamda": 0.2}}, r"Unknown flavor choice 'lamda'; valid: measure"),
])
def test_a_value_set_in_two_places_or_misspelled_is_refused(kw, text):
    with pytest.raises(TodalError, match=text):
        ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), strategy="random", initial=20, budget=10, cycles=2, **kw)


def test_cod_with_its_outputs_memory_mapped_selects_as_in_memory_and_resumes(tmp_path, monkeypatch):
    ram = make(tmp_path / "ram").run()
    disk = make(tmp_path / "disk", strategy=strategies.get("cod", max_cache_gb=0))
    run_until_killed(disk.run, monkeypatch, after=5)  # killed mid-run: the cache files must carry over
    resumed = make(tmp_path / "disk", strategy=strategies.get("cod", max_cache_gb=0)).run()
    assert strip(resumed) == strip(ram)
    assert sorted(p.name for p in (tmp_path / "disk" / "checkpoints").glob("*.npy")) == [
        "cod-outputs-cycle0-rank0.npy", "cod-outputs-cycle1-rank0.npy"]


def test_flavor_choices_a_run_never_uses_do_not_make_it_a_different_run(tmp_path):
    """A run without the TOD loss resumes whatever the loss's choices now are; one with it is refused."""
    plain = make(tmp_path / "plain", semi=False, flavor={"teacher_train_mode": False}).run()
    again = make(tmp_path / "plain", semi=False, flavor={"teacher_train_mode": True,
                                                         "consistency_reduction": "sum"}).run()
    assert strip(again) == strip(plain)
    make(tmp_path / "semi", flavor={"teacher_train_mode": False}).run()
    with pytest.raises(TodalError, match="different configuration .*flavor"):
        make(tmp_path / "semi", flavor={"teacher_train_mode": True}).run()
    with pytest.raises(TodalError, match="different configuration .*flavor"):  # a choice COD uses
        make(tmp_path / "plain", semi=False, flavor={"first_cycle_lowest": False}).run()


class _Payload:
    """What a malicious checkpoint holds: unpickling it would run os.system (here: touch a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_holding_code_is_refused_and_never_run(tmp_path):
    """Checkpoints load weights only: opening a run directory someone else made never runs what it holds."""
    run = tmp_path / "run"
    make(run, cycles=2).run()
    marker = tmp_path / "ran"
    path = run / "checkpoints" / "cycle_1.pt"
    state = torch.load(path, weights_only=True)
    torch.save({**state, "strategy": _Payload(marker)}, path)
    with pytest.raises(TodalError, match=r"cycle_1.pt is not a weights-only checkpoint .*never runs code from a file"):
        make(run, cycles=3).run()
    with pytest.raises(TodalError, match="is not a weights-only checkpoint"):
        make(run, cycles=2).model(1)
    assert not marker.exists()


# --- when to stop, the record, the output -----------------------------------------------------------------
def test_every_cycle_records_the_stopping_criteria(tmp_path):
    records = make(tmp_path, semi=False).run()
    assert records[0]["stop_kappa"] is None and records[0]["paired"] is None
    for r in records[1:]:
        assert -1 <= r["stop_kappa"] <= 1 and 0 <= r["pool_uncertainty"] <= 1
        right, wrong, n = r["paired"]
        assert n == 60 and right + wrong <= n
    # the paired counts are the test set's: newly right minus newly wrong is the accuracy change
    for a, b in zip(records, records[1:]):
        assert b["accuracy"] - a["accuracy"] == pytest.approx((b["paired"][0] - b["paired"][1]) / 60)


def test_a_stop_rule_ends_the_run_early_and_says_why(tmp_path):
    from todal.stopping import StopRule

    rule = StopRule(criterion="kappa", window=1, threshold=0.0)  # any agreement stops: after cycle 1
    records = make(tmp_path, cycles=3, stop=rule).run()
    assert [r["cycle"] for r in records] == [0, 1]
    assert records[-1]["stopped"].startswith("predictions stabilized: mean κ") and "selected" not in records[-1]
    assert make(tmp_path, cycles=3, stop=rule).run() == records  # a stopped run stays stopped
    with pytest.raises(TodalError, match="different configuration \\(stop"):
        make(tmp_path, cycles=3, stop="plateau").run()
    with pytest.raises(TodalError, match="'criterion' parameter of StopRule must be one of kappa"):
        make(tmp_path / "x", stop="never")


def test_tensorboard_events_hold_every_cycle_the_curve_and_the_queued_samples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from todal.data import ArrayDataset

    def images(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 3
        x = (torch.rand(n, 1, 8, 8, generator=g) * 60 + y.view(-1, 1, 1, 1) * 60).to(torch.uint8)
        return ArrayDataset(x, y, num_classes=3, mean=0.3, std=0.3)

    loop = ActiveLoop(lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), images(150, 0),
                      images(60, 1), strategy="entropy", semi_supervised=False, initial=20, budget=10, cycles=3,
                      epochs=2, workdir=tmp_path / "run", log_dir=tmp_path / "tb")
    records = loop.run()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    accuracy = events.Scalars("cycle/accuracy")
    assert [e.step for e in accuracy] == [0, 1, 2]
    assert [round(e.value, 5) for e in accuracy] == [round(r["accuracy"], 5) for r in records]
    assert [e.step for e in events.Scalars("curve/accuracy")] == [20, 30, 40]  # over the labels
    assert [e.step for e in events.Scalars("cycle/stop_kappa")] == [1, 2]
    assert "cycle/train_time_s" in events.Tags()["scalars"]
    assert [e.step for e in events.Images("queued")] == [0, 1]  # the samples each selection queued


def test_off_a_terminal_progress_is_one_line_per_epoch_and_per_cycle(tmp_path, capsys):
    import re

    make(tmp_path, cycles=2, progress=True).run()
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err  # no bar redrawn into a log
    lines = err.splitlines()
    epoch = re.compile(r"^cycle [01] train: epoch [1-3]/3, loss \d+\.\d{3} \(\d+\.\ds\)$")
    cycle = re.compile(r"^cycle [01]: (20|30) labels, test accuracy \d+\.\d\d%(, κ -?\d\.\d{4})?$")
    assert all(epoch.match(line) or cycle.match(line) for line in lines), lines
    assert sum(bool(epoch.match(line)) for line in lines) == 6 and sum(bool(cycle.match(line)) for line in lines) == 2
