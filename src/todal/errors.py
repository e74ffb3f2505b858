"""One error type for every bad input, with one message template (STYLE principle 7)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


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
              multiple_of: int | None = None, expected: str | None = None, fix: str | None = None) -> int | None:
    """The one check of an integer parameter: an int (numpy's too, never a bool) in [lo, hi] (and a
    multiple of `multiple_of`); None when `optional`. Returns it as a Python int."""
    if optional and value is None:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    ok = ok and (multiple_of is None or value % multiple_of == 0)
    if not ok:
        if expected is None:
            expected = (f"an int in [{lo}, {hi}]" if lo is not None and hi is not None else
                        f"an int >= {lo}" if lo is not None else f"an int <= {hi}" if hi is not None else "an int")
            expected += f", a multiple of {multiple_of}" if multiple_of is not None else ""
            expected += " or None" if optional else ""
        raise param_error(name, owner, expected, value, fix)
    return int(value)


def check_number(name: str, owner: str, value, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False, optional: bool = False, expected: str | None = None,
                 fix: str | None = None) -> float | None:
    """The one check of a real parameter: a finite number (never a bool) in the range; None when
    `optional`. Returns it as a Python float."""
    if optional and value is None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        if expected is None:
            if lo is not None and hi is not None:
                expected = f"a float in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            elif lo is not None:
                expected = f"a float {'>' if lo_open else '>='} {lo:g}"
            elif hi is not None:
                expected = f"a float {'<' if hi_open else '<='} {hi:g}"
            else:
                expected = "a number"
            expected += " or None" if optional else ""
        raise param_error(name, owner, expected, value, fix)
    return float(value)


def check_bool(name: str, owner: str, value, *, optional: bool = False, expected: str | None = None,
               fix: str | None = None) -> bool | None:
    """True or False (numpy's bool too); None when `optional`."""
    if optional and value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise param_error(name, owner, expected or ("true, false or None" if optional else "true or false"), value, fix)


# ---- declarative form: a table of rules, checked in one call -------------------------------------


@dataclass(frozen=True)
class Int:
    """An int parameter: `Int(lo=1)`, `Int(lo=1, optional=True, expected="an int >= 1 or None (all)")`."""

    lo: int | None = None
    hi: int | None = None
    optional: bool = False
    multiple_of: int | None = None
    expected: str | None = None
    fix: str | None = None

    def __call__(self, name: str, owner: str, value) -> int | None:
        return check_int(name, owner, value, **vars(self))


@dataclass(frozen=True)
class Real:
    """A real parameter: `Real(lo=0, lo_open=True)` is "a float > 0"."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False
    expected: str | None = None
    fix: str | None = None

    def __call__(self, name: str, owner: str, value) -> float | None:
        return check_number(name, owner, value, **vars(self))


@dataclass(frozen=True)
class Bool:
    optional: bool = False
    expected: str | None = None
    fix: str | None = None

    def __call__(self, name: str, owner: str, value) -> bool | None:
        return check_bool(name, owner, value, **vars(self))


@dataclass(frozen=True)
class Choice:
    choices: tuple
    fix: str | None = None

    def __call__(self, name: str, owner: str, value):
        return check_choice(name, owner, value, self.choices, self.fix)


Rule = Int | Real | Bool | Choice


def validate(owner: str, rules: Mapping[str, Rule], /, **values) -> dict:
    """Check each value by the rule of its name; the checked values (ints as int, reals as float).

        _RULES = {"passes": Int(lo=2, fix="The default is 20."), "p": Real(lo=0, hi=1, hi_open=True)}
        vars(self).update(validate("strategy 'bald'", _RULES, passes=passes, p=p))
    """
    return {name: rules[name](name, owner, value) for name, value in values.items()}
