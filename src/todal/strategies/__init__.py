"""Strategies by name: `get(name, **options)`, `names()`, `describe()`."""

from __future__ import annotations

import inspect

from ..errors import TodalError, param_error
from .base import Context, ScoreStrategy, Strategy, top_k

_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy] | None = None, *, replace: bool = False):
    """Class decorator: make a strategy available to `get(cls.name)` (`@register`, or `@register(replace=True)`
    to knowingly take over a registered name). A name that is empty, not an identifier-like word, or already
    taken by another class is refused; re-registering the same class (a reloaded module) is allowed."""
    def add(cls: type[Strategy]) -> type[Strategy]:
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not name or not name.replace("_", "a").isalnum() or not name.islower():
            raise TodalError(f"{cls.__name__}.name is {name!r}; a strategy needs a lower-case name of letters, digits "
                             "and _ (e.g. name = \"my_margin\").")
        old = _REGISTRY.get(name)
        same = old is not None and (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__)
        if old is not None and not same and not replace:
            raise TodalError(f"Strategy name {name!r} is taken by {old.__module__}.{old.__qualname__}; choose another "
                             "name, or @register(replace=True) to replace it on purpose.")
        _REGISTRY[name] = cls
        return cls

    return add if cls is None else add(cls)


def names() -> list[str]:
    return list(_REGISTRY)


def _init_params(name: str) -> dict[str, inspect.Parameter]:
    """Keyword options of strategy `name`, following `**kwargs` up the class hierarchy."""
    out: dict[str, inspect.Parameter] = {}
    for cls in _REGISTRY[name].__mro__:
        if "__init__" not in vars(cls) or cls is Strategy:
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        out.update({p.name: p for p in params if p.name not in out and p.name != "self" and
                    p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)})
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def options_of(name: str) -> list[str]:
    """The keyword options strategy `name` takes."""
    return list(_init_params(name))


def get(name: str, **options) -> Strategy:
    """A fresh strategy; unknown names list the valid ones, unknown options the valid options."""
    if name not in _REGISTRY:
        raise TodalError(f"Unknown strategy {name!r}. Valid: {', '.join(_REGISTRY)}.")
    valid = options_of(name)
    for key, value in options.items():
        if key not in valid:
            raise param_error(key, f"strategy {name!r}", "a known option" + (f" ({', '.join(valid)})" if valid else ""),
                              value, "See `todal strategies` for the options.")
    return _REGISTRY[name](**options)


def describe() -> list[dict]:
    """Name, one-line description, reference and options (with defaults) of every strategy."""
    out = []
    for name, c in _REGISTRY.items():
        out.append({"name": name, "description": c.description, "reference": c.reference,
                    "options": {k: p.default for k, p in _init_params(name).items()}})
    return out


# Registration order is the order `todal strategies` lists them in.
from . import random, uncertainty, discrepancy  # noqa: E402,F401
from . import coreset, bayesian, learning_loss, adversarial, graph, committee, badge  # noqa: E402,F401
from . import batchbald  # noqa: E402,F401

__all__ = ["Context", "Strategy", "ScoreStrategy", "top_k", "register", "get", "names", "describe"]
