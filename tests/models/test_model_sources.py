"""Model sources: built-in names, MODULE:FUNCTION factories, hf:DIR (a tiny transformers model saved here), weights
files, frozen backbones with their embedding cache, and a one-line error for each bad input."""

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from todal import ActiveLoop
from todal.data import ArrayDataset
from todal.errors import TodalError
from todal.models import ModelSource
from todal.models.frozen import Embedded, FrozenHead

transformers = pytest.importorskip("transformers")


def bars(n: int, seed: int, size: int = 12) -> ArrayDataset:
    """Grayscale bars: horizontal (0), vertical (1), diagonal (2)."""
    g = np.random.default_rng(seed)
    x = g.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
    y = np.arange(n) % 3
    k = g.integers(2, size - 2, n)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, k[i] - 1:k[i] + 1, :] = 255
        elif y[i] == 1:
            x[i, 0, :, k[i] - 1:k[i] + 1] = 255
        else:
            x[i, 0, np.arange(size), np.arange(size)] = 255
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y), num_classes=3, mean=0.2, std=0.3, name="bars")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random transformers ResNet saved with save_pretrained; its processor config says side 16."""
    from tinydata import save_tiny_hf_resnet

    return save_tiny_hf_resnet(tmp_path_factory.mktemp("hf"), {"shortest_edge": 16})


def loop(tmp_path, model, **kw):
    kw = {"strategy": "cod", "semi_supervised": False, "initial": 15, "budget": 9, "cycles": 2, "epochs": 2,
          "train": {"batch_size": 8, "lr": 0.05}, **kw}
    return ActiveLoop(model, bars(90, 0), bars(30, 1), workdir=tmp_path, **kw)


# --- the syntax -------------------------------------------------------------------------------------------
def test_a_factory_module_function_is_called_with_the_classes_and_channels(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        from torch import nn
        calls = []
        def build(num_classes, in_channels):
            calls.append((num_classes, in_channels))
            return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = loop(tmp_path / "run", "mynets:build")
    assert len(run.run()) == 2
    import mynets

    assert mynets.calls and set(mynets.calls) == {(3, 1)}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == "mynets:build"


def test_hf_input_size_and_normalization_come_from_the_processor_config(hf_dir):
    spec = ModelSource(f"hf:{hf_dir}").input_spec()
    assert (spec.size, spec.channels, spec.mean, spec.std) == (16, 3, (0.5, 0.4, 0.3), (0.25, 0.2, 0.15))
    model = ModelSource(f"hf:{hf_dir}").build(in_channels=1, num_classes=5)
    assert model.pretrained and model.input.size == 16
    out = model(torch.randn(2, 1, 12, 12))  # grayscale, other side: brought to what the backbone takes
    assert out.shape == (2, 5) and model.embed(torch.randn(2, 1, 12, 12)).shape == (2, 16)


def test_hf_model_runs_an_active_loop_and_fine_tunes_its_backbone_at_a_tenth_of_the_lr(tmp_path, hf_dir):
    from todal.train import TrainConfig, param_groups

    model = ModelSource(f"hf:{hf_dir}").build(in_channels=1, num_classes=3)
    groups = param_groups(model, [], TrainConfig(lr=0.05))
    assert groups[0]["lr"] == pytest.approx(0.005) and "lr" not in groups[1]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.head.parameters()}
    assert param_groups(model, [], TrainConfig(lr=0.05, backbone_lr=0.02))[0]["lr"] == 0.02
    records = loop(tmp_path, f"hf:{hf_dir}").run()
    assert len(records) == 2 and len(records[0]["selected"]) == 9


def test_weights_load_into_any_model_and_a_mismatch_names_the_keys(tmp_path):
    torch.manual_seed(3)
    trained = ModelSource("small_cnn", {"width": 0.25}).build(in_channels=1, num_classes=3)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    again = ModelSource("small_cnn", {"width": 0.25}, weights=str(tmp_path / "w.pt")).build(in_channels=1,
                                                                                            num_classes=3)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), again.state_dict().values()))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "w.safetensors"))
    again = ModelSource("small_cnn", {"width": 0.25}, weights=str(tmp_path / "w.safetensors")).build(
        in_channels=1, num_classes=3)
    assert torch.equal(trained.head.weight, again.head.weight)
    with pytest.raises(TodalError, match=r"do not fit the model \(other shapes .*\(3, 32\) vs \(3, 64\).*\); save "
                                         r"them from this model"):
        ModelSource("small_cnn", {"width": 0.5}, weights=str(tmp_path / "w.pt")).build(in_channels=1, num_classes=3)
    torch.save({"0.weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(TodalError, match=r"missing head.weight, head.bias, stage1.0.weight \(\+\d+ more\); unexpected 0.weight"):
        ModelSource("small_cnn", weights=str(tmp_path / "bad.pt")).build(in_channels=1, num_classes=3)


@pytest.mark.parametrize("spec, text", [
    ("vgg", r"Unknown model 'vgg'. Valid: resnet18, small_cnn.*; or MODULE:FUNCTION \(your factory\), hf:ID_OR_DIR"),
    ("not a/module:build", r"is not MODULE:FUNCTION \(e.g. mypkg.nets:build\)"),
    ("no_such_module_xyz:build", r"module 'no_such_module_xyz' does not import \(ModuleNotFoundError"),
    ("json:nothing_here", r"json has no 'nothing_here'; name a function that returns an nn.Module"),
    ("json:dumps", r"was called as dumps\(num_classes=3, in_channels=1\) and failed"),
    ("hf:", r"names no model after 'hf:'"),
])
def test_a_bad_model_spec_is_one_line(tmp_path, spec, text):
    with pytest.raises(TodalError, match=text):
        loop(tmp_path, spec).run()
    assert not (tmp_path / "config.json").exists()


def test_a_factory_that_returns_no_module_or_a_model_that_returns_no_logits_is_refused(tmp_path, monkeypatch):
    (tmp_path / "badnets.py").write_text(textwrap.dedent("""
        from torch import nn
        def nothing(num_classes, in_channels):
            return "a model"
        def maps(num_classes, in_channels):
            return nn.Conv2d(in_channels, num_classes, 1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TodalError, match=r"'badnets:nothing' returned str, not an nn.Module"):
        loop(tmp_path / "a", "badnets:nothing").run()
    with pytest.raises(TodalError, match=r"output is \[2, 3, 12, 12\], not \[B, C\] logits"):
        loop(tmp_path / "b", "badnets:maps").run()
    with pytest.raises(TodalError, match="Weights file .*nope.pt does not exist"):
        ModelSource("small_cnn", weights=str(tmp_path / "nope.pt"))


