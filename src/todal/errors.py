"""One error type for every bad input, with one message template (STYLE principle 7)."""

from __future__ import annotations


class TodalError(ValueError):
    """Bad input: the message says what was expected, what was received, and how to fix it."""


def param_error(name: str, owner: str, expected: str, got: object, fix: str | None = None) -> TodalError:
    """The 'budget' parameter of ActiveLoop must be an int in [1, inf) ... Got 0."""
    msg = f"The {name!r} parameter of {owner} must be {expected}. Got {got!r}."
    if fix:
        msg += f" {fix}"
    return TodalError(msg)


def check_choice(name: str, owner: str, value: str, choices, fix: str | None = None) -> str:
    """Raise a TodalError naming the valid choices when `value` is not one of them."""
    choices = list(choices)
    if value not in choices:
        raise param_error(name, owner, "one of " + ", ".join(map(str, choices)), value, fix)
    return value
