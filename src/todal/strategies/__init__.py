"""Strategies by name: `get(name, **options)`, `names()`, `describe()`."""

from __future__ import annotations

import inspect

from ..errors import TodalError, param_error
from ..registry import Registry
from .base import Context, ScoreStrategy, Strategy, top_k

REGISTRY: Registry[type[Strategy]] = Registry("strategy", sep="_")


def register(cls: type[Strategy] | None = None, *, replace: bool = False):
    """Class decorator: make a strategy available to `get(cls.name)` (`@register`, or `@register(replace=True)`
    to knowingly take over a registered name). The name is normalized (`todal.registry`); one taken by another
    class is refused; re-registering the same class (a reloaded module) is allowed."""
    def add(cls: type[Strategy]) -> type[Strategy]:
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not name.strip():
            raise TodalError(f"{cls.__name__}.name is {name!r}; a strategy needs a name of letters, digits and _ "
                             "(e.g. name = \"my_margin\").")
        return REGISTRY.register(name, cls, replace=replace)

    return add if cls is None else add(cls)


def names() -> list[str]:
    return REGISTRY.names()


def _init_params(name: str) -> dict[str, inspect.Parameter]:
    """Keyword options of strategy `name`, following `**kwargs` up the class hierarchy."""
    out: dict[str, inspect.Parameter] = {}
    for cls in REGISTRY.get(name).__mro__:
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
    cls = REGISTRY.get(name)  # unknown names list the valid ones
    valid = options_of(name)
    for key, value in options.items():
        if key not in valid:
            raise param_error(key, f"strategy {name!r}", "a known option" + (f" ({', '.join(valid)})" if valid else ""),
                              value, "See `todal strategies` for the options.")
    return cls(**options)


def describe() -> list[dict]:
    """Name, one-line description, reference and options (with defaults) of every strategy."""
    out = []
    for name, c in REGISTRY.items():
        out.append({"name": name, "description": c.description, "reference": c.reference,
                    "options": {k: p.default for k, p in _init_params(name).items()}})
    return out


# Registration order is the order `todal strategies` lists them in.
from . import random, uncertainty, discrepancy  # noqa: E402,F401
from . import coreset, bayesian, learning_loss, adversarial, graph, committee, badge  # noqa: E402,F401
from . import batchbald  # noqa: E402,F401

__all__ = ["REGISTRY", "Context", "Strategy", "ScoreStrategy", "top_k", "register", "get", "names", "describe"]
