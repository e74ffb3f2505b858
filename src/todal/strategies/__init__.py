"""Strategies by name: `get(name, **options)`, `names()`, `describe()`."""

from __future__ import annotations

from ..errors import TodalError
from .base import Context, ScoreStrategy, Strategy, top_k

_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available to `get(cls.name)`."""
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str, **options) -> Strategy:
    """A fresh strategy; unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise TodalError(f"Unknown strategy {name!r}. Valid: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name](**options)


def describe() -> list[dict]:
    """Name, one-line description and reference of every strategy, in registration order."""
    return [{"name": c.name, "description": c.description, "reference": c.reference}
            for c in _REGISTRY.values()]


# Registration order is the order `todal strategies` lists them in.
from . import random, uncertainty, discrepancy  # noqa: E402,F401

__all__ = ["Context", "Strategy", "ScoreStrategy", "top_k", "register", "get", "names", "describe"]
