"""Model sources: where a run's, a bench's or a project's models come from, in one syntax everywhere.

    small_cnn              a built-in name (`todal models`), with its keyword `options`
    mypkg.nets:build       your factory, called as build(num_classes=C, in_channels=K) -> nn.Module
    hf:ID_OR_DIR           a Hugging Face `transformers` image model with a new head (todal.models.pretrained)
    torchvision:NAME       a torchvision model with its default weights and a new head (where it imports)
    timm:NAME              a timm model with its pretrained weights and a new head (where it imports)
    a Python callable      returning a fresh nn.Module (ActiveLoop(lambda: MyNet()))

`weights` (a safetensors file or a saved state dict) is loaded into any of them, keys checked. `frozen`
keeps the backbone fixed: every sample is embedded once into a cache and only a head is trained
(todal.models.frozen). `build()` makes a fresh model; the caller seeds it (`todal.engine`).
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import TodalError, param_error

Spec = str | Callable[[], nn.Module]
ZOO_KINDS = ("hf", "torchvision", "timm")
FROZEN_DROPOUT = 0.2  # a frozen backbone's head: dropout on the embeddings, the TOD loss's perturbation
PRETRAINED_LR_SCALE = 0.1  # fine-tuning: the backbone's lr is this times lr unless TrainConfig.backbone_lr says


def parse(spec: str) -> tuple[str, str]:
    """`(kind, ref)` of a spec string: ("builtin", name), ("function", "module:function") or (zoo, ref)."""
    text = spec.strip()
    kind, colon, ref = text.partition(":")
    if colon and kind in ZOO_KINDS:
        if not ref.strip():
            raise TodalError(f"Model {spec!r} names no model after '{kind}:'; write e.g. {kind}:"
                             f"{'facebook/dinov2-small' if kind == 'hf' else 'resnet50'}.")
        return kind, ref.strip()
    if colon:
        module, _, fn = text.partition(":")
        if not module or not fn or not all(p.isidentifier() for p in module.split(".") + fn.split(".")):
            raise TodalError(f"Model {spec!r} is not MODULE:FUNCTION (e.g. mypkg.nets:build); a factory is named by "
                             "its importable module and its name.")
        return "function", text
    from . import REGISTRY

    if text not in REGISTRY:
        raise TodalError(f"Unknown model {spec!r}. Valid: {', '.join(REGISTRY.names())}; or MODULE:FUNCTION (your "
                         "factory), hf:ID_OR_DIR, torchvision:NAME, timm:NAME.")
    return "builtin", text


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_weights(path: str | Path) -> dict:
    """A state dict from a `.safetensors` file or a `torch.save`d state dict (weights only, never unpickled)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TodalError(f"Weights file {path} does not exist; pass --weights with a .safetensors or .pt state dict.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise TodalError("Reading .safetensors needs the safetensors package: pip install safetensors (or "
                             "'todal[hf]').") from None
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - a corrupt file: one line
            raise TodalError(f"{path} is not a readable safetensors file ({type(e).__name__}).") from None
    from ..engine import load_weights

    state = load_weights(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and not any(
            isinstance(v, torch.Tensor) for v in state.values()):
        state = state["model"]  # a todal checkpoint: its model's weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TodalError(f"{path} holds no state dict (names -> tensors); save one with "
                         "torch.save(model.state_dict(), path), or use safetensors.")
    return state


def load_into(model: nn.Module, state: dict, source: str) -> None:
    """Load `state` into `model` (or into its `backbone` when the file holds the backbone alone); a file whose keys
    or shapes do not fit is refused in one line naming them."""
    if hasattr(model, "backbone") and set(state) == set(model.backbone.state_dict()):
        model = model.backbone
    mine = model.state_dict()
    state = {k[7:] if k.startswith("module.") and k[7:] in mine else k: v for k, v in state.items()}  # DDP's prefix
    missing = [k for k in mine if k not in state]
    unexpected = [k for k in state if k not in mine]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(mine[k].shape)}" for k in mine
              if k in state and tuple(state[k].shape) != tuple(mine[k].shape)]
    if missing or unexpected or shapes:
        def some(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        parts = ([f"missing {some(missing)}"] if missing else []) + ([f"unexpected {some(unexpected)}"] if unexpected
                                                                      else []) + ([f"other shapes {some(shapes)}"]
                                                                                  if shapes else [])
        raise TodalError(f"The weights in {source} do not fit the model ({'; '.join(parts)}); save them from this "
                         "model (torch.save(model.state_dict(), path)) or build the model they came from.")
    model.load_state_dict(state)


@dataclass(frozen=True)
class ModelSource:
    """A model's origin: `spec` (see the module docstring), the builder's keyword `options` (built-in names), a
    `weights` file loaded into the built model, and `frozen`: the backbone fixed, a head trained on its
    embeddings with dropout `head_dropout` on them."""

    spec: Spec
    options: dict = field(default_factory=dict)
    weights: str | None = None
    frozen: bool = False
    head_dropout: float = FROZEN_DROPOUT  # frozen: dropout on the embeddings (the TOD loss's perturbation)

    def __post_init__(self):
        if isinstance(self.spec, nn.Module):
            name = type(self.spec).__name__
            raise TodalError(f"The model is an instance ({name}); pass a function that builds a fresh one, e.g. "
                             f"lambda: {name}(...), or a model name.")
        if isinstance(self.spec, str):
            parse(self.spec)  # an unknown name lists the valid ones, before anything runs
        elif not callable(self.spec):
            raise param_error("model", "ModelSource", "a model name (todal models), MODULE:FUNCTION, hf:ID_OR_DIR, "
                              "torchvision:NAME, timm:NAME, or a callable returning an nn.Module",
                              type(self.spec).__name__)
        if not isinstance(self.options, dict):
            raise param_error("model_options", "ModelSource", "a dict of the builder's keyword options", self.options)
        if self.options and self.kind != "builtin":
            raise TodalError("Model options apply to a model given by name; a callable or factory builds its own "
                             "model: bind the options into it (functools.partial) or pass a model name.")
        if self.weights is not None:
            path = Path(self.weights).expanduser()
            if not path.is_file():
                raise TodalError(f"Weights file {path} does not exist; pass --weights with a .safetensors or .pt "
                                 "state dict.")
            object.__setattr__(self, "weights", str(path.resolve()))
        object.__setattr__(self, "frozen", bool(self.frozen))
        from ..errors import check_number

        object.__setattr__(self, "head_dropout", check_number("head_dropout", "ModelSource", self.head_dropout, lo=0,
                                                              hi=1, hi_open=True))

    @property
    def kind(self) -> str:
        """"builtin", "function", "hf", "torchvision", "timm" or "callable"."""
        return parse(self.spec)[0] if isinstance(self.spec, str) else "callable"

    @property
    def name(self) -> str:
        """What a run records as its model: the spec, or the callable's qualified name."""
        return self.spec.strip() if isinstance(self.spec, str) else getattr(self.spec, "__qualname__", repr(self.spec))

    @property
    def pretrained(self) -> bool:
        """A zoo backbone or loaded weights: fine-tuning gives the backbone a lower learning rate."""
        return self.kind in ZOO_KINDS or self.weights is not None

    def recorded_options(self) -> dict:
        """The options a run records beside `name`: the builder's, the weights' digest, frozen."""
        out = dict(self.options)
        if self.weights is not None:
            out["weights_sha256"] = file_sha256(self.weights)
        if self.frozen:
            out["frozen"] = True
            if self.head_dropout != FROZEN_DROPOUT:
                out["head_dropout"] = self.head_dropout
        return out

    def input_spec(self):
        """The input the model's weights expect (`todal.models.pretrained.InputSpec`), or None (any)."""
        kind = self.kind
        if kind in ZOO_KINDS:
            from .pretrained import zoo_input_spec

            return zoo_input_spec(kind, parse(self.spec)[1])
        return None

    def build(self, *, in_channels: int, num_classes: int, second_head: bool = False) -> nn.Module:
        """A fresh model; `second_head`: with the official TOD code's second linear head (`model.heads(x)`)."""
        kind = self.kind
        if kind == "builtin":
            from . import get

            model = get(self.spec.strip(), in_channels=in_channels, num_classes=num_classes, second_head=second_head,
                        **self.options)
        elif kind in ZOO_KINDS:
            from .pretrained import ZOOS

            model = ZOOS[kind](parse(self.spec)[1], num_classes, second_head=second_head)
        else:
            model = self._call(in_channels, num_classes)
            if second_head and not hasattr(model, "heads"):  # the official consistency on any model
                from . import SecondHead

                model = SecondHead(model)
        if self.weights is not None:
            load_into(model, read_weights(self.weights), self.weights)
        return model

    def _call(self, in_channels: int, num_classes: int) -> nn.Module:
        if self.kind == "callable":
            model, what = self.spec(), f"The model function {self.name}"
        else:
            module_name, _, attr = self.spec.strip().partition(":")
            try:
                fn = importlib.import_module(module_name)
            except Exception as e:  # noqa: BLE001 - the user's module: whatever it raises, one line
                raise TodalError(f"Model {self.spec!r}: module {module_name!r} does not import ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:120] if str(e) else ''}); put it on PYTHONPATH or install "
                                 "it.") from None
            for part in attr.split("."):
                if not hasattr(fn, part):
                    raise TodalError(f"Model {self.spec!r}: {module_name} has no {attr!r}; name a function that "
                                     "returns an nn.Module.")
                fn = getattr(fn, part)
            if not callable(fn):
                raise TodalError(f"Model {self.spec!r}: {attr!r} is not callable; name a function that returns an "
                                 "nn.Module.")
            try:
                model = fn(num_classes=num_classes, in_channels=in_channels)
            except TypeError as e:
                raise TodalError(f"Model {self.spec!r} was called as {attr}(num_classes={num_classes}, "
                                 f"in_channels={in_channels}) and failed ({e}); give it those two keyword "
                                 "arguments.") from None
            what = f"The model factory {self.spec!r}"
        if not isinstance(model, nn.Module):
            raise TodalError(f"{what} returned {type(model).__name__}, not an nn.Module; return a fresh "
                             "torch.nn.Module.")
        return model


def model_source(model: Spec | ModelSource, options: dict | None = None) -> ModelSource:
    """`model` as a `ModelSource` (a name, spec or callable with its `options`; a source as it is)."""
    if isinstance(model, ModelSource):
        if options:
            raise TodalError("Model options go inside the ModelSource (ModelSource(spec, options)); pass them once.")
        return model
    return ModelSource(model, dict(options or {}))
