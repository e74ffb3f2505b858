import pytest
import torch
from torch import nn

from todal import models
from todal.errors import TodalError
from todal.models.segmentation import DRND22

SIZES = [(33, 31), (32, 48)]  # odd and even


@pytest.fixture(scope="module")
def drn():
    torch.manual_seed(0)
    return models.get("drn_d_22", in_channels=3, num_classes=5).eval()


@pytest.fixture(scope="module")
def segcnn():
    torch.manual_seed(0)
    return models.get("seg_cnn", in_channels=1, num_classes=11, width=0.5).eval()


@pytest.mark.parametrize("size", SIZES)
def test_drn_logits_at_input_size_and_embed(drn, size):
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert drn(x).shape == (2, 5, *size)
        assert drn.embed(x).shape == (2, 512)
        h, w = drn.features(x).shape[-2:]
    assert (h, w) == tuple(-(-s // 8) for s in size)  # output stride 8


@pytest.mark.parametrize("size", SIZES)
def test_seg_cnn_logits_at_input_size_and_embed(segcnn, size):
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        assert segcnn(x).shape == (2, 11, *size)
        assert segcnn.embed(x).shape == (2, 32)  # 64 x width 0.5: the pooled bottleneck


def test_registered_and_embed_helper_uses_the_model(segcnn):
    assert {"drn_d_22", "seg_cnn"} <= set(models.names())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(models.embed(segcnn, x), segcnn.embed(x))


def test_drn_d_22_layout(drn):
    """22 weight layers: 7x7 stem, 2 conv levels, 4 levels of 2 BasicBlocks, 2 degridding convs, classifier."""
    convs = [m for n, m in drn.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n]
    assert len(convs) + 1 == 22  # + the per-pixel linear classifier
    assert [m.out_channels for m in convs[:3]] == [16, 16, 32]
    dilations = {name: {m.dilation[0] for m in getattr(drn, name).modules()
                        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
                 for name in ("layer3", "layer4", "layer5", "layer6", "layer7", "layer8")}
    assert dilations == {"layer3": {1}, "layer4": {1}, "layer5": {2}, "layer6": {4}, "layer7": {2}, "layer8": {1}}
    assert not any(isinstance(m, models.segmentation.BasicBlock) for m in drn.layer7.modules())  # no residual
    assert sum(p.numel() for p in drn.parameters() if p.requires_grad) == pytest.approx(15.88e6, rel=0.01)


@pytest.mark.parametrize("name", ["drn_d_22", "seg_cnn"])
def test_feature_layers_are_module_names(name):
    m = models.get(name, in_channels=1, num_classes=3)
    assert len(m.feature_layers) == 4 and set(m.feature_layers) <= dict(m.named_modules()).keys()


def test_second_head_and_dropout_options():
    torch.manual_seed(0)
    m = models.get("seg_cnn", in_channels=1, num_classes=4, width=0.25, second_head=True).eval()
    x = torch.randn(2, 1, 9, 12)
    a, b = m.heads(x)
    assert a.shape == b.shape == (2, 4, 9, 12) and torch.allclose(a, m(x))
    with pytest.raises(TodalError, match="has no second head; build it with second_head=True"):
        models.get("seg_cnn", in_channels=1, num_classes=4).heads(x)
    with pytest.raises(TodalError, match=r"The 'dropout' parameter of SegCNN must be a float in \[0, 1\)"):
        models.get("seg_cnn", in_channels=1, num_classes=4, dropout=1.0)


def test_mc_dropout_helpers_work_through_the_linear_head(segcnn):
    assert models.head_of(segcnn) is segcnn.head
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        before = segcnn.eval()(x)
    weights = {k: v.clone() for k, v in segcnn.state_dict().items()}
    noisy = models.with_dropout(segcnn, 0.5)
    with torch.no_grad(), models.dropout_active(noisy):
        assert not torch.equal(noisy(x), noisy(x))
    # the original is untouched: no dropout layer of p=0.5 added to it, its weights and eval outputs the same
    assert segcnn.drop is not noisy.drop and not any(isinstance(m, torch.nn.Dropout) and m.p == 0.5
                                                     for m in segcnn.modules())
    assert all(torch.equal(v, segcnn.state_dict()[k]) for k, v in weights.items())
    with torch.no_grad():
        assert torch.equal(segcnn.eval()(x), before)


def test_drn_loads_the_authors_trunk_weights(tmp_path):
    torch.manual_seed(1)
    src = DRND22(3, 1000)
    state = {f"module.{k}": v for k, v in src.state_dict().items() if k.startswith("layer")}
    state["module.fc.weight"] = torch.zeros(1000, 512, 1, 1)  # the ImageNet classifier is skipped
    torch.save(state, tmp_path / "drn_d_22.pth")
    torch.manual_seed(2)
    dst = DRND22(3, 19, weights=tmp_path / "drn_d_22.pth")
    assert torch.equal(dst.layer6[1].conv2.weight, src.layer6[1].conv2.weight)
    assert torch.equal(dst.layer0[1].running_var, src.layer0[1].running_var)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(TodalError, match="do not match the network"):
        DRND22(3, 19, weights=tmp_path / "other.pth")
