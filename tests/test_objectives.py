import pytest
import torch

from todal import tod_consistency
from todal.objectives import official_consistency


def test_eq7_by_hand():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert tod_consistency(s, t).item() == pytest.approx((5.0 + 1.0) / 2)


def test_eq7_mean_reduction_averages_over_the_outputs():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert tod_consistency(s, t, "mean").item() == pytest.approx((5.0 / 2 + 1.0 / 2) / 2)
    assert tod_consistency(s, t, "mean").item() == pytest.approx(torch.nn.functional.mse_loss(s, t).item())


def test_eq7_gradient_flows_to_student_only():
    s = torch.tensor([[1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0]], requires_grad=True)
    tod_consistency(s, t).backward()
    assert torch.allclose(s.grad, torch.tensor([[2.0, 4.0]]))
    assert t.grad is None


def test_eq7_dense_is_mean_over_pixels():
    s = torch.zeros(1, 2, 1, 2)
    t = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # squared norms per pixel: 2 and 4
    assert tod_consistency(s, t).item() == pytest.approx(3.0)


def test_official_consistency_by_hand():
    main, second, teacher = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    # mse(main, second) = 1; mse(second, teacher) = (0 + 4) / 2 = 2
    assert official_consistency([(main, second)], [teacher]).item() == pytest.approx(3.0)
