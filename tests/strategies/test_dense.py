"""sraal, qbc, mc_dropout and bald on dense outputs (segmentation): the selection contract, and no
tensor of the whole pool's `[n, C, H, W]` outputs, whatever the pool size."""

import copy

import pytest
import torch
from torch import nn

from tinydata import largest_tensor_while
from todal import strategies
from todal.strategies import Context, committee
from todal.strategies.adversarial import online_uncertainty
from todal.strategies.base import LabelMaps
from todal.tasks import Segmentation

C, SIDE, BATCH = 3, 8, 4
OUTPUT = C * SIDE * SIDE  # one sample's output
OPTIONS = {
    "sraal": {"iterations": 2, "width": 4, "disc_width": 8, "batch_size": 4},
    "qbc": {"members": 2, "epochs": 1},
    "mc_dropout": {"passes": 6},
    "bald": {"passes": 6},
}
NAMES = sorted(OPTIONS)


class Scenes:
    """`[N, 3, 8, 8]` images and `[N, 8, 8]` masks; class c where channel c is brightest."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, SIDE, SIDE, generator=g)
        self.y = self.x.argmax(1)
        self.num_classes = C

    def __len__(self):
        return len(self.x)

    def batch(self, idx):
        return self.x[idx], self.y[idx]


def seg_model(seed: int = 0) -> nn.Module:
    """A 1x1-convolution "segmentation model" `[N, 3, H, W]` -> `[N, C, H, W]`, with dropout for MC-Dropout."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Dropout(0.5), nn.Conv2d(3, C, 1))


def dense_ctx(n: int = 20, seed: int = 0, n_labeled: int = 6) -> Context:
    ds = Scenes(n, seed)
    labeled = torch.arange(n_labeled)
    return Context(model=seg_model(seed), task=Segmentation(C), dataset=ds, labeled=labeled,
                   unlabeled=torch.arange(n_labeled, n), labels=LabelMaps(ds, labeled),
                   generator=torch.Generator().manual_seed(seed), batch_size=BATCH)


def select(name: str, ctx: Context, k: int = 5) -> torch.Tensor:
    return strategies.get(name, **OPTIONS[name]).select(ctx, k)


# ---------------------------------------------------------------- the selection contract


@pytest.mark.parametrize("name", NAMES)
def test_dense_selection_contract(name):
    ctx = dense_ctx()
    before = copy.deepcopy(ctx.model.state_dict())
    ctx.model.train()
    rng = torch.get_rng_state()
    chosen = select(name, ctx)
    assert chosen.dtype == torch.long and len(chosen) == 5 and len(chosen.unique()) == 5
    assert set(chosen.tolist()) <= set(ctx.unlabeled.tolist())
    assert torch.equal(chosen, select(name, dense_ctx()))  # same seed, same selection
    assert all(torch.equal(v, ctx.model.state_dict()[k]) for k, v in before.items())
    assert ctx.model.training
    assert torch.equal(rng, torch.get_rng_state())  # randomness only from ctx.generator


# ---------------------------------------------------------------- memory: one check per fix


def test_sraal_indicator_is_computed_per_batch(monkeypatch):
    ctx = dense_ctx()
    with torch.no_grad():
        whole = online_uncertainty(torch.softmax(ctx.model.eval()(ctx.dataset.x[ctx.unlabeled]), 1))
    sraal = strategies.get("sraal", **OPTIONS["sraal"])
    monkeypatch.setattr(Context, "outputs", lambda *a, **k: pytest.fail("SRAAL built whole-pool outputs"))
    largest = largest_tensor_while(lambda: sraal._side(ctx, ctx.unlabeled))
    assert largest <= BATCH * OUTPUT < len(ctx.unlabeled) * OUTPUT
    side = sraal._side(ctx, ctx.unlabeled)
    assert torch.allclose(side["state_u"], 1 - whole, atol=1e-6)
    assert "y_l" not in side  # label maps are not read for the (disabled) target learner
    assert len(sraal.select(ctx, 3)) == 3


def test_qbc_uses_whole_network_members_for_dense_outputs(monkeypatch):
    # the default scope="head" would cache whole-pool outputs and per-pixel features
    ctx = dense_ctx()
    expected = strategies.get("qbc", scope="all", **OPTIONS["qbc"]).select(ctx, 5)

    def one_sample_only(self, model, indices, desc=None):
        assert len(indices) <= 1, "qbc built whole-pool outputs"
        return real(self, model, indices, desc)

    real = Context.outputs
    monkeypatch.setattr(Context, "outputs", one_sample_only)
    monkeypatch.setattr(committee, "outputs_and_features", lambda *a, **k: pytest.fail("per-pixel features cached"))
    assert torch.equal(strategies.get("qbc", **OPTIONS["qbc"]).select(dense_ctx(), 5), expected)


@pytest.mark.parametrize("name", NAMES)
def test_selection_memory_does_not_grow_with_the_pool(name):
    contexts = [dense_ctx(n) for n in (20, 60)]  # built outside: the dataset itself is pool-sized
    largest = [largest_tensor_while(lambda ctx=ctx: select(name, ctx)) for ctx in contexts]
    assert largest[0] == largest[1]
    assert largest[1] < 54 * OUTPUT  # below the 54 unlabeled samples' outputs (SRAAL's VAE is the largest)


@pytest.mark.parametrize("name", ["mc_dropout", "bald"])
@pytest.mark.parametrize("passes", [6, 20])  # 20 > batch size: the passes themselves come in chunks
def test_dropout_passes_keep_one_batch_of_outputs(name, passes):
    # all T passes of a batch at once would be T x 4 x 3 x 8 x 8 elements
    ctx = dense_ctx()
    strategy = strategies.get(name, passes=passes)
    assert largest_tensor_while(lambda: strategy.select(ctx, 5)) <= BATCH * OUTPUT


def test_dropout_on_a_model_without_dropout_or_linear_is_a_clear_error():
    ctx = dense_ctx()
    ctx.model = nn.Conv2d(3, C, 1)
    with pytest.raises(ValueError, match="needs a model with nn.Dropout layers, or a final nn.Linear"):
        strategies.get("bald").select(ctx, 2)


def test_qbc_members_train_with_the_paired_image_and_mask_augmentation():
    ctx = dense_ctx()
    calls = []

    def pair(x, y, generator=None):
        calls.append((x.shape, y.shape))
        return x.flip(-1), y.flip(-1)

    ctx.dataset.train_pair_transform = pair
    assert len(strategies.get("qbc", **OPTIONS["qbc"]).select(ctx, 3)) == 3
    assert calls and all(xs[0] == ys[0] and xs[2:] == ys[1:] for xs, ys in calls)  # masks came along
