"""The one declarative validation (todal.errors): rules, their messages, and every table that uses them."""

import numpy as np
import pytest

from todal.errors import Bool, Choice, Int, Real, TodalError, validate
from todal.presets import PAPER, PRESETS
from todal.train import TrainConfig


def test_rules_convert_and_accept_numpy_scalars():
    rules = {"n": Int(lo=1), "x": Real(lo=0, lo_open=True), "flag": Bool(), "mode": Choice(("a", "b"))}
    out = validate("f", rules, n=np.int64(3), x=np.float32(0.5), flag=np.bool_(True), mode="b")
    assert out == {"n": 3, "x": 0.5, "flag": True, "mode": "b"}
    assert type(out["n"]) is int and type(out["x"]) is float and type(out["flag"]) is bool


@pytest.mark.parametrize("rule, value, message", [
    (Int(lo=1), 0, "The 'v' parameter of f must be an int >= 1. Got 0."),
    (Int(lo=1), True, "must be an int >= 1. Got True."),
    (Int(lo=1), 2.0, "must be an int >= 1. Got 2.0."),
    (Int(lo=0, hi=4), 5, "must be an int in [0, 4]. Got 5."),
    (Int(lo=16, multiple_of=16, optional=True), 24, "must be an int >= 16, a multiple of 16 or None. Got 24."),
    (Real(lo=0, lo_open=True), 0, "must be a float > 0. Got 0."),
    (Real(lo=0, hi=1, hi_open=True), 1, "must be a float in [0, 1). Got 1."),
    (Real(lo=0), float("nan"), "must be a float >= 0. Got nan."),
    (Real(), "3", "must be a number. Got '3'."),
    (Bool(), 1, "must be true or false. Got 1."),
    (Choice(("sgd", "adam")), "SGD", "must be one of sgd, adam. Got 'SGD'."),
])
def test_a_broken_rule_is_one_line_naming_the_parameter(rule, value, message):
    with pytest.raises(TodalError) as err:
        validate("f", {"v": rule}, v=value)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_optional_takes_none_and_fix_is_appended():
    assert validate("f", {"v": Real(lo=0, optional=True)}, v=None) == {"v": None}
    with pytest.raises(TodalError, match=r"Got 1\. The default is 20\.$"):
        validate("f", {"v": Int(lo=2, fix="The default is 20.")}, v=1)


def _tables():
    from todal import loop, settings
    from todal.data import scenes
    from todal.flavor import Flavor
    from todal.project import core
    from todal.strategies import adversarial, graph, learning_loss

    def declared(cls):
        return {f.name: f.metadata["rule"] for f in settings.fields_of(cls)}

    return {"TrainConfig": declared(TrainConfig), "Flavor": declared(Flavor), "ActiveLoop": loop._LOOP_RULES, "gcn": graph._GCN_RULES,
            "vaal": adversarial._ADVERSARIAL_RULES, "ll4al": learning_loss._LL4AL_RULES,
            "scenes": scenes._SCENE_RULES, "todal init": core._INIT_RULES}


@pytest.mark.parametrize("table", list(_tables()))
def test_every_rule_table_refuses_a_bool_and_a_string(table):
    """Each table's rules are complete: a bool and a string never pass as a number."""
    for name, rule in _tables()[table].items():
        for bad in ([True, "x"] if not isinstance(rule, (Bool, Choice)) else ["x"] if isinstance(rule, Bool) else [1]):
            with pytest.raises(TodalError, match=rf"The '{name}' parameter of f must be"):
                validate("f", {name: rule}, **{name: bad})


def test_options_are_checked_through_their_table():
    from todal.strategies import get

    with pytest.raises(TodalError, match="'image_size' parameter .* multiple of 16.*Got 24.*authors use 32"):
        get("vaal", image_size=24)
    with pytest.raises(TodalError, match="'lambda_loss' parameter of strategy 'coregcn' must be a float >= 0"):
        get("coregcn", lambda_loss=-1)
    assert get("vaal", batch_size=np.int64(8)).batch_size == 8
    with pytest.raises(TodalError, match="'lr_drop_at' parameter of TrainConfig must be a float in \\(0, 1\\]"):
        TrainConfig(lr_drop_at=0)


@pytest.mark.parametrize("name", ["paper", *PRESETS])
def test_presets_hold_training_settings_only_as_trainconfig_fields(name):
    preset = PAPER if name == "paper" else PRESETS[name]
    assert set(preset) <= {"model", "model_options", "train", "eval_batch_size"}
    TrainConfig(**preset["train"])  # the one home of training settings, its rules


def test_protocol_training_values_are_checked_by_trainconfig():
    from todal.bench.protocols import protocol

    with pytest.raises(TodalError, match="'lr' parameter of bench protocol \\(--set\\) must be a float > 0"):
        protocol("smoke", ["lr=0"])
    assert protocol("smoke", ["lr=1"]).train.lr == 1.0
    assert protocol("smoke", ["precision=fp32", "compile=false"]).train.precision == "fp32"
