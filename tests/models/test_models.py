import pytest
import torch
from torch import nn

from todal import models
from todal.errors import TodalError


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
@pytest.mark.parametrize("channels, size", [(1, 8), (1, 28), (3, 32)])
def test_shapes(name, channels, size):
    m = models.get(name, in_channels=channels, num_classes=5)
    x = torch.randn(2, channels, size, size)
    assert m(x).shape == (2, 5)
    assert models.embed(m, x).shape == (2, m.embed_dim)


def test_generic_embed_is_the_input_of_the_last_linear():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(4, 3, 2, 2)
    assert torch.allclose(models.embed(m, x), torch.relu(m[1](x.flatten(1))))


def test_model_without_linear_needs_an_embed_method():
    with pytest.raises(TodalError, match="give the model an embed\\(x\\) method"):
        models.embed(nn.Sequential(nn.Conv2d(1, 2, 1)), torch.randn(1, 1, 2, 2))


def test_second_head_shares_the_trunk():
    m = models.get("small_cnn", in_channels=1, num_classes=3, second_head=True).eval()
    x = torch.randn(2, 1, 8, 8)
    main, second = m.heads(x)
    assert torch.allclose(main, m(x)) and not torch.allclose(main, second)


def test_heads_without_second_head_is_a_clear_error():
    with pytest.raises(TodalError, match="build it with second_head=True"):
        models.get("small_cnn", in_channels=1, num_classes=3).heads(torch.randn(2, 1, 8, 8))


def test_with_dropout_inserts_dropout_before_the_head_without_mutating():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
    mc = models.with_dropout(plain, 0.5)
    assert not any(isinstance(mod, nn.Dropout) for mod in plain.modules())
    x = torch.randn(8, 4)
    with models.dropout_active(mc):
        assert not torch.allclose(mc(x), mc(x))
    mc.eval()
    assert torch.allclose(mc(x), plain(x))


def test_dropout_active_keeps_batchnorm_in_eval():
    m = models.with_dropout(models.get("small_cnn", in_channels=1, num_classes=3), 0.3)
    with models.dropout_active(m):
        assert not m.stage1[1].training and m.drop.training
    assert m.training  # restored


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(TodalError, match="Unknown model 'vgg'. Valid: resnet18, small_cnn"):
        models.get("vgg", in_channels=1, num_classes=3)


def test_state_dict_round_trip(tmp_path):
    a = models.get("resnet18", in_channels=3, num_classes=4).eval()
    torch.save(a.state_dict(), tmp_path / "m.pt")
    b = models.get("resnet18", in_channels=3, num_classes=4).eval()
    b.load_state_dict(torch.load(tmp_path / "m.pt"))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a(x), b(x))


def test_same_seed_same_initial_weights():
    torch.manual_seed(0)
    a = models.get("small_cnn", in_channels=1, num_classes=3)
    torch.manual_seed(0)
    b = models.get("small_cnn", in_channels=1, num_classes=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_feature_layers_exist_and_give_feature_maps(name):
    m = models.get(name, in_channels=3, num_classes=3)
    mods = dict(m.named_modules())
    seen = []
    hooks = [mods[n].register_forward_hook(lambda mod, i, o: seen.append(o.dim())) for n in m.feature_layers]
    m(torch.randn(2, 3, 16, 16))
    for h in hooks:
        h.remove()
    assert seen == [4] * len(m.feature_layers)


def test_small_cnn_group_norm_has_no_batch_statistics():
    """norm='group': a sample's train-mode output does not depend on the rest of its batch (BatchNorm's does)."""
    torch.manual_seed(0)
    x = torch.randn(6, 1, 12, 12)
    for norm, independent in (("group", True), ("batch", False)):
        model = models.get("small_cnn", in_channels=1, num_classes=3, width=0.25, norm=norm).train()
        alone, together = model(x[:2]), model(x)[:2]
        assert torch.allclose(alone, together, atol=1e-5) == independent
    with pytest.raises(TodalError, match="norm"):
        models.get("small_cnn", in_channels=1, num_classes=3, norm="layer")


def test_resnet18_uses_torchvision_module_names():
    """One BasicBlock serves ResNet-18 and DRN-D-22; its names are torchvision's, so checkpoints map by name."""
    keys = set(models.get("resnet18", in_channels=3, num_classes=10).state_dict())
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer1.1.bn2.running_mean",
                "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "layer4.1.conv2.weight"):
        assert key in keys, key
    assert not any("shortcut" in k for k in keys)
    assert "layer1.0.downsample.0.weight" not in keys  # identity shortcut where shapes agree


def test_a_taken_model_name_is_refused_unless_replaced(monkeypatch):
    monkeypatch.setattr(models.REGISTRY, "_items", dict(models.REGISTRY._items))

    def tiny(in_channels, num_classes):
        return torch.nn.Linear(in_channels, num_classes)

    with pytest.raises(TodalError, match=r"The model name 'small_cnn' is taken by todal.models.small_cnn"):
        models.register("small_cnn")(tiny)
    models.register("Small-CNN", replace=True)(tiny)
    assert isinstance(models.get("small_cnn", in_channels=3, num_classes=2), torch.nn.Linear)


def test_model_names_are_normalized_when_registered_and_looked_up(monkeypatch):
    monkeypatch.setattr(models.REGISTRY, "_items", dict(models.REGISTRY._items))
    models.register("My-Net")(lambda in_channels, num_classes: torch.nn.Linear(in_channels, num_classes))
    assert "my_net" in models.names()
    assert isinstance(models.get("MY_NET", in_channels=2, num_classes=2), torch.nn.Linear)
