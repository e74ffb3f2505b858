"""Every registered strategy inside the real loop: on digits with the small CNN, and resumed.

Strategies that train networks of their own (LL4AL's loss module, VAAL's VAE, the GCNs, QBC's
committee) keep them in their state, which the loop saves; a run killed before selecting must
select exactly what an uninterrupted run selects.
"""

import pytest
import torch

from tinydata import blobs, mlp, run_until_killed
from todal import ActiveLoop, strategies
from todal.data import load_dataset

TIMING = ("train_time_s", "select_time_s")


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset("digits")
    return train, test


@pytest.mark.parametrize("name", strategies.names())
def test_runs_one_cycle_on_digits_with_the_small_cnn(name, digits, tmp_path):
    train, test = digits
    loop = ActiveLoop("small_cnn", train, test, strategy=name, semi_supervised=False, initial=40, budget=10,
                      cycles=2, epochs=1, train={"batch_size": 20}, workdir=tmp_path, seed=0, device="cpu")
    records = loop.run()
    assert [r["labeled"] for r in records] == [40, 50]
    chosen = torch.tensor(records[0]["selected"])
    assert len(chosen.unique()) == 10
    assert 0.0 <= records[-1]["accuracy"] <= 1.0


def make(workdir, name):
    return ActiveLoop(mlp, blobs(90, 0), blobs(30, 1), strategy=name, semi_supervised=False, initial=15,
                      budget=8, cycles=3, epochs=2, train={"batch_size": 8, "lr": 0.05}, workdir=workdir, seed=0)


@pytest.mark.parametrize("name", strategies.names())
def test_resumed_run_selects_what_an_uninterrupted_run_selects(name, tmp_path, monkeypatch):
    expected = strip(make(tmp_path / "ref", name).run())
    # progress.json writes: 3 = cycle 0 evaluated (next: select), 6 = cycle 1 trained (next: evaluate)
    for kill_after in (3, 6):
        run = tmp_path / f"killed{kill_after}"
        run_until_killed(lambda: make(run, name).run(), monkeypatch, kill_after)
        assert strip(make(run, name).run()) == expected
