"""Pretrained backbones from model zoos, each with a new linear head for this task's classes.

    hf:ID_OR_DIR         a Hugging Face `transformers` image model (ResNet, ConvNeXt, ViT, DINOv2, ...):
                         `AutoModel.from_pretrained`, features = its pooled output
    torchvision:NAME     `torchvision.models.get_model(NAME, weights="DEFAULT")`, its classifier removed
    timm:NAME            `timm.create_model(NAME, pretrained=True, num_classes=0)`

Each comes with the input its weights expect (`InputSpec`: side, channels, normalization), read from the
model's own configuration: the image processor's `preprocessor_config.json` for `hf:`, the weights'
transforms for torchvision, `pretrained_cfg` for timm. The zoos are optional imports (`pip install
'todal[hf]'`); nothing here imports them until such a model is asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TodalError
from . import Classifier

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """The input a model's weights were trained on: `size` x `size` pixels, `channels` (1 or 3), normalized
    `(x / 255 - mean) / std` per channel."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"size": self.size, "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}


class Pretrained(Classifier):
    """A pretrained `backbone` (images -> features `[B, D]`) and a new linear `head` of `num_classes` outputs.

    Inputs are brought to what the backbone takes: grayscale repeated to 3 channels, resized to
    `input.size` when they differ (normalization stays the dataset's: a project normalizes with the
    model's own mean and std, `todal init` says so). `pretrained = True` gives the backbone its own, lower
    learning rate when fine-tuning (`TrainConfig.backbone_lr`)."""

    pretrained = True

    def __init__(self, backbone: nn.Module, features: Callable[[Tensor], Tensor], spec: InputSpec, num_classes: int,
                 *, second_head: bool = False, dropout: float = 0.0):
        with torch.no_grad():
            was = backbone.training
            backbone.eval()  # one blank image through BatchNorm: statistics of a batch of one do not exist
            dim = features(torch.zeros(1, spec.channels, spec.size, spec.size, dtype=torch.float32)).shape[1]
            backbone.train(was)
        super().__init__(int(dim), num_classes, second_head=second_head, dropout=dropout)
        self.backbone, self._features, self.input = backbone, features, spec

    def adapt(self, x: Tensor) -> Tensor:
        """`[B, C, H, W]` as the backbone takes it: its channels and side."""
        if x.shape[1] == 1 and self.input.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.input.size, self.input.size):
            x = F.interpolate(x.float(), size=(self.input.size, self.input.size), mode="bilinear", align_corners=False)
        return x

    def trunk(self, x: Tensor) -> Tensor:
        return self._features(self.adapt(x))


