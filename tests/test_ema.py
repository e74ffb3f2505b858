import pytest
from torch import nn

from todal import EMA


def _bn_model(value: float) -> nn.Module:
    m = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    for p in m.parameters():
        p.data.fill_(value)
    m[1].running_mean.fill_(value)
    return m


def test_update_follows_eq6_with_ramp():
    student, teacher = _bn_model(1.0), _bn_model(0.0)
    ema = EMA(student, decay=0.6, teacher=teacher)
    ema.update(student)  # step 1: alpha = min(1 - 1/2, 0.6) = 0.5
    assert ema.model[0].weight.item() == pytest.approx(0.5)
    ema.update(student)  # step 2: alpha = min(1 - 1/3, 0.6) = 0.6 -> 0.6 * 0.5 + 0.4 * 1
    assert ema.model[0].weight.item() == pytest.approx(0.7)
    assert ema.step == 2


def test_buffers_are_averaged_and_counters_copied():
    student, teacher = _bn_model(1.0), _bn_model(0.0)
    student[1].num_batches_tracked.fill_(7)
    ema = EMA(student, decay=0.999, teacher=teacher)
    ema.update(student)
    assert ema.model[1].running_mean.item() == pytest.approx(0.5)
    assert ema.model[1].num_batches_tracked.item() == 7


def test_parameters_only_leaves_buffers():
    student, teacher = _bn_model(1.0), _bn_model(0.0)
    ema = EMA(student, decay=0.999, buffers=False, teacher=teacher)
    ema.update(student)
    assert ema.model[1].running_mean.item() == 0.0
    assert ema.model[0].bias.item() == pytest.approx(0.5)


def test_default_teacher_is_a_frozen_copy():
    student = _bn_model(2.0)
    ema = EMA(student)
    assert ema.model is not student
    assert ema.model[0].weight.item() == 2.0
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_state_dict_round_trip():
    student = _bn_model(1.0)
    ema = EMA(student)
    ema.update(_bn_model(3.0))
    other = EMA(_bn_model(0.0))
    other.load_state_dict(ema.state_dict())
    assert other.step == 1 and other.model[0].weight.item() == ema.model[0].weight.item()
