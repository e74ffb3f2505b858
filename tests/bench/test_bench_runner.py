"""The runner's caching (an interrupted bench reuses finished runs) and one smoke bench end to end."""

import argparse
import json

import pytest

import torch

from todal import ActiveLoop, strategies
from todal.bench import cli, protocols
from todal.bench.protocols import protocol
from todal.bench.runner import Method, RunLock, make_loop, plan, run_all
from todal.bench.suite import load_for, with_strategies
from todal.data import load_dataset
from todal.errors import TodalError

TINY = ["epochs=1", "cycles=2", "initial=60", "budget=30", "trials=1", "fig9=false", "batch_size=64"]


def test_plan_adds_the_ablation_fig9_and_the_grid():
    p = protocol("smoke", ["grid_lams=[0.05,0.1]", "grid_alphas=[0.99,0.999]"])
    labels = [m.label for m in plan(p, ["entropy", "ll4al+semi"])]
    assert labels[:6] == ["entropy", "ll4al+semi", "random", "random+semi", "cod", "cod+semi"]
    assert "emaod" in labels and "cod+cyclic" in labels  # Fig. 9, Fig. 10
    assert plan(p, ["cod+cyclic"])[0] == Method("cod", True, cyclic=True)
    # the grid, minus the protocol's own (λ, α), which is cod+semi itself
    assert [x for x in labels if "λ" in x] == ["cod+semi λ=0.05 α=0.99", "cod+semi λ=0.1 α=0.99",
                                              "cod+semi λ=0.1 α=0.999"]
    assert set(strategies.names()) <= {m.label for m in plan(p, ["all"])}
    assert Method("cod", True, 0.1, 0.99).slug == "cod+semi-lam0.1-alpha0.99"
    with pytest.raises(TodalError, match="Unknown strategy 'nope'"):
        plan(p, ["nope"])
    with pytest.raises(TodalError, match="is not NAME, NAME\\+semi or NAME\\+cyclic"):
        plan(p, ["cod+task"])
    # the report's effective configuration names what ran: --strategies replaces the protocol's default
    assert with_strategies(p, ["entropy", "ll4al+semi"]).strategies == ("entropy", "ll4al+semi")
    assert with_strategies(p, ["all"]).strategies == tuple(strategies.names())
    assert with_strategies(p, None) == p


def test_a_run_another_process_holds_is_skipped_then_waited_for(tmp_path):
    p = protocol("smoke", TINY)
    train, test = load_dataset("digits")
    held = RunLock(tmp_path, "random-trial0")
    assert held.acquire(wait=False)
    seen = []

    def log(line):  # the other process finishes once this one has moved on
        seen.append(line)
        if "another process" in line:
            held.release()

    runs, status = run_all(p, plan(p, ["random"]), train, test, tmp_path, log=log)
    assert seen[0] == "== random-trial0: another process is running it; later"
    assert status["ran"][-1] == "random-trial0" and len(status["ran"]) == 4
    assert list(runs) == ["random", "random+semi", "cod", "cod+semi"] and len(runs["random"][0]) == 2


