"""One registry pattern for strategies, models and datasets: register, list, get (timm's `_registry`).

Names are normalized when registered and when looked up (stripped, lower case, `-` and `_` the same), so
a name registered as `My_Data` is found as `my-data`, `my_data` or `MY_DATA`. A name taken by another
object is refused unless `replace=True`; registering the same object again (a reloaded module) is not.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .errors import TodalError

T = TypeVar("T")


def _origin(obj) -> tuple[str, str]:
    return getattr(obj, "__module__", ""), getattr(obj, "__qualname__", repr(obj))


class Registry(Generic[T]):
    """Named objects of one kind (`kind`: "strategy", "model", "dataset"); `sep` is the separator names use."""

    def __init__(self, kind: str, sep: str = "_"):
        self.kind, self.sep = kind, sep
        self._items: dict[str, T] = {}

    def key(self, name: str) -> str:
        """The normalized form of `name`: stripped, lower case, `-` and `_` written as `sep`."""
        if not isinstance(name, str) or not name.strip():
            raise TodalError(f"A {self.kind} name must be a non-empty string. Got {name!r}.")
        return name.strip().lower().replace("-", self.sep).replace("_", self.sep)

    def register(self, name: str, obj: T, *, replace: bool = False) -> T:
        """Add `obj` under `name`; a name another object holds is refused unless `replace`."""
        key = self.key(name)
        if not key.replace(self.sep, "a").isalnum():
            raise TodalError(f"The {self.kind} name {name!r} has characters other than letters, digits, '-' and '_'; "
                             f"choose a name like my{self.sep}{self.kind}.")
        old = self._items.get(key)
        if old is not None and not replace and _origin(old) != _origin(obj):
            module, qualname = _origin(old)
            raise TodalError(f"The {self.kind} name {key!r} is taken by {module}.{qualname}; choose another name, or "
                             "pass replace=True to replace it on purpose.")
        self._items[key] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Remove `name` (nothing happens when it is not registered)."""
        self._items.pop(self.key(name), None)

    def get(self, name: str) -> T:
        key = self.key(name) if isinstance(name, str) and name.strip() else name
        if key not in self._items:
            raise TodalError(f"Unknown {self.kind} {name!r}. Valid: {', '.join(self._items)}.")
        return self._items[key]

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._items)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and bool(name.strip()) and self.key(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self):
        return self._items.items()
