"""flavor="paper" vs "official" (and the "default" between them): the switch changes exactly the documented behaviours."""

import dataclasses

import pytest
import torch
from torch import nn

from tinydata import blobs
from todal import ActiveLoop
from todal.errors import TodalError
from todal.flavor import flavor_for

DOCUMENTED = {"measure", "score_subset", "first_cycle_lowest", "first_reference", "consistency", "lam",
              "consistency_reduction", "ema_init", "ema_buffers", "teacher_train_mode", "score_augment"}


class TwoHead(nn.Module):
    """A model with BatchNorm and the second head the official consistency uses."""

    def __init__(self, dim=8, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head, self.head2 = nn.Linear(16, classes), nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.body(x))

    def heads(self, x):
        h = self.body(x)
        return self.head(h), self.head2(h)


def test_the_flavors_differ_in_exactly_the_documented_fields():
    paper, official = flavor_for("paper", "svhn"), flavor_for("official", "svhn")
    differ = {f.name for f in dataclasses.fields(paper) if getattr(paper, f.name) != getattr(official, f.name)}
    assert differ - {"name"} == DOCUMENTED


@pytest.mark.parametrize("dataset, lam, subset, augment", [
    ("cifar10", 0.02, 25000, False), ("cifar100", 0.05, 25000, False), ("svhn", 0.005, 29302, True),
    ("caltech101", 0.1, 4340, True), ("fashion-mnist", 0.05, 25000, False)])
def test_official_per_dataset_values(dataset, lam, subset, augment):
    f = flavor_for("official", dataset)
    assert (f.lam, f.score_subset, f.score_augment) == (lam, subset, augment)


def test_paper_values_do_not_depend_on_the_dataset():
    assert flavor_for("paper", "svhn") == flavor_for("paper", "cifar10")
    f = flavor_for("paper")
    assert (f.lam, f.score_subset, f.measure, f.consistency) == (0.05, None, "l2", "eq7")


def test_default_is_the_paper_with_the_codes_eq7_scale_first_cycle_pick_and_teacher_mode():
    default, paper = flavor_for("default", "svhn"), flavor_for("paper", "svhn")
    differ = {f.name for f in dataclasses.fields(paper) if getattr(paper, f.name) != getattr(default, f.name)}
    assert differ == {"name", "consistency_reduction", "first_cycle_lowest", "teacher_train_mode"}
    assert (default.consistency_reduction, default.first_cycle_lowest, default.teacher_train_mode) == ("mean", True, True)
    assert ActiveLoop(TwoHead, blobs(40, 0), blobs(10, 1), initial=10, budget=5, cycles=1).flavor == flavor_for("default")


def test_a_teacher_without_its_batchnorm_statistics_must_run_in_train_mode():
    with pytest.raises(TodalError, match=r"ema_buffers=False needs teacher_train_mode=True"):
        flavor_for("paper").replace(ema_buffers=False)
    assert not flavor_for("paper").replace(ema_buffers=False, teacher_train_mode=True).ema_buffers
    assert not flavor_for("official").ema_buffers  # the code's pair is allowed


def _loop(tmp_path, flavor, model=TwoHead, overrides=None, **kw):
    kw = {"initial": 20, "budget": 10, "cycles": 2, "epochs": 2, "train": {"batch_size": 8, "lr": 0.05},
          "semi_supervised": True, **kw}
    return ActiveLoop(model, blobs(120, 0, name=kw.pop("name", "tiny")), blobs(30, 1), strategy="cod",
                      workdir=tmp_path / flavor, flavor={"name": flavor, **overrides} if overrides else flavor, **kw)


def _init(tmp_path, flavor):
    return torch.load(tmp_path / flavor / "checkpoints" / "init.pt", weights_only=True)


def test_teacher_and_first_reference_are_copies_in_paper_and_independent_in_official(tmp_path):
    for flavor in ("paper", "official"):
        _loop(tmp_path, flavor, cycles=1).run()
    paper, official = _init(tmp_path, "paper"), _init(tmp_path, "official")
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(paper["ema"]["model"], paper["model"]) and paper["reference"] is None
    assert not same(official["ema"]["model"], official["model"])
    assert not same(official["reference"], official["model"])


def test_official_teacher_averages_parameters_only_and_runs_in_train_mode(tmp_path):
    paper, official = _loop(tmp_path, "paper"), _loop(tmp_path, "official")
    assert paper.engine.new_teacher(TwoHead()).buffers and not official.engine.new_teacher(TwoHead()).buffers
    assert not paper.flavor.teacher_train_mode and official.flavor.teacher_train_mode
    official.run()
    teacher = torch.load(tmp_path / "official" / "checkpoints" / "cycle_1.pt", weights_only=True)["ema"]["model"]
    # buffers not averaged, yet they moved: the teacher's own train-mode forward passes updated them
    assert teacher["body.1.num_batches_tracked"] > 0 and not torch.all(teacher["body.1.running_mean"] == 0)


