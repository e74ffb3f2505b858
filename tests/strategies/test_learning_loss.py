"""LL4AL: the ranking loss, the loss module, its training inside fit(), selection, state, options."""

import warnings

import pytest
import torch
from torch import nn

import todal.loop
from tinydata import TinyData, blobs, mlp, run_until_killed
from todal import ActiveLoop, models, strategies
from todal.strategies import Context
from todal.strategies.learning_loss import LearningLoss, LossNet, LossPrediction, ranking_loss
from todal.tasks import Classification
from todal.train import TrainConfig, fit


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def ctx_for(model, ds, unlabeled=None, seed=0) -> Context:
    unl = torch.arange(len(ds)) if unlabeled is None else unlabeled
    return Context(model=model, task=Classification(ds.num_classes), dataset=ds,
                   labeled=torch.empty(0, dtype=torch.long), unlabeled=unl, labels=torch.empty(0, dtype=torch.long),
                   generator=torch.Generator().manual_seed(seed), batch_size=16)


def trained(seed: int, epochs: int = 2, **options):
    """An ll4al strategy and an MLP trained together on blobs by fit()."""
    torch.manual_seed(seed)
    ds, model, strategy = blobs(60, seed), mlp(), LearningLoss(**options)
    fit(model, Classification(3), ds, torch.arange(40), cfg=TrainConfig(epochs=epochs, batch_size=8, lr=0.05),
        generator=torch.Generator().manual_seed(seed), objectives=strategy.objectives())
    return strategy, model, ds


# --- ranking_loss -------------------------------------------------------------------------------

