import pytest
import torch

from todal import tod_consistency
from todal.objectives import official_consistency


def test_eq7_by_hand():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert tod_consistency(s, t, "sum").item() == pytest.approx((5.0 + 1.0) / 2)  # as printed: squared norms


def test_eq7_defaults_to_the_default_flavors_reduction():
    """One default everywhere: tod_consistency, Eq7Consistency, fit and ActiveLoop take the default flavor's."""
    from todal.flavor import flavor_for
    from todal.objectives import Eq7Consistency

    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    default = flavor_for("default")
    assert default.consistency_reduction == "mean"
    assert tod_consistency(s, t).item() == pytest.approx((5.0 / 2 + 1.0 / 2) / 2)
    eq7 = Eq7Consistency(torch.nn.Identity())
    assert (eq7.lam, eq7.reduction, eq7.teacher_train_mode) == (default.lam, "mean", default.teacher_train_mode)
    with pytest.raises(ValueError, match="'reduction' parameter of tod_consistency must be one of mean, sum"):
        tod_consistency(s, t, "max")


def test_eq7_mean_reduction_averages_over_the_outputs():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert tod_consistency(s, t, "mean").item() == pytest.approx((5.0 / 2 + 1.0 / 2) / 2)
    assert tod_consistency(s, t, "mean").item() == pytest.approx(torch.nn.functional.mse_loss(s, t).item())


def test_eq7_gradient_flows_to_student_only():
    s = torch.tensor([[1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0]], requires_grad=True)
    tod_consistency(s, t, "sum").backward()
    assert torch.allclose(s.grad, torch.tensor([[2.0, 4.0]]))
    assert t.grad is None


def test_eq7_dense_is_mean_over_pixels():
    s = torch.zeros(1, 2, 1, 2)
    t = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # squared norms per pixel: 2 and 4
    assert tod_consistency(s, t, "sum").item() == pytest.approx(3.0)


def test_official_consistency_by_hand():
    main, second, teacher = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    # mse(main, second) = 1; mse(second, teacher) = (0 + 4) / 2 = 2
    assert official_consistency([(main, second)], [teacher]).item() == pytest.approx(3.0)


def test_a_users_own_consistency_objective_trains_through_fit():
    from tinydata import blobs, mlp
    from todal.ema import EMA
    from todal.objectives import Consistency, Eq7Consistency
    from todal.tasks import Classification
    from todal.train import TrainConfig, fit

    calls = []

    class KL(Consistency):
        def unlabeled_loss(self, student, heads, teacher, x, state, xu):
            calls.append(len(xu))
            s, t = student(xu).log_softmax(1), teacher(xu).softmax(1)
            return self.lam * torch.nn.functional.kl_div(s, t, reduction="batchmean")

    data, cfg = blobs(80, 0), TrainConfig(epochs=2, batch_size=16, lr=0.05)

    def run(make):
        torch.manual_seed(0)
        model = mlp()
        ema = EMA(model)
        fit(model, Classification(3), data, torch.arange(20), cfg=cfg, generator=torch.Generator().manual_seed(0),
            unlabeled=torch.arange(20, 80), ema=ema, consistency=make(ema.model))
        return model

    kl = run(lambda t: KL(t, 1.0))
    assert calls and set(calls) == {16}
    eq7 = run(lambda t: Eq7Consistency(t))
    torch.manual_seed(0)
    shortcut_model = mlp()
    ema = EMA(shortcut_model)
    fit(shortcut_model, Classification(3), data, torch.arange(20), cfg=cfg, generator=torch.Generator().manual_seed(0),
        unlabeled=torch.arange(20, 80), ema=ema, consistency="default")
    assert all(torch.equal(a, b) for a, b in zip(eq7.parameters(), shortcut_model.parameters()))  # the shortcut
    assert not all(torch.equal(a, b) for a, b in zip(eq7.parameters(), kl.parameters()))
