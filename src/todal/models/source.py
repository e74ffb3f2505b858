"""Model sources: where a run's, a bench's or a project's models come from, in one syntax everywhere.

    ModelSource("small_cnn", {"width": 0.5})   # a built-in name (`todal.models.names()`) and its options
    ModelSource(lambda: MyNet())                # a Python callable returning a fresh nn.Module

`build()` makes a fresh model; the caller seeds it (`todal.engine`), so the same seed gives the same
initial weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..errors import TodalError, param_error

Spec = str | Callable[[], nn.Module]


@dataclass(frozen=True)
class ModelSource:
    """A model's origin: `spec` (a built-in name, or a callable returning a fresh `nn.Module`) and the
    builder's keyword `options` (built-in names only: a callable binds its own)."""

    spec: Spec
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.spec, nn.Module):
            name = type(self.spec).__name__
            raise TodalError(f"The model is an instance ({name}); pass a function that builds a fresh one, e.g. "
                             f"lambda: {name}(...), or a model name.")
        if isinstance(self.spec, str):
            from . import REGISTRY

            REGISTRY.get(self.spec)  # an unknown name lists the valid ones, before anything runs
        elif not callable(self.spec):
            raise param_error("model", "ModelSource", "a model name (todal.models.names()) or a callable returning an "
                              "nn.Module", type(self.spec).__name__)
        elif self.options:
            raise TodalError("Model options apply to a model given by name; a callable builds its own model: bind the "
                             "options into it (functools.partial) or pass a model name.")
        if not isinstance(self.options, dict):
            raise param_error("model_options", "ModelSource", "a dict of the builder's keyword options", self.options)

    @property
    def name(self) -> str:
        """What a run records as its model: the name, or the callable's qualified name."""
        return self.spec if isinstance(self.spec, str) else getattr(self.spec, "__qualname__", repr(self.spec))

    def build(self, *, in_channels: int, num_classes: int, second_head: bool = False) -> nn.Module:
        """A fresh model; `second_head`: with the official TOD code's second linear head (`model.heads(x)`)."""
        if isinstance(self.spec, str):
            from . import get

            return get(self.spec, in_channels=in_channels, num_classes=num_classes, second_head=second_head,
                       **self.options)
        model = self.spec()
        if not isinstance(model, nn.Module):
            raise TodalError(f"The model function {self.name} returned {type(model).__name__}, not an nn.Module; "
                             "return a fresh torch.nn.Module.")
        if second_head and not hasattr(model, "heads"):  # the official consistency on any model
            from . import SecondHead

            model = SecondHead(model)
        return model


def model_source(model: Spec | ModelSource, options: dict | None = None) -> ModelSource:
    """`model` as a `ModelSource` (a name or callable with its `options`; a source as it is)."""
    if isinstance(model, ModelSource):
        if options:
            raise TodalError("Model options go inside the ModelSource (ModelSource(spec, options)); pass them once.")
        return model
    return ModelSource(model, dict(options or {}))