def test_ranking_loss_by_hand():
    # pairs (0, 3) and (1, 2): Δl̂ = [3, -1], Δl = [-3, -1] -> one = [-1, -1]
    # max(0, 1 + 3) + max(0, 1 - 1) = 4, over 2 pairs
    pred, target = torch.tensor([3.0, 1.0, 2.0, 0.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert ranking_loss(pred, target).item() == pytest.approx(2.0)
    assert ranking_loss(pred, target, margin=0.0).item() == pytest.approx(1.5)


def test_ranking_loss_sign_convention():
    target = torch.tensor([2.0, 1.0])
    assert ranking_loss(torch.tensor([5.0, 0.0]), target).item() == 0.0  # right order, gap > margin
    assert ranking_loss(torch.tensor([0.0, 5.0]), target).item() == pytest.approx(6.0)  # wrong order
    assert ranking_loss(torch.tensor([0.5, 0.0]), target).item() == pytest.approx(0.5)  # right, inside margin
    # equal true losses count as "first is smaller" (sign(0) -> -1), as in the authors' code
    assert ranking_loss(torch.tensor([0.0, 5.0]), torch.tensor([1.0, 1.0])).item() == 0.0


def test_ranking_loss_odd_batch_leaves_the_last_sample_out():
    pred, target = torch.tensor([3.0, 1.0, 2.0, 0.0, 100.0]), torch.tensor([1.0, 2.0, 3.0, 4.0, -50.0])
    assert ranking_loss(pred, target).item() == pytest.approx(2.0)


def test_ranking_loss_without_a_pair_is_zero_and_backpropagates():
    pred = torch.tensor([1.5], requires_grad=True)
    loss = ranking_loss(pred, torch.tensor([0.3]))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None
    assert ranking_loss(torch.empty(0), torch.empty(0)).item() == 0.0


def test_ranking_loss_gradient_reaches_the_prediction_only():
    pred = torch.tensor([0.0, 1.0], requires_grad=True)
    target = torch.tensor([2.0, 1.0], requires_grad=True)
    ranking_loss(pred, target).backward()
    assert torch.equal(pred.grad, torch.tensor([-1.0, 1.0])) and target.grad is None


# --- LossNet ------------------------------------------------------------------------------------

def test_lossnet_pools_4d_and_takes_2d_taps():
    net = LossNet([3, 5, 7], hidden=4)
    feats = [torch.randn(6, 3, 8, 8), torch.randn(6, 5, 2, 2), torch.randn(6, 7)]
    assert net(feats).shape == (6,)
    assert net.fcs[0].in_features == 3 and net.out.in_features == 12
    # GAP: a 4-D map gives the same prediction as its pooled [B, C]
    pooled = [feats[0].mean((2, 3)), feats[1].mean((2, 3)), feats[2]]
    assert torch.allclose(net(feats), net(pooled))


def test_lossnet_refuses_the_wrong_number_of_taps():
    with pytest.raises(ValueError, match="built for 2 feature maps but got 1"):
        LossNet([3, 4])([torch.randn(2, 3)])


# --- the objective inside fit() -----------------------------------------------------------------

class Recording(LossPrediction):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def loss(self, **kw):
        out = super().loss(**kw)
        self.seen.append((kw["epoch"], out.item()))
        return out


def noisy_blobs(seed: int) -> TinyData:
    """48 clean blobs and 48 far-away points with random labels: the latter keep a high loss."""
    g = torch.Generator().manual_seed(seed)
    clean = blobs(48, seed)
    x, y = torch.randn(48, 8, generator=g) + 10.0, torch.randint(0, 3, (48,), generator=g)
    return TinyData(torch.cat([clean.x, x]), torch.cat([clean.y, y]), 3)


def test_fit_trains_the_loss_module_and_removes_its_hooks(seed):
    torch.manual_seed(seed)
    ds, model, obj = noisy_blobs(seed), mlp(), Recording()
    fit(model, Classification(3), ds, torch.arange(96), cfg=TrainConfig(epochs=1, batch_size=16, lr=0.05),
        generator=torch.Generator().manual_seed(seed), objectives=[obj])
    net, obj.seen = obj.net, []
    before = [p.detach().clone() for p in net.parameters()]
    fit(model, Classification(3), ds, torch.arange(96), cfg=TrainConfig(epochs=30, batch_size=16, lr=0.05),
        generator=torch.Generator().manual_seed(seed), objectives=[obj])
    assert hooks(model) == 0
    assert obj.net is net  # the same module, trained further
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    first = [v for e, v in obj.seen if e < 2]
    last = [v for e, v in obj.seen if e >= 28]
    assert sum(last) / len(last) < sum(first) / len(first)
    strategy = LearningLoss()
    strategy.objective = obj
    pred = strategy.predicted_loss(ctx_for(model, ds), torch.arange(96))
    assert pred[48:].mean() > pred[:48].mean()  # the noisy half is predicted to be harder


def test_loss_module_lives_on_the_models_device_and_in_the_optimizer(seed):
    strategy, model, _ = trained(seed, epochs=1)
    obj = strategy.objectives()[0]
    assert obj is strategy.objective and obj.net is not None
    assert {id(p) for p in obj.parameters()} == {id(p) for p in obj.net.parameters()}
    assert next(obj.net.parameters()).device == next(model.parameters()).device


@pytest.mark.parametrize("epoch, reaches_model", [(0, True), (6, True), (7, False), (9, False)])
def test_features_are_detached_after_detach_at(epoch, reaches_model):
    torch.manual_seed(0)
    model, obj = mlp(), LossPrediction(detach_at=0.6)  # round(0.6·10) = 6: epochs 7.. detached
    obj.attach(model)
    x, y = torch.randn(8, 8), torch.arange(8) % 3
    out = model(x)
    per_sample = Classification(3).per_sample_loss(out, y)
    obj.loss(out=out, y=y, per_sample_loss=per_sample.detach(), epoch=epoch, epochs=10).backward()
    obj.detach()
    first = model[0].weight.grad
    assert (first is not None and first.abs().sum() > 0) == reaches_model
    assert all(p.grad is not None for p in obj.net.parameters())


def test_builtin_models_are_tapped_at_their_feature_layers():
    cnn = models.get("small_cnn", in_channels=1, num_classes=3, width=0.25)
    obj = LossPrediction()
    obj.attach(cnn)
    assert obj.net.in_channels == [8, 16, 32]
    out = cnn(torch.randn(4, 1, 8, 8))
    loss = obj.loss(out=out, y=torch.zeros(4, dtype=torch.long), per_sample_loss=torch.rand(4), epoch=0, epochs=1)
    loss.backward()
    assert cnn.stage1[0].weight.grad is not None
    obj.detach()
    assert hooks(cnn) == 0
    res = LossPrediction()
    res.attach(models.get("resnet18", in_channels=3, num_classes=10))
    assert res.net.in_channels == [64, 128, 256, 512]  # the authors' LossNet num_channels
    res.detach()


def test_explicit_layers_are_tapped():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 3))
    obj = LossPrediction(layers=["0", "2"])
    obj.attach(model)
    assert obj.net.in_channels == [16, 4]
    model(torch.randn(5, 8))
    assert obj.loss(out=None, y=None, per_sample_loss=torch.rand(5), epoch=0, epochs=1).dim() == 0
    obj.detach()


