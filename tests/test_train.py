import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinydata import TinyData, blobs, mlp
from todal import EMA, TrainConfig, fit
from todal.errors import TodalError
from todal.objectives import Eq7Consistency
from todal.tasks import Classification


def _one_step_cfg(batch: int) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=batch, lr=0.1, momentum=0.0, weight_decay=0.0)


def test_one_step_of_eq9_matches_hand_gradient():
    torch.manual_seed(0)
    ds = blobs(8, 0)
    labeled, unlabeled = torch.arange(4), torch.arange(4, 8)
    model = mlp()
    teacher = mlp()  # a different teacher, so the consistency term is not zero
    expected = copy.deepcopy(model)
    ema = EMA(model, 0.999, teacher=copy.deepcopy(teacher))
    lam = 0.5
    # Full batches: the loss does not depend on the order the batches are drawn in.
    xl, yl, xu = ds.x[labeled], ds.y[labeled], ds.x[unlabeled]
    loss = F.cross_entropy(expected(xl), yl) + lam * ((expected(xu) - teacher(xu)) ** 2).sum(1).mean()
    grads = torch.autograd.grad(loss, list(expected.parameters()))
    fit(model, Classification(3), ds, labeled, unlabeled=unlabeled, ema=ema,
        consistency=Eq7Consistency(ema.model, lam, reduction="sum", teacher_train_mode=False),
        cfg=_one_step_cfg(4), generator=torch.Generator().manual_seed(0))
    for p, q, g in zip(model.parameters(), expected.parameters(), grads):
        assert torch.allclose(p, q - 0.1 * g, atol=1e-6)


def test_ema_updates_after_every_step_and_teacher_gets_no_gradient():
    ds = blobs(12, 0)
    model = mlp()
    ema = EMA(model, 0.9)
    before = [p.clone() for p in ema.model.parameters()]
    stats = fit(model, Classification(3), ds, torch.arange(6), unlabeled=torch.arange(6, 12), ema=ema,
                consistency="default", cfg=TrainConfig(epochs=2, batch_size=2), generator=torch.Generator().manual_seed(0))
    assert stats["steps"] == 6 and ema.step == 6
    assert all(p.grad is None for p in ema.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, ema.model.parameters()))


def test_a_fixed_teacher_is_the_target_and_stays_fixed():
    """A consistency against another model (the CyclicOD loss): one step matches the hand gradient against
    that model, not the EMA's."""
    torch.manual_seed(0)
    ds = blobs(8, 0)
    labeled, unlabeled = torch.arange(4), torch.arange(4, 8)
    model, fixed = mlp(), mlp()
    expected, frozen = copy.deepcopy(model), copy.deepcopy(fixed)
    ema = EMA(model, 0.5)  # a different target, which must not be used
    xl, yl, xu = ds.x[labeled], ds.y[labeled], ds.x[unlabeled]
    loss = F.cross_entropy(expected(xl), yl) + 0.5 * ((expected(xu) - fixed(xu)) ** 2).sum(1).mean()
    grads = torch.autograd.grad(loss, list(expected.parameters()))
    fit(model, Classification(3), ds, labeled, unlabeled=unlabeled, ema=ema,
        consistency=Eq7Consistency(fixed, 0.5, reduction="sum", teacher_train_mode=False),
        cfg=_one_step_cfg(4), generator=torch.Generator().manual_seed(0))
    for p, q, g in zip(model.parameters(), expected.parameters(), grads):
        assert torch.allclose(p, q - 0.1 * g, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(fixed.parameters(), frozen.parameters()))
    assert ema.step == 1  # the EMA still follows the model


def test_task_only_training_learns_blobs():
    ds, test = blobs(90, 0), blobs(60, 1)
    model = mlp()
    fit(model, Classification(3), ds, torch.arange(90), cfg=TrainConfig(epochs=20, batch_size=16, lr=0.05),
        generator=torch.Generator().manual_seed(0))
    acc = (model(test.x).argmax(1) == test.y).float().mean().item()
    assert acc > 0.9


