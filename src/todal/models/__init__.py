"""Models by name (`get`, `names`, `register`) and the feature access strategies need (`embed`)."""

from __future__ import annotations

import abc
import contextlib
import copy
from typing import Callable

from torch import Tensor, nn

from ..errors import TodalError
from ..registry import Registry

REGISTRY: Registry[Callable[..., nn.Module]] = Registry("model", sep="_")


def register(name: str, *, replace: bool = False):
    """Decorator: make a model builder `fn(in_channels=, num_classes=, **options)` available to `get(name)`;
    a name another builder holds is refused unless `replace=True`."""

    def wrap(fn):
        return REGISTRY.register(name, fn, replace=replace)

    return wrap


def names() -> list[str]:
    return REGISTRY.names()


def get(name: str, *, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """A fresh model. Every built-in model has `embed(x)`, `head`, `feature_layers`, and options
    `second_head` (the official TOD code's extra linear head) and `dropout` (before the head)."""
    return REGISTRY.get(name)(in_channels=in_channels, num_classes=num_classes, **kwargs)


class Classifier(nn.Module, abc.ABC):
    """Trunk -> pooled features -> (dropout) -> linear head(s): what every built-in model is."""

    feature_layers: list[str] = []

    def __init__(self, embed_dim: int, num_classes: int, *, second_head: bool = False, dropout: float = 0.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes)
        self.head2 = nn.Linear(embed_dim, num_classes) if second_head else None

    @abc.abstractmethod
    def trunk(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D) pooled features."""

    def embed(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.trunk(x)))

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Main and second head on one trunk pass (the official TOD consistency loss)."""
        if self.head2 is None:
            raise TodalError(f"{type(self).__name__} has no second head; build it with second_head=True.")
        h = self.drop(self.trunk(x))
        return self.head(h), self.head2(h)


def head_of(model: nn.Module) -> nn.Linear:
    """The final linear layer (the classifier; features are its input): the submodule the model names in
    `model.feature_layer` (e.g. "backbone.fc"), else the model's `head`, else its last `nn.Linear`."""
    name = getattr(model, "feature_layer", None)
    if isinstance(name, str):
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            valid = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise TodalError(f"feature_layer {name!r} is not a submodule of {type(model).__name__}; its nn.Linear "
                             f"layers: {', '.join(valid) or 'none'}.") from None
        if not isinstance(layer, nn.Linear):
            raise TodalError(f"feature_layer {name!r} is a {type(layer).__name__}; name the nn.Linear classifier "
                             "(features are its input), or give the model an embed(x) method.")
        return layer
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TodalError(f"{type(model).__name__} has no nn.Linear layer to take features from; give the "
                         "model an embed(x) method returning (B, D) features.")
    return linears[-1]


def check_head(model: nn.Module, head: nn.Linear, out: Tensor) -> None:
    """Refuse a guessed classifier that does not make the model's output (an auxiliary nn.Linear after the
    real one), saying how to name the right layer."""
    if out.dim() == 2 and out.shape[1] != head.out_features:
        name = next((n for n, m in model.named_modules() if m is head), "?")
        raise TodalError(f"The layer taken as {type(model).__name__}'s classifier ({name!r}, {head.out_features} "
                         f"outputs) does not make its {out.shape[1]} outputs; set model.feature_layer = "
                         "'<name of the classifier nn.Linear>' or give the model an embed(x) method.")


class SecondHead(nn.Module):
    """Any classifier with the official TOD code's second head: a new `nn.Linear` beside the model's own
    classifier (`head_of`), reading the same features. `forward` is the model's; `heads(x)` returns the
    model's output and the second head's, from one pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        head = head_of(model)
        self.head2 = nn.Linear(head.in_features, head.out_features)
        object.__setattr__(self, "_head", head)  # a reference, not a second registration of the same layer

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        captured: list[Tensor] = []
        handle = self._head.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
        try:
            out = self.model(x)
        finally:
            handle.remove()
        check_head(self.model, self._head, out)
        return out, self.head2(captured[-1])

    def embed(self, x: Tensor) -> Tensor:
        return embed(self.model, x)


def embed(model: nn.Module, x: Tensor) -> Tensor:
    """Penultimate features `[B, D]`: `model.embed(x)`, else the input of the final linear layer."""
    if hasattr(model, "embed"):
        return model.embed(x)
    captured = []
    head = head_of(model)
    handle = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    try:
        out = model(x)
    finally:
        handle.remove()
    if isinstance(out, Tensor):
        check_head(model, head, out)
    return captured[0].flatten(1)


def with_dropout(model: nn.Module, p: float) -> nn.Module:
    """A copy of `model` with dropout `p` before its final linear layer (for MC-Dropout).

    Built-in models (classifiers, segmenters) get their `drop` set; any other model has its last `nn.Linear` replaced by
    `Sequential(Dropout(p), linear)`. The input model is not changed.
    """
    from .segmentation import Segmenter  # imports this module: not at the top

    out = copy.deepcopy(model)
    if isinstance(out, (Classifier, Segmenter)):
        out.drop = nn.Dropout(p)
        return out
    target = head_of(out)
    for parent in out.modules():
        for name, child in parent.named_children():
            if child is target:
                setattr(parent, name, nn.Sequential(nn.Dropout(p), target))
                return out
    raise TodalError(f"could not find the final linear layer of {type(model).__name__}")


@contextlib.contextmanager
def dropout_active(model: nn.Module):
    """Eval mode for everything (BatchNorm uses running statistics) except Dropout layers."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.train()
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


from . import resnet, small_cnn  # noqa: E402,F401  (register the built-in models)

__all__ = ["REGISTRY", "ModelSource", "model_source", "Classifier", "dropout_active", "embed", "get", "head_of", "names", "register", "with_dropout"]
from . import segmentation  # noqa: E402,F401  (register the segmentation models)
from .source import ModelSource, model_source  # noqa: E402