def test_ema_copies_of_a_hooked_model_do_not_overwrite_the_features():
    import copy

    model, obj = mlp(), LossPrediction()
    obj.attach(model)
    teacher = copy.deepcopy(model)  # carries the hook, which must ignore it
    x = torch.randn(4, 8)
    model(x)
    teacher(torch.randn(4, 8))
    assert torch.equal(obj._taps.take()[0], model[1](model[0](x)))
    obj.detach()


# --- selection ----------------------------------------------------------------------------------

def known_strategy() -> LearningLoss:
    """A LossNet predicting relu(x_0) of the input of the final linear layer (the model itself)."""
    weights = {"fcs.0.weight": torch.eye(2), "fcs.0.bias": torch.zeros(2),
               "out.weight": torch.tensor([[1.0, 0.0]]), "out.bias": torch.zeros(1)}
    strategy = LearningLoss(hidden=2)
    strategy.load_state_dict({"loss_net": {"in_channels": [2], "hidden": 2, "weights": weights}})
    return strategy


def test_picks_the_highest_predicted_loss():
    x = torch.tensor([[0.1, 9.0], [3.0, 0.0], [0.5, 0.0], [2.0, -4.0], [-1.0, 5.0]])
    ds = TinyData(x, torch.zeros(5), 2)
    strategy = known_strategy()
    ctx = ctx_for(nn.Linear(2, 2), ds)
    assert torch.allclose(strategy.predicted_loss(ctx, torch.arange(5)), torch.tensor([0.1, 3.0, 0.5, 2.0, 0.0]))
    assert strategy.select(ctx, 2).tolist() == [1, 3]
    # only the candidates are scored when they cover the budget
    ctx = ctx_for(nn.Linear(2, 2), ds)
    ctx.candidates = torch.tensor([0, 2, 4])
    assert strategy.select(ctx, 1).tolist() == [2]


def test_predicted_loss_uses_the_module_fit_trained(seed):
    strategy, model, ds = trained(seed)
    net, idx = strategy.objective.net, torch.arange(40, 60)
    with torch.no_grad():
        expected = net([model[1](model[0](ds.x[idx]))])
    assert torch.allclose(strategy.predicted_loss(ctx_for(model, ds), idx), expected, atol=1e-6)
    assert strategy.objective.net is net and hooks(model) == 0 and model.training


def test_state_dict_round_trip_gives_identical_predictions(seed):
    strategy, model, ds = trained(seed)
    state = strategy.state_dict()
    assert all(v.device.type == "cpu" for v in state["loss_net"]["weights"].values())
    fresh = LearningLoss()
    fresh.load_state_dict(state)
    idx = torch.arange(40, 60)
    assert torch.equal(fresh.predicted_loss(ctx_for(model, ds), idx), strategy.predicted_loss(ctx_for(model, ds), idx))
    # loading into a strategy that has a module keeps that module object (the one fit() trains)
    net = strategy.objective.net
    strategy.load_state_dict(LearningLoss().state_dict() | state)
    assert strategy.objective.net is net
    strategy.load_state_dict({"loss_net": None})
    assert strategy.objective.net is None


def test_untrained_strategy_warns_and_is_deterministic():
    ds = blobs(30, 0)
    with pytest.warns(UserWarning, match="no trained loss-prediction module"):
        a = LearningLoss().select(ctx_for(mlp(), ds, seed=3), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = mlp()
        b = LearningLoss().select(ctx_for(model, ds, seed=3), 4)
        c = LearningLoss().select(ctx_for(model, ds, seed=3), 4)
    assert len(a) == 4 and torch.equal(b, c)


# --- options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"layers": "stage1"}, "'layers' parameter of strategy 'll4al' must be None or a non-empty list"),
    ({"layers": []}, "'layers' parameter of strategy 'll4al'"),
    ({"hidden": 0}, "'hidden' parameter of strategy 'll4al' must be an int >= 1"),
    ({"margin": -1.0}, "'margin' parameter of strategy 'll4al' must be a float >= 0"),
    ({"weight": "1"}, "'weight' parameter of strategy 'll4al' must be a float >= 0"),
    ({"detach_at": 1.5}, "'detach_at' parameter of strategy 'll4al' must be a float in \\[0, 1\\]"),
    ({"detachat": 0.5}, "'detachat' parameter of strategy 'll4al'"),
])
def test_bad_options_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        strategies.get("ll4al", **kw)