def test_lr_drops_after_80_percent_of_epochs():
    cfg = TrainConfig(epochs=10, lr_drop_at=0.8)
    assert cfg.lr == 0.1 and round(cfg.lr_drop_at * cfg.epochs) == 8


def test_official_consistency_needs_a_second_head():
    ds = blobs(8, 0)
    with pytest.raises(TodalError, match="second_head=True"):
        fit(mlp(), Classification(3), ds, torch.arange(4), unlabeled=torch.arange(4, 8), ema=EMA(mlp()),
            consistency="official", cfg=_one_step_cfg(4), generator=torch.Generator())


def test_consistency_without_teacher_or_unlabeled_data_is_refused():
    with pytest.raises(TodalError, match=r"'consistency' parameter of fit must be used with ema= \(the EMA teacher\)"):
        fit(mlp(), Classification(3), blobs(8, 0), torch.arange(4), consistency="default",
            cfg=_one_step_cfg(4), generator=torch.Generator())
    with pytest.raises(TodalError, match="'consistency' parameter of fit must be used with a non-empty unlabeled set"):
        fit(mlp(), Classification(3), blobs(8, 0), torch.arange(4), consistency="default", ema=EMA(mlp()),
            cfg=_one_step_cfg(4), generator=torch.Generator())
    with pytest.raises(TodalError, match="'consistency' parameter of fit must be one of default, paper, official. "
                                         "Got 'eq7'"):
        fit(mlp(), Classification(3), blobs(8, 0), torch.arange(4), consistency="eq7", ema=EMA(mlp()),
            unlabeled=torch.arange(4, 8), cfg=_one_step_cfg(4), generator=torch.Generator())


def test_fit_defaults_to_the_default_flavors_tod_loss():
    """consistency="default" is exactly the objective ActiveLoop's default flavor builds."""
    from todal.flavor import flavor_for

    ds, runs = blobs(40, 0), []
    for make in (lambda ema: "default", lambda ema: flavor_for("default").consistency_objective(ema.model),
                 lambda ema: Eq7Consistency(ema.model, reduction="sum")):
        torch.manual_seed(0)
        model = mlp()
        ema = EMA(model)
        fit(model, Classification(3), ds, torch.arange(10), unlabeled=torch.arange(10, 40), ema=ema,
            consistency=make(ema), cfg=TrainConfig(epochs=2, batch_size=5), generator=torch.Generator().manual_seed(0))
        runs.append(model)
    assert all(torch.equal(a, b) for a, b in zip(runs[0].parameters(), runs[1].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0].parameters(), runs[2].parameters()))


def test_bad_train_config_is_one_clear_error():
    with pytest.raises(TodalError, match=r"The 'epochs' parameter of TrainConfig must be an int >= 1. Got 0."):
        TrainConfig(epochs=0)


def test_evaluate_by_hand():
    from todal.train import evaluate

    # logits are the inputs: predictions 0, 1, 1 for labels 0, 1, 0 -> accuracy 2/3
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    ds = TinyData(x, torch.tensor([0, 1, 0]), 2)
    m = evaluate(nn.Identity(), Classification(2), ds, batch_size=2)
    expected_loss = F.cross_entropy(x, torch.tensor([0, 1, 0])).item()
    assert m["accuracy"] == pytest.approx(2 / 3) and m["loss"] == pytest.approx(expected_loss)
    assert m["per_class_accuracy"] == [0.5, 1.0]