def test_a_zoo_that_does_not_import_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_torchvision(name, *a, **k):
        if name.startswith("torchvision") or name.startswith("timm"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    for spec in ("torchvision:resnet50", "timm:convnext_tiny"):
        with pytest.raises(TodalError, match=r"need (torchvision.models|timm), which does not import here"):
            ModelSource(spec).build(in_channels=3, num_classes=2)


def test_timm_and_torchvision_sources_take_the_zoos_input_and_replace_the_classifier(monkeypatch):
    """The glue, with stand-in zoos (the real ones do not import against this machine's torch)."""
    import sys
    import types

    class Net(nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.body, self.fc = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), None
            self.fc = nn.Linear(6, classes) if classes else nn.Identity()
            self.pretrained_cfg = {"input_size": (3, 20, 20), "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.5)}

        def forward(self, x):
            return self.fc(self.body(x))

    timm = types.ModuleType("timm")
    timm.create_model = lambda name, pretrained, num_classes: Net(num_classes)
    monkeypatch.setitem(sys.modules, "timm", timm)
    model = ModelSource("timm:tiny").build(in_channels=1, num_classes=4)
    assert model.input.size == 20 and model.input.mean == (0.1, 0.2, 0.3) and model(torch.rand(2, 1, 9, 9)).shape == (2, 4)

    class Transforms:
        crop_size, mean, std = [24], [0.4, 0.4, 0.4], [0.2, 0.2, 0.2]

    class Weights:
        DEFAULT = types.SimpleNamespace(transforms=lambda: Transforms())

    tv = types.ModuleType("torchvision.models")
    tv.get_model_weights = lambda name: Weights
    tv.get_model = lambda name, weights: Net(1000)
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", tv)
    model = ModelSource("torchvision:tiny").build(in_channels=3, num_classes=2)
    assert model.input.size == 24 and isinstance(model.backbone.fc, nn.Identity) and model.head.out_features == 2


# --- frozen backbones -----------------------------------------------------------------------------------
def test_a_frozen_backbone_embeds_once_and_trains_a_head(tmp_path, hf_dir):
    run = loop(tmp_path, ModelSource(f"hf:{hf_dir}", frozen=True), semi_supervised=True)
    records = run.run()
    assert len(records) == 2
    files = sorted(p.name for p in (tmp_path / "embeddings").glob("*.npy"))
    assert len(files) == 2 and files[0].endswith("-test.npy") and files[1].endswith("-train.npy")
    train, test = run.data
    assert isinstance(train, Embedded) and train.features.shape == (90, 16)
    head = run.model()
    assert isinstance(head, FrozenHead) and head.head.in_features == 16
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == f"hf:{hf_dir}" and config["model_options"] == {"frozen": True}


def test_the_frozen_cache_is_reused_and_rebuilt_when_the_weights_change(tmp_path, hf_dir):
    first = loop(tmp_path / "a", ModelSource(f"hf:{hf_dir}", frozen=True))
    first.run()
    path = next((tmp_path / "a" / "embeddings").glob("*-train.npy"))
    features = np.load(path).copy()
    stamp = path.stat().st_mtime_ns
    again = loop(tmp_path / "a", ModelSource(f"hf:{hf_dir}", frozen=True))
    again.run()  # the same backbone: the same file, not recomputed
    assert path.stat().st_mtime_ns == stamp and np.array_equal(np.asarray(again.data[0].features), features)
    # other weights: another cache, other features
    torch.manual_seed(7)
    other = ModelSource(f"hf:{hf_dir}").build(in_channels=1, num_classes=3)
    torch.save({k: torch.randn_like(v) if v.is_floating_point() else v for k, v in other.backbone.state_dict().items()},
               tmp_path / "other.pt")
    changed = loop(tmp_path / "b", ModelSource(f"hf:{hf_dir}", weights=str(tmp_path / "other.pt"), frozen=True))
    changed.run()
    new = next((tmp_path / "b" / "embeddings").glob("*-train.npy"))
    assert new.name != path.name and not np.allclose(np.load(new), features)


@pytest.mark.parametrize("strategy", ["random", "entropy", "margin", "least_confidence", "cod", "emaod", "coreset",
                                      "mc_dropout", "bald", "batchbald", "ll4al", "vaal", "sraal", "ta_vaal",
                                      "uncertaingcn", "coregcn", "badge", "qbc"])
def test_every_strategy_works_on_a_frozen_backbone(tmp_path, strategy):
    run = loop(tmp_path, ModelSource("small_cnn", {"width": 0.25}, frozen=True), strategy=strategy,
               semi_supervised=strategy == "cod")
    records = run.run()
    picked = records[0]["selected"]
    assert len(picked) == len(set(picked)) == 9


def test_the_tod_loss_on_a_frozen_backbone_perturbs_the_features_with_dropout():
    head = FrozenHead(16, 3)
    x = torch.randn(4, 16)
    head.train()
    assert not torch.equal(head(x), head(x))  # student and teacher each draw their own mask
    head.eval()
    assert torch.equal(head(x), head(x)) and torch.equal(head.embed(x), x)


def test_embedding_a_pool_builds_no_autograd_graph(tmp_path):
    """The frozen cache's pass runs without autograd: no graph kept over a pool's worth of activations."""
    from todal.models.frozen import embed_dataset

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc, self.grad = nn.Conv2d(1, 4, 3), nn.Linear(4, 2), []

        def embed(self, x):
            self.grad.append(torch.is_grad_enabled())
            return self.body(x).mean((2, 3))

        def forward(self, x):
            return self.fc(self.embed(x))

    probe = Probe()
    feats = embed_dataset(probe, bars(10, 0), tmp_path / "e.npy", batch_size=4, device=torch.device("cpu"))
    assert feats.shape == (10, 4) and probe.grad[1:] == [False] * 3  # [0]: probe_dim, already under no_grad
