import math

import pytest
import torch
from torch import nn

from tinydata import TinyData
from todal import output_discrepancy, strategies
from todal.strategies import Context
from todal.discrepancy import discrepancy, to_space
from todal.errors import TodalError
from todal.tasks import Classification


def test_l2_is_eq1_norm():
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    assert discrepancy(a, b, measure="l2").item() == pytest.approx(5.0)


def test_half_sq_is_official_measure():
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    assert discrepancy(a, b, measure="half_sq").item() == pytest.approx(12.5)


def test_probs_space_by_hand():
    # softmax([0, 0]) = [.5, .5]; softmax([ln 3, 0]) = [.75, .25]; difference [.25, -.25]
    a = to_space(torch.tensor([[0.0, 0.0]]), "probs")
    b = to_space(torch.tensor([[math.log(3.0), 0.0]]), "probs")
    assert discrepancy(a, b, measure="l2").item() == pytest.approx(math.sqrt(0.125))
    assert discrepancy(a, b, measure="half_sq").item() == pytest.approx(0.0625)


def test_dense_outputs_sum_per_pixel_norms():
    a = torch.zeros(1, 2, 1, 2)
    b = torch.tensor([[[[3.0, 0.0]], [[4.0, 1.0]]]])  # pixel norms 5 and 1
    assert discrepancy(a, b).item() == pytest.approx(6.0)
    assert discrepancy(a, b, task=Classification(2, reduction="mean")).item() == pytest.approx(3.0)


def _linear(weight) -> nn.Module:
    m = nn.Linear(2, 2, bias=False)
    m.weight.data = torch.tensor(weight, dtype=torch.float32)
    return m


def test_output_discrepancy_of_identity_vs_zero_is_input_norm():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    ds = TinyData(x, torch.zeros(3), 2)
    d = output_discrepancy(_linear([[1, 0], [0, 1]]), _linear([[0, 0], [0, 0]]), ds, space="logits")
    assert torch.allclose(d, torch.tensor([5.0, 1.0, 2.0]))


def test_output_discrepancy_streams_batches_and_indices():
    g = torch.Generator().manual_seed(0)
    ds = TinyData(torch.randn(10, 2, generator=g), torch.zeros(10), 2)
    a, b = _linear([[1, 2], [3, 4]]), _linear([[0, 1], [1, 0]])
    full = output_discrepancy(a, b, ds, batch_size=256)
    assert torch.allclose(output_discrepancy(a, b, ds, batch_size=3), full)
    idx = torch.tensor([7, 2, 5])
    assert torch.allclose(output_discrepancy(a, b, ds, idx, space="probs", batch_size=2),
                          output_discrepancy(a, b, ds, space="probs")[idx])


def test_same_model_has_zero_discrepancy():
    ds = TinyData(torch.randn(5, 2), torch.zeros(5), 2)
    m = _linear([[1, 2], [3, 4]])
    assert torch.all(output_discrepancy(m, m, ds) == 0)


def test_unknown_space_is_rejected():
    ds = TinyData(torch.randn(5, 2), torch.zeros(5), 2)
    m = _linear([[1, 2], [3, 4]])
    with pytest.raises(TodalError, match="'space' parameter of output_discrepancy must be one of logits, probs"):
        output_discrepancy(m, m, ds, space="prob")


def test_output_discrepancy_and_the_cod_strategy_share_one_default_space():
    # rows 0 and 1 have the largest logit change but (nearly) none in probabilities; row 2 the reverse
    x = torch.tensor([[40.0, 0.0], [0.0, 40.0], [0.5, -0.5], [0.1, 0.0]])
    ds = TinyData(x, torch.zeros(4), 2)
    a, b = _linear([[1, 0], [0, 1]]), _linear([[2, 0], [0, 2]])
    d = output_discrepancy(a, b, ds)  # default space
    assert torch.allclose(d, output_discrepancy(a, b, ds, space="probs")) and int(d.argmax()) == 2
    assert int(output_discrepancy(a, b, ds, space="logits").argmax()) in (0, 1)
    ctx = Context(model=a, task=Classification(2), dataset=ds, labeled=torch.empty(0, dtype=torch.long),
                  unlabeled=torch.arange(4), labels=torch.empty(0, dtype=torch.long),
                  generator=torch.Generator().manual_seed(0), previous=lambda: b, cycle=1)
    assert strategies.get("cod").select(ctx, 1).tolist() == [int(d.argmax())]


def test_probs_space_refuses_single_output_models():
    ds = TinyData(torch.randn(4, 2), torch.zeros(4), 2)
    m = nn.Linear(2, 1)
    with pytest.raises(TodalError, match=r"space='probs' needs class scores on dim 1.*pass space='logits'"):
        output_discrepancy(m, m, ds)
    assert torch.all(output_discrepancy(m, m, ds, space="logits") == 0)
