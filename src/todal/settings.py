"""Settings dataclasses whose fields declare their own rule and help, so each setting has one home.

    @dataclass
    class TrainConfig:
        epochs: int = setting(200, Int(lo=1), "training epochs per cycle")

`check(obj)` validates every field by its rule (one error template, `todal.errors`); `add_flags` derives
command-line flags (`--epochs`, `--lr-drop-at`, `--compile/--no-compile`) and `parse_setting` the bench's
`--set KEY=VALUE` values from the same declarations, so the CLI, the bench and Python check a value alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from .errors import Bool, Choice, Int, Real, Rule, TodalError, param_error


def setting(default, rule: Rule, help: str):
    """A dataclass field with its rule (`todal.errors.Int`, `Real`, `Bool`, `Choice`) and a one-line help."""
    return dataclasses.field(default=default, metadata={"rule": rule, "help": help})


def fields_of(cls) -> list[dataclasses.Field]:
    """The declared settings of a settings dataclass (fields with a rule), in declaration order."""
    return [f for f in dataclasses.fields(cls) if "rule" in f.metadata]


def check(obj, owner: str | None = None) -> None:
    """Validate every setting of `obj` by its rule and store the checked values (ints as int, reals as float)."""
    owner = owner or type(obj).__name__
    for f in fields_of(obj):
        object.__setattr__(obj, f.name, f.metadata["rule"](f.name, owner, getattr(obj, f.name)))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls, title: str, *, defaults: dict | None = None, skip=()) -> None:
    """One flag per setting of `cls` under `title`, defaulting to None (unset: the preset's or the class's
    value). `defaults` names the value the help shows where a preset sets one."""
    group = parser.add_argument_group(title)
    for f in fields_of(cls):
        if f.name in skip:
            continue
        rule, shown = f.metadata["rule"], (defaults or {}).get(f.name, f.default)
        text = f"{f.metadata['help']} (default {shown})"
        if isinstance(rule, Bool):
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif isinstance(rule, Choice):
            group.add_argument(_flag(f.name), choices=[c for c in rule.choices], default=None, help=text)
        else:
            kind = int if isinstance(rule, Int) else float
            group.add_argument(_flag(f.name), type=kind, default=None, metavar=f.name.upper(), help=text)


def given(args: argparse.Namespace, cls) -> dict:
    """The settings of `cls` given on the command line (flags left unset are not included)."""
    return {f.name: getattr(args, f.name) for f in fields_of(cls) if getattr(args, f.name, None) is not None}


def parse_setting(cls, key: str, text: str, owner: str):
    """`--set KEY=VALUE` for a setting of `cls`: JSON where it parses (else the bare string), checked by its rule."""
    rules = {f.name: f.metadata["rule"] for f in fields_of(cls)}
    if key not in rules:
        raise param_error(key, owner, "one of " + ", ".join(rules), text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return rules[key](key, owner, value)


def to_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def from_dict(cls, values: dict | None, owner: str):
    """`cls(**values)` with unknown keys refused in one line, naming the valid ones."""
    values = dict(values or {})
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise TodalError(f"Unknown {owner} setting {unknown[0]!r}; valid: {', '.join(valid)}.")
    return cls(**values)


__all__ = ["Bool", "Choice", "Int", "Real", "add_flags", "check", "fields_of", "from_dict", "given",
           "parse_setting", "setting", "to_dict"]