def test_unknown_layer_names_the_valid_ones():
    message = "'layers' parameter .* Got 'stage9'. Its top-level modules are: drop, head, stage1, stage2"
    with pytest.raises(ValueError, match=message):
        LossPrediction(layers=["stage9"]).attach(models.get("small_cnn", in_channels=1, num_classes=3, width=0.25))


def test_layer_without_known_channels_is_refused():
    with pytest.raises(ValueError, match="Got '1'. Tap a block"):
        LossPrediction(layers=["1"]).attach(mlp())


def test_module_built_for_another_model_is_refused():
    obj = LossPrediction()
    obj.attach(mlp())
    obj.detach()
    with pytest.raises(ValueError, match="built for feature channels \\[16\\]"):
        obj.attach(nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)))


# --- in the loop --------------------------------------------------------------------------------

def make(workdir):
    return ActiveLoop(mlp, blobs(150, 0), blobs(60, 1), strategy="ll4al", semi_supervised=False, initial=20,
                      budget=10, cycles=3, epochs=2, train={"batch_size": 8, "lr": 0.05}, workdir=workdir)


def watch_fit(monkeypatch) -> tuple[list, list]:
    """The loss module's weights as each cycle's training starts (None: no module yet) and ends."""
    starts, ends, real = [], [], todal.engine.fit

    def weights(obj):
        return None if obj.net is None else {k: v.clone() for k, v in obj.net.state_dict().items()}

    def watched(*args, objectives=(), **kw):
        starts.append(weights(objectives[0]))
        out = real(*args, objectives=objectives, **kw)
        ends.append(weights(objectives[0]))
        return out

    monkeypatch.setattr(todal.engine, "fit", watched)
    return starts, ends


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# progress.json writes: 5 = before cycle 1 trains (the module comes from strategy_0.pt),
# 6 = after it trained (the module comes from cycle_1.pt); each time a fresh strategy object resumes
@pytest.mark.parametrize("kill_after", [5, 6])
def test_loop_keeps_training_the_module_and_resumes(tmp_path, monkeypatch, kill_after):
    drop = ("train_time_s", "select_time_s")
    starts, ends = watch_fit(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no trained loss-prediction module")  # selection uses it
        expected = [{k: v for k, v in r.items() if k not in drop} for r in make(tmp_path / "ref").run()]
    # built in cycle 0, then every cycle trains on from where the last one ended
    assert starts[0] is None and same(starts[1], ends[0]) and same(starts[2], ends[1])
    assert not same(ends[1], ends[2])
    ref_ends = list(ends)

    run_until_killed(lambda: make(tmp_path / "run").run(), monkeypatch, kill_after)
    starts.clear()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no trained loss-prediction module")
        resumed = make(tmp_path / "run").run()
    assert same(starts[0], ref_ends[kill_after - 5])  # the resumed cycle starts from the saved module
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == expected


@pytest.mark.gpu
def test_trains_and_scores_on_the_gpu():
    strategy, model, ds = LearningLoss(), mlp().cuda(), blobs(60, 0)
    fit(model, Classification(3), ds, torch.arange(40), cfg=TrainConfig(epochs=2, batch_size=8, lr=0.05),
        generator=torch.Generator().manual_seed(0), objectives=strategy.objectives(), device="cuda")
    net = strategy.objective.net
    assert next(net.parameters()).is_cuda and hooks(model) == 0
    ctx = ctx_for(model, ds)
    ctx.device = torch.device("cuda")
    pred = strategy.predicted_loss(ctx, torch.arange(40, 60))
    assert pred.device.type == "cpu" and pred.shape == (20,) and strategy.objective.net is net
    state = strategy.state_dict()
    assert all(v.device.type == "cpu" for v in state["loss_net"]["weights"].values())
    strategy.load_state_dict(state)  # in place, still on the GPU
    assert strategy.objective.net is net and next(net.parameters()).is_cuda
    assert torch.equal(strategy.predicted_loss(ctx, torch.arange(40, 60)), pred)
