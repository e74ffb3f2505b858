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


def check_int(name: str, owner: str, value, *, lo: int | None = None, hi: int | None = None, optional: bool = False,
              expected: str | None = None, fix: str | None = None) -> int | None:
    """The one check of an integer parameter: an int (numpy's too, never a bool) in [lo, hi]; None when
    `optional`. Returns it as a Python int."""
    if optional and value is None:
        return None
    import numbers

    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        if expected is None:
            expected = (f"an int in [{lo}, {hi}]" if lo is not None and hi is not None else
                        f"an int >= {lo}" if lo is not None else f"an int <= {hi}" if hi is not None else "an int")
            expected += " or None" if optional else ""
        raise param_error(name, owner, expected, value, fix)
    return int(value)


def check_number(name: str, owner: str, value, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False, expected: str | None = None,
                 fix: str | None = None) -> float:
    """The one check of a real parameter: a finite number (never a bool) in the range; returns a float."""
    import math
    import numbers

    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        if expected is None:
            if lo is not None and hi is not None:
                expected = f"a float in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            elif lo is not None:
                expected = f"a float {'>' if lo_open else '>='} {lo:g}"
            else:
                expected = "a number"
        raise param_error(name, owner, expected, value, fix)
    return float(value)