def test_an_interrupted_bench_reuses_its_finished_runs(tmp_path, monkeypatch):
    p = protocol("smoke", TINY)
    train, test = load_dataset("digits")
    methods = plan(p, ["random"])  # random, random+semi, cod, cod+semi
    real_run, calls = ActiveLoop.run, []

    def crash_on_third(self):
        calls.append(self.workdir.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(self)

    monkeypatch.setattr(ActiveLoop, "run", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_all(p, methods, train, test, tmp_path, log=lambda s: None)
    monkeypatch.setattr(ActiveLoop, "run", real_run)
    first = (tmp_path / "runs" / "random-trial0" / "metrics.jsonl").read_text()
    runs, status = run_all(p, methods, train, test, tmp_path, log=lambda s: None)
    assert status["reused"] == ["random-trial0", "random+semi-trial0"]
    assert status["ran"] == ["cod-trial0", "cod+semi-trial0"]
    assert (tmp_path / "runs" / "random-trial0" / "metrics.jsonl").read_text() == first
    # adding a strategy trains only that one
    _, status = run_all(p, plan(p, ["random", "entropy"]), train, test, tmp_path, log=lambda s: None)
    assert status["ran"] == ["entropy-trial0"] and len(status["reused"]) == 4
    assert len(runs["cod+semi"][0]) == 2


def _bench(argv):
    ap = argparse.ArgumentParser(prog="todal")
    cli.add_parser(ap.add_subparsers(dest="command"))
    cli.run(ap.parse_args(argv), argv)


def TINY_FROM(argv: list[str]) -> list[str]:
    """The `--set` overrides of a bench command line."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def test_smoke_bench_end_to_end_writes_the_report(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--protocol", "smoke", "--dataset", "digits", "--out", str(out), "--strategies",
            "random,entropy,cod", "--trials", "2", "--quiet", "--set", "epochs=1", "--set", "batch_size=64",
            "--set", "analysis_pool=200", "--set", "cycles=2", "--set", "initial=60",
            "--set", "budget=30"]
    _bench(argv)
    report = (out / "report.md").read_text()
    for section in ("## Protocol", "## Fig. 7", "## Table 1", "## Who beats whom", "## Fig. 3", "## Fig. 5",
                    "## Fig. 6", "## Table 3", "## Fig. 11", "## Fig. 9 / 10", "Fig. 10, the unsupervised loss"):
        assert section in report
    assert "| epochs | 1 | 200 |" in report  # a difference from the paper, listed
    for fig in ("fig7_learning_curves", "fig3_cod_and_loss", "fig5_loss_by_cod_rank", "fig6_loss_recall",
                "fig11_per_class", "fig9_cod_vs_emaod", "fig10_unsupervised_loss"):
        assert (out / f"{fig}.png").stat().st_size > 1000
    r = json.loads((out / "results.json").read_text())
    assert r["methods"] == ["random", "entropy", "cod", "random+semi", "cod+semi", "emaod", "cod+cyclic"]
    assert any({c["a"], c["b"]} == {"cod+cyclic", "cod"} for c in r["paired"])
    assert r["protocol"]["train"]["epochs"] == 1 and r["protocol"]["trials"] == 2
    assert r["environment"]["torch_version"] and len(r["environment"]["runs_ran"]) == 14
    le = r["loss_estimation"]
    assert le["run"] == "cod+semi" and len(le["mean"]) == 2
    assert set(le["mean"][0]["recall"]) == {"cod", "emaod", "entropy"}
    assert all(c["n"] <= 200 for c in le["mean"])
    assert {c["metric"] for c in r["paired"]} == {"final", "aubc"} and all(c["n"] == 2 for c in r["paired"])
    assert "x inference pass" in report and r["selection_time"]["inference_pass_s"] > 0
    # the same command again trains nothing
    _bench(argv)
    r = json.loads((out / "results.json").read_text())
    assert r["environment"]["runs_ran"] == [] and len(r["environment"]["runs_reused"]) == 14
    assert "14 reused" in capsys.readouterr().out
    assert r["best_baselines"] == ["entropy"] and any((c["a"], c["b"]) == ("cod", "entropy") for c in r["paired"])
    assert [x["method"] for x in r["label_savings"]][:2] == ["entropy", "cod"] and "## Labels to reach" in report
    # a third trial of cod, finished beside the bench (extra_trials.py): reported; --report-only keeps the rest
    loop = make_loop(protocol("smoke", TINY_FROM(argv)), Method("cod"), 2, *load_for("smoke", "digits",
                                                                                       TINY_FROM(argv))[1:], out)
    loop.run()
    _bench(["bench", "--report-only", "--out", str(out)])
    again = json.loads((out / "results.json").read_text())
    assert sorted(again["runs"]["cod"]) == ["0", "1", "2"] and sorted(again["runs"]["random"]) == ["0", "1"]
    assert again["summaries"]["cod"]["seeds"] == [0, 1, 2] and again["loss_estimation"] == r["loss_estimation"]
    assert again["command"] == r["command"] and again["rewritten_by"].startswith("todal bench --report-only")
    assert f"Command: `{r['command']}`; runs added since" in (out / "report.md").read_text()
    n = sum(len(v) for v in again["runs"].values())
    assert n == sum(len(v) for v in r["runs"].values()) + 1 and f"rewritten from all {n} runs" in (out / "report.md").read_text()


def test_bench_errors_are_todal_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(protocols, "measure_step_time", lambda *a, **k: 0.25)
    with pytest.raises(TodalError, match="must be a protocol value"):
        _bench(["bench", "--protocol", "smoke", "--dataset", "digits", "--out", str(tmp_path), "--set", "epoch=1"])
    with pytest.raises(TodalError, match="needs a GPU"):
        _bench(["bench", "--protocol", "paper", "--dataset", "digits", "--out", str(tmp_path), "--device", "cpu"])
    assert not (tmp_path / "runs").exists()
    if not torch.cuda.is_available():
        with pytest.raises(TodalError, match="Device 'cuda' is not usable here"):
            _bench(["bench", "--protocol", "smoke", "--dataset", "digits", "--out", str(tmp_path), "--device", "cuda"])


def test_grid_cells_run_in_the_first_grid_trials_only(tmp_path):
    p = protocol("smoke", TINY + ["trials=2", "grid_lams=[0.1]", "grid_alphas=[0.999]", "strategies=random"])
    train, test = load_dataset("digits")
    methods = [m for m in plan(p) if m.lam is not None or m.label == "random"]
    runs, status = run_all(p, methods, train, test, tmp_path, log=lambda s: None)
    assert status["ran"] == ["random-trial0", "cod+semi-lam0.1-alpha0.999-trial0", "random-trial1"]
    assert list(runs["cod+semi λ=0.1 α=0.999"]) == [0]


def test_make_loop_carries_the_scored_subset_and_the_cyclic_loss(tmp_path):
    p = protocol("smoke", TINY + ["score_subset=40"])
    train, test = load_dataset("digits")
    cyc = make_loop(p, Method("cod", True, cyclic=True), 0, train, test, tmp_path)
    ema = make_loop(p, Method("cod", True), 0, train, test, tmp_path)
    assert cyc.flavor.score_subset == 40 and cyc.flavor.consistency == "cyclic"
    assert ema.flavor.consistency == "eq7" and cyc.workdir.name == "cod+cyclic-trial0"
    both = make_loop(p, Method("cod", True, cyclic=True), 0, train, test, tmp_path,
                     flavor_overrides={"first_cycle_lowest": True})
    assert both.flavor.consistency == "cyclic" and both.flavor.first_cycle_lowest
    assert cyc.flavor.name == "default" and cyc.flavor.first_cycle_lowest  # the default flavor's pick
    paper = protocol("smoke", TINY + ["flavor=paper"])
    assert not make_loop(paper, Method("cod"), 0, train, test, tmp_path).flavor.first_cycle_lowest
    low = protocol("smoke", TINY + ["flavor=paper", 'flavor_overrides={"first_cycle_lowest": true}'])
    assert make_loop(low, Method("cod"), 0, train, test, tmp_path).flavor.first_cycle_lowest
    with pytest.raises(TodalError, match=r"Unknown flavor choice .lowest.; valid: measure, "):
        make_loop(protocol("smoke", TINY + ['flavor_overrides={"lowest": true}']), Method("cod"), 0, train, test,
                  tmp_path)


def test_a_method_can_run_under_its_own_flavor_with_that_flavors_lambda(tmp_path):
    p = protocol("smoke", TINY)
    m = plan(p, ["cod+semi@paper", "cod+semi@official"])
    assert [x.label for x in m[:2]] == ["cod+semi@paper", "cod+semi@official"]
    assert "cod+semi" in [x.label for x in m]  # the protocol's own flavor's run stays
    with pytest.raises(TodalError, match=r"names flavor 'mine'; use one of default, paper, official"):
        plan(p, ["cod+semi@mine"])
    train, test = load_dataset("digits")
    train.name = "cifar10"  # the official λ is per dataset: 0.02 on CIFAR-10
    p = p.for_dataset("cifar10")  # the protocol's (default) flavor's λ: 0.05
    official = make_loop(p, m[1], 0, train, test, tmp_path)
    assert (official.flavor.name, official.flavor.lam) == ("official", 0.02)
    assert make_loop(p, Method("cod", True, lam=0.3, flavor="official"), 0, train, test, tmp_path).flavor.lam == 0.3
    plain = make_loop(p, Method("cod", True), 0, train, test, tmp_path)
    assert (plain.flavor.name, plain.flavor.lam) == ("default", 0.05)
    assert make_loop(p, m[0], 0, train, test, tmp_path).workdir.name == "cod+semi@paper-trial0"


def test_pool_size_gives_each_trial_its_own_pool_shared_by_every_method(tmp_path):
    p = protocol("smoke", TINY + ["pool_size=300"])
    train, test = load_dataset("digits")
    a = make_loop(p, Method("random"), 0, train, test, tmp_path).train_set
    b = make_loop(p, Method("cod", True), 0, train, test, tmp_path).train_set
    c = make_loop(p, Method("random"), 1, train, test, tmp_path).train_set
    assert len(a) == 300 and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)  # same pool for every method
    assert not torch.equal(a.x, c.x)  # another trial, another pool
    rows = (train.x.reshape(len(train), -1)[:, None] == a.x.reshape(300, -1)[None]).all(-1).any(0)
    assert bool(rows.all())  # drawn from the training set
    assert len(make_loop(protocol("smoke", TINY), Method("random"), 0, train, test, tmp_path).train_set) == len(train)

    class NoSubset(torch.utils.data.Dataset):
        def __len__(self):
            return 1000

    with pytest.raises(TodalError, match=r"pool_size=300 needs a dataset with \.subset\(idx\)"):
        make_loop(p, Method("random"), 0, NoSubset(), test, tmp_path)


def test_converged_protocol_keeps_the_papers_proportions():
    p = protocol("converged")
    assert (p.initial, p.budget, p.cycles, p.trials, p.train.lr_drop_at, p.score_subset) == (0.1, 0.05, 7, 3, 0.8, None)
    n = p.pool_size
    sizes = [round(p.initial * n) + c * round(p.budget * n) for c in range(p.cycles)]
    steps = [p.train.epochs * -(-s // p.train.batch_size) for s in sizes]
    horizon = 1 / (1 - p.ema_decay)
    assert 0.08 < horizon / (sum(steps) / len(steps)) < 0.2  # the EMA spans about an eighth of a cycle
    labels = [m.label for m in plan(p)]
    for need in ("random", "entropy", "margin", "badge", "coreset", "qbc", "cod", "emaod", "cod+semi",
                 "cod+semi@paper", "cod+semi@official", "random+semi"):
        assert need in labels