def test_official_consistency_runs_on_a_home_made_model(tmp_path):
    from torch.utils.data import TensorDataset

    from tinydata import mlp

    data = blobs(120, 0)
    train, test = TensorDataset(data.x, data.y), TensorDataset(blobs(30, 1).x, blobs(30, 1).y)
    loop = ActiveLoop(mlp, train, test, strategy="cod", semi_supervised=True, initial=20, budget=10, cycles=2,
                      epochs=2, train={"batch_size": 8, "lr": 0.05}, workdir=tmp_path / "o", flavor="official")
    assert len(loop.run()) == 2
    init = torch.load(tmp_path / "o" / "checkpoints" / "init.pt", weights_only=True)["model"]
    last = torch.load(tmp_path / "o" / "checkpoints" / "cycle_1.pt", weights_only=True)["model"]
    assert set(init) == {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias", "head2.weight", "head2.bias"}
    assert not torch.equal(init["head2.weight"], last["head2.weight"])  # the second head was trained
    x = blobs(30, 1).x
    model = loop.model()
    main, second = model.heads(x)
    assert torch.equal(main, model(x)) and main.shape == second.shape == (30, 3)
    paper = _loop(tmp_path, "paper", model=mlp)
    assert len(paper.run()) == 2  # Eq. 7 works with any model, unwrapped: no second head is added
    saved = torch.load(tmp_path / "paper" / "checkpoints" / "cycle_1.pt", weights_only=True)
    assert set(saved["model"]) == {"0.weight", "0.bias", "2.weight", "2.bias"} and saved["ema"] is not None


def test_official_scores_a_random_subset(tmp_path):
    loop = _loop(tmp_path, "official", overrides={"score_subset": 30})
    unlabeled = torch.arange(20, 120)
    candidates = loop.engine.candidates(unlabeled, 0)
    assert len(candidates) == 30 and set(candidates.tolist()) <= set(unlabeled.tolist())
    assert torch.equal(candidates, loop.engine.candidates(unlabeled, 0))  # seeded by (seed, cycle)
    assert not torch.equal(candidates, loop.engine.candidates(unlabeled, 1))
    assert len(_loop(tmp_path, "paper").engine.candidates(unlabeled, 0)) == 100


def test_overrides_change_single_choices(tmp_path):
    loop = _loop(tmp_path, "official", overrides={"first_cycle_lowest": False, "lam": 0.3})
    assert loop.flavor.first_cycle_lowest is False and loop.flavor.lam == 0.3
    assert loop.flavor.consistency == "official"


def test_score_augmentation_quirk_only_on_svhn_and_caltech():
    assert flavor_for("official", "svhn").score_augment and flavor_for("official", "caltech101").score_augment
    assert not flavor_for("official", "cifar10").score_augment and not flavor_for("paper", "svhn").score_augment


def test_consistency_reduction_mean_weighs_eq7_c_times_less(tmp_path, monkeypatch):
    """flavor={"name": "paper", "consistency_reduction": "mean"} reaches the TOD loss of training."""
    import todal.engine

    seen = []
    real = todal.engine.fit

    def spy(*args, **kw):
        seen.append(kw["consistency"].reduction)
        return real(*args, **kw)

    monkeypatch.setattr(todal.engine, "fit", spy)
    _loop(tmp_path, "paper", model=TwoHead, overrides={"consistency_reduction": "mean"}).run()
    assert seen and set(seen) == {"mean"}
    with pytest.raises(TodalError, match="'consistency_reduction' parameter of Flavor must be one of sum, mean"):
        _loop(tmp_path / "bad", "paper", overrides={"consistency_reduction": "max"})


def test_runs_recorded_before_consistency_reduction_resume(tmp_path):
    """A config.json written before the choice existed (the committed benchmarks) still matches: they summed."""
    import json

    loop = _loop(tmp_path, "paper")
    loop.run()
    path = tmp_path / "paper" / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["flavor"]["consistency_reduction"]
    path.write_text(json.dumps(cfg))
    assert _loop(tmp_path, "paper").run() == loop.records()
    with pytest.raises(TodalError, match="different configuration"):
        _loop(tmp_path, "paper", overrides={"consistency_reduction": "mean"}).run()