# --- Hugging Face transformers ------------------------------------------------------------------------
def _import(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as e:  # ImportError, or a zoo that fails on import against this torch
        raise TodalError(f"Model sources '{extra}:...' need {module}, which does not import here ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120] if str(e) else ''}); install it (pip install "
                         f"'todal[{extra}]' for hf) or choose another model.") from None


def _hf_file(ref: str, name: str) -> Path | None:
    """A file of a local model folder, or of a hub model (downloaded to the hub's cache); None when it has none."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return local / name if (local / name).is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(ref, name))
    except Exception:  # noqa: BLE001 - no such file in the repo, or no network: the caller falls back
        return None


def hf_input_spec(ref: str, channels: int | None = None) -> InputSpec:
    """The input of a `transformers` model: side and normalization from its `preprocessor_config.json`
    (`size` as height/width, shortest_edge or an int; `crop_size` where it crops), channels from its config."""
    path = _hf_file(ref, "preprocessor_config.json")
    cfg = json.loads(path.read_text()) if path else {}
    size = cfg.get("crop_size") if cfg.get("do_center_crop") and cfg.get("crop_size") else cfg.get("size", 224)
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or size.get("width") or 224
    if channels is None:
        conf = _hf_file(ref, "config.json")
        channels = int(json.loads(conf.read_text()).get("num_channels", 3)) if conf else 3
    if cfg.get("do_normalize", True):
        mean = tuple(float(v) for v in cfg.get("image_mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in cfg.get("image_std", IMAGENET_STD))
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    return InputSpec(int(size), int(channels), mean[:channels] if len(mean) >= channels else mean * channels,
                     std[:channels] if len(std) >= channels else std * channels)


def _pooled(out) -> Tensor:
    """`[B, D]` features of a `transformers` output: the pooled output, else the CLS token or the spatial mean."""
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)
    hidden = out.last_hidden_state
    return hidden[:, 0] if hidden.dim() == 3 else hidden.mean(dim=(2, 3))


def huggingface(ref: str, num_classes: int, **options) -> Pretrained:
    """`hf:ID_OR_DIR`: the model's weights (`AutoModel.from_pretrained`) and a new head."""
    transformers = _import("transformers", "hf")
    spec = hf_input_spec(ref)
    try:
        backbone = transformers.AutoModel.from_pretrained(ref)
    except Exception as e:  # noqa: BLE001 - a missing folder, an unknown id, no network: one line
        raise TodalError(f"hf:{ref} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:160]}); pass a "
                         "folder written by save_pretrained, or a hub id this machine can download.") from None

    def features(x: Tensor) -> Tensor:
        return _pooled(backbone(pixel_values=x))

    return Pretrained(backbone, features, spec, num_classes, **options)


# --- torchvision and timm ------------------------------------------------------------------------------
def _strip_head(model: nn.Module) -> nn.Module:
    """The model with its final linear classifier replaced by the identity (its output: the features)."""
    from . import head_of

    head = head_of(model)
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is head:
                setattr(parent, name, nn.Identity())
                return model
    raise TodalError(f"Could not find the classifier of {type(model).__name__} to replace.")


def torchvision_model(name: str, num_classes: int, **options) -> Pretrained:
    """`torchvision:NAME`: torchvision's model with its default (ImageNet) weights and a new head."""
    models = _import("torchvision.models", "torchvision")
    try:
        weights = models.get_model_weights(name).DEFAULT
        model = models.get_model(name, weights=weights)
    except Exception as e:  # noqa: BLE001 - an unknown name, no network
        raise TodalError(f"torchvision:{name} could not be built ({type(e).__name__}: {str(e).splitlines()[0][:160]});"
                         " see torchvision.models.list_models() for the names.") from None
    t = weights.transforms()
    size = getattr(t, "crop_size", [224])
    spec = InputSpec(int(size[0] if isinstance(size, (list, tuple)) else size), 3, tuple(t.mean), tuple(t.std))
    backbone = _strip_head(model)
    return Pretrained(backbone, lambda x: backbone(x).flatten(1), spec, num_classes, **options)


def timm_model(name: str, num_classes: int, **options) -> Pretrained:
    """`timm:NAME`: timm's model with its pretrained weights, without its classifier, and a new head."""
    timm = _import("timm", "timm")
    try:
        backbone = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as e:  # noqa: BLE001 - an unknown name, no network
        raise TodalError(f"timm:{name} could not be built ({type(e).__name__}: {str(e).splitlines()[0][:160]}); see "
                         "timm.list_models() for the names.") from None
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    shape = cfg.get("input_size", (3, 224, 224))
    spec = InputSpec(int(shape[-1]), int(shape[0]), tuple(cfg.get("mean", IMAGENET_MEAN)),
                     tuple(cfg.get("std", IMAGENET_STD)))
    return Pretrained(backbone, lambda x: backbone(x).flatten(1), spec, num_classes, **options)


ZOOS = {"hf": huggingface, "torchvision": torchvision_model, "timm": timm_model}


def zoo_input_spec(kind: str, ref: str) -> InputSpec:
    """The input a zoo model expects, without building it where the configuration says (hf)."""
    if kind == "hf":
        return hf_input_spec(ref)
    return ZOOS[kind](ref, 2).input