def test_bf16_autocast_trains_on_cpu_and_auto_is_fp32_there():
    import dataclasses

    from tinydata import blobs, mlp
    from todal.tasks import Classification
    from todal.train import TrainConfig, fit

    data = blobs(64, 0)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    assert cfg.autocast_dtype(torch.device("cpu")) is None and not cfg.use_channels_last(torch.device("cpu"))
    assert dataclasses.replace(cfg, precision="bf16").autocast_dtype(torch.device("cpu")) == torch.bfloat16

    def train(c):
        torch.manual_seed(0)
        m = mlp()
        stats = fit(m, Classification(3), data, torch.arange(64), cfg=c, generator=torch.Generator().manual_seed(0))
        return m, stats

    fp32, s32 = train(cfg)
    again, _ = train(dataclasses.replace(cfg, precision="fp32"))
    assert all(torch.equal(a, b) for a, b in zip(fp32.parameters(), again.parameters()))  # auto == fp32 on CPU
    bf16, s16 = train(dataclasses.replace(cfg, precision="bf16"))
    assert s16["epoch_losses"][-1] < s16["epoch_losses"][0] and abs(s16["loss"] - s32["loss"]) < 0.2
    assert not all(torch.equal(a, b) for a, b in zip(fp32.parameters(), bf16.parameters()))  # it did change precision
    with pytest.raises(ValueError, match="'precision' parameter of TrainConfig must be one of auto, fp32, bf16"):
        TrainConfig(precision="fp16")


def test_channels_last_on_cpu_gives_the_same_training():
    import dataclasses

    from todal import models
    from todal.data import read_digits
    from todal.tasks import Classification
    from todal.train import TrainConfig, fit

    train, _ = read_digits()
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05)

    def run(c):
        torch.manual_seed(0)
        m = models.get("small_cnn", in_channels=1, num_classes=10, width=0.25)
        return fit(m, Classification(10), train, torch.arange(128), cfg=c, generator=torch.Generator().manual_seed(0))

    plain, cl = run(cfg), run(dataclasses.replace(cfg, channels_last=True))
    assert cl["loss"] == pytest.approx(plain["loss"], rel=1e-4)


def test_sync_bn_on_cpu_is_refused_in_a_data_parallel_run(monkeypatch):
    from todal import distributed

    monkeypatch.setattr(distributed, "active", lambda: True)  # refused before any process group is needed
    with pytest.raises(TodalError, match="sync_bn needs CUDA devices .* norm='group'"):
        fit(mlp(), Classification(3), blobs(40, 0), torch.arange(40), cfg=TrainConfig(epochs=1, sync_bn=True),
            generator=torch.Generator().manual_seed(0))


def test_inputs_held_on_a_device_keep_the_given_labels_and_train_the_same(monkeypatch):
    """`on_device` (a GPU: in-memory inputs moved once) must not change training; the labels stay the
    pool's given ones, not the dataset's own (they differ here)."""
    from todal import train as train_mod
    from todal.data import read_digits
    from todal.inference import DeviceInputs, on_device
    from todal.labeled import PoolLabels
    from todal.models import get

    data, _ = read_digits()
    given = (data.y + 1) % 10  # a person's labels, not the dataset's
    pool = PoolLabels(data, given)
    held = DeviceInputs(pool, data.x.clone())
    idx = torch.tensor([5, 0, 7])
    x, y = held.batch(idx)
    assert torch.equal(x, data.x[idx]) and torch.equal(y, given[idx]) and not torch.equal(y, data.y[idx])
    assert torch.equal(held.inputs(idx), data.x[idx]) and held.mean == data.mean  # metadata: the dataset's

    # where it applies: in-memory inputs, a device they are not on (meta stands in for a GPU here)
    assert isinstance(on_device(pool, torch.device("meta")), DeviceInputs)
    assert isinstance(on_device(torch.utils.data.TensorDataset(data.x, data.y), torch.device("meta")), DeviceInputs)
    assert on_device(pool, torch.device("cpu")) is pool  # already there
    lazy = [data[i] for i in range(10)]
    assert on_device(lazy, torch.device("meta")) is lazy

    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05)

    def run():
        torch.manual_seed(0)
        m = get("small_cnn", in_channels=1, num_classes=10, width=0.25)
        fit(m, Classification(10), pool, torch.arange(160), cfg=cfg, generator=torch.Generator().manual_seed(0))
        return m

    plain = run()
    monkeypatch.setattr(train_mod, "on_device", lambda ds, device: DeviceInputs(ds, data.x.clone()))
    moved = run()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), moved.state_dict().values()))
