"""Protocols: overrides, their errors, the differences from the paper, the paper's refusal on a CPU."""

from pathlib import Path

import pytest
import torch

from todal.bench import protocols
from todal.bench.protocols import (PAPER, check_device, differences, estimate_seconds, measure_step_time,
                                     planned_steps, protocol)
from todal.data import load_dataset
from todal.errors import TodalError


def test_paper_protocol_is_appendix_b():
    p = protocol("paper")
    assert (p.model, p.train.epochs, p.train.lr, p.train.momentum, p.train.weight_decay, p.train.batch_size, p.train.lr_drop_at, p.train.lr_drop) == \
        ("resnet18", 200, 0.1, 0.9, 5e-4, 128, 0.8, 0.1)
    assert (p.initial, p.budget, p.cycles, p.trials, p.ema_decay) == (0.1, 0.05, 7, 3, 0.999)
    assert p.lam is None and p.for_dataset("cifar10").lam == 0.05  # the paper flavor's λ
    assert differences(p) == []


def test_cpu_protocol_is_the_scaled_experiment_with_the_papers_cycles_and_trials():
    p = protocol("cpu")
    assert (p.model, p.model_options, p.train.epochs, p.train.batch_size, p.train.lr) == ("small_cnn", {"width": 0.5}, 10, 64, 0.05)
    assert (p.initial, p.budget, p.cycles, p.trials, p.score_subset) == (500, 250, 7, 3, 10000)
    assert (p.ema_decay, p.lam) == (PAPER.ema_decay, PAPER.lam)
    assert protocol("cpu", ["score_subset=null"]).score_subset is None


def test_overrides_are_parsed_by_the_type_of_the_default():
    p = protocol("smoke", ["epochs=3", "lr=1", "initial=0.2", "grid_lams=[0.1,0.2]", "strategies=random,cod",
                           'model_options={"width": 1.0}', "augment=false", "analysis_pool=null"])
    assert (p.train.epochs, p.train.lr, p.initial, p.grid_lams, p.strategies) == (3, 1.0, 0.2, (0.1, 0.2), ("random", "cod"))
    assert (p.model_options, p.augment, p.analysis_pool) == ({"width": 1.0}, False, None)
    assert isinstance(p.train.lr, float)


def test_differences_list_every_changed_value():
    diffs = {d["key"]: (d["value"], d["paper"]) for d in differences(protocol("paper", {"epochs": "3"}))}
    assert diffs == {"epochs": (3, 200)}


@pytest.mark.parametrize("pair, text", [
    ("epoch=3", "The 'epoch' parameter of bench protocol (--set) must be a protocol value"),
    ("epochs=abc", "The 'epochs' parameter of bench protocol (--set) must be an int >= 1. Got 'abc'."),
    ("epochs=0", "must be an int >= 1. Got 0."),
    ("initial=1.5", "must be an int >= 1 or a float in (0, 1]. Got 1.5."),
    ("augment=1", "must be true or false. Got 1."),
    ("ema_decay=1", "'ema_decay' parameter of bench protocol (--set) must be a float in [0, 1)"),
    ("flavor=mine", "must be one of default, paper, official. Got 'mine'."),
    ("epochs", "Protocol override 'epochs' is not KEY=VALUE"),
])
def test_bad_overrides_name_the_fix(pair, text):
    with pytest.raises(TodalError, match=None) as e:
        protocol("smoke", [pair])
    assert text in str(e.value)


def test_unknown_protocol_lists_the_valid_ones():
    with pytest.raises(TodalError, match="one of paper, cpu, converged, smoke"):
        protocol("fast")


def test_step_time_is_measured_on_the_protocols_model():
    assert 0 < measure_step_time(protocol("smoke", ["batch_size=8"]), 1, 8, 10, repeats=1) < 5


def test_planned_steps_by_hand():
    p = protocol("smoke", {"initial": "100", "budget": "50", "cycles": "3", "epochs": "2", "batch_size": "32"})
    assert planned_steps(p, 1000) == 2 * (4 + 5 + 7)  # ceil(100/32) + ceil(150/32) + ceil(200/32)
    assert estimate_seconds(p, 1000, runs=3, semi_runs=1, step_time=0.5) == 0.5 * 32 * 4
    assert planned_steps(PAPER, 1000) == 200 * sum(-(-(100 + 50 * c) // 128) for c in range(7))


def test_paper_protocol_refuses_a_cpu_with_an_estimate(monkeypatch):
    train, _ = load_dataset("digits")
    p = protocol("paper")
    monkeypatch.setattr(protocols, "measure_step_time", lambda *a, **k: 0.25)  # ResNet-18 steps take seconds here
    with pytest.raises(TodalError) as e:
        check_device(p, torch.device("cpu"), train, runs=10, semi_runs=2)
    msg = str(e.value)
    hours = 0.25 * planned_steps(p, len(train)) * 12 / 3600
    assert f"about {hours:,.0f} hours" in msg
    assert "needs a GPU" in msg and "resnet18 at batch 128 takes 0.250 s" in msg and "--protocol cpu" in msg
    check_device(protocol("paper", ["requires_gpu=false"]), torch.device("cpu"), train, 1, 0)  # opted out
    check_device(protocol("cpu"), torch.device("cpu"), train, 1, 0)


def test_the_official_flavors_lambda_is_kept_unless_lambda_is_set(monkeypatch):
    """The bench used to pass the protocol's 0.05 over the official flavor's per-dataset λ (CIFAR-10: 0.02)."""
    from todal.bench.runner import Method, make_loop
    from todal.bench.suite import load_for
    from todal.data import read_digits, registry

    def tiny_cifar10(root=None, **kw):  # digits' images under CIFAR-10's name: the official λ is per dataset
        train, test = read_digits(**kw)
        train.name = test.name = "cifar10"
        return train, test

    monkeypatch.setitem(registry.REGISTRY._items, "tiny-cifar10", tiny_cifar10)
    for overrides, want in (([], 0.02), (["lam=0.05"], 0.05), (["flavor_overrides={\"lam\": 0.03}"], 0.03)):
        p, train, test = load_for("smoke", "tiny-cifar10", ["flavor=official", *overrides])
        assert p.lam == want
        loop = make_loop(p, Method("cod", True), 0, train, test, Path("unused"))
        assert loop.flavor.lam == want
    p, _, _ = load_for("smoke", "tiny-cifar10")
    assert p.lam == 0.05  # the paper flavor


def test_pool_size_override_and_the_converged_protocol():
    assert protocol("cpu", ["pool_size=500"]).pool_size == 500 and protocol("cpu").pool_size is None
    with pytest.raises(TodalError, match="pool_size"):
        protocol("cpu", ["pool_size=0"])
    c = protocol("converged")
    assert (c.pool_size, c.train.epochs, c.flavor, c.requires_gpu) == (6000, 40, "default", False)
