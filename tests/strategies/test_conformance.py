"""The check suite every registered strategy passes (STYLE principle 4), run through the public
`todal.testing.check_strategy` that users run on their own strategies, and that suite's own teeth."""

import pytest
import torch

from todal import strategies
from todal.errors import TodalError
from todal.strategies import ScoreStrategy, Strategy, register
from todal.testing import check_strategy


@pytest.mark.parametrize("name", strategies.names())
def test_every_registered_strategy_keeps_the_contract(name):
    check_strategy(name)


@pytest.mark.parametrize("name", strategies.names())
def test_has_a_description_and_reference(name):
    cls = type(strategies.get(name))
    assert cls.description and cls.reference


class Labeled(Strategy):
    name, description = "labeled_picker", "picks labeled samples"

    def _select(self, ctx, k):
        return ctx.labeled[:k]


class Unseeded(ScoreStrategy):
    name, description = "unseeded", "random scores from the global RNG"

    def score(self, ctx, candidates):
        return torch.rand(len(candidates))


class Trainer(ScoreStrategy):
    name, description = "trainer", "trains the model in place"

    def score(self, ctx, candidates):
        with torch.no_grad():
            for p in ctx.model.parameters():
                p.add_(1.0)
        return torch.arange(len(candidates), dtype=torch.float)


class Nameless(ScoreStrategy):
    description = "no name"

    def score(self, ctx, candidates):
        return torch.zeros(len(candidates))


@pytest.mark.parametrize("cls, rule", [
    (Labeled, r"broke its contract: .* and returned index \d+, which is already labeled"),  # the base class's guard
    (Unseeded, "same samples for the same seed"),
    (Trainer, "leaves the model's parameters unchanged"),
    (Nameless, "has a non-empty `name`"),
])
def test_check_strategy_catches_a_broken_strategy(cls, rule):
    with pytest.raises((AssertionError, RuntimeError), match=rule):
        check_strategy(cls)


def test_a_users_strategy_passes_and_registers(tmp_path):
    class LowMargin(ScoreStrategy):
        name, description = "test_low_margin", "smallest top-2 margin, by hand"

        def score(self, ctx, candidates):
            p = ctx.outputs(ctx.model, candidates).softmax(1).topk(2, dim=1).values
            return p[:, 1] - p[:, 0]

    check_strategy(LowMargin)
    try:
        register(LowMargin)
        assert isinstance(strategies.get("test_low_margin"), LowMargin)
        register(LowMargin)  # the same class again (a reloaded module) is fine
    finally:
        strategies.REGISTRY.unregister("test_low_margin")


def test_the_registry_refuses_empty_names_and_silent_replacements():
    with pytest.raises(TodalError, match=r"Nameless.name is ''; a strategy needs a name of letters"):
        register(Nameless)

    class Entropy2(ScoreStrategy):
        name, description = "entropy", "mine"

        def score(self, ctx, candidates):
            return torch.zeros(len(candidates))

    with pytest.raises(TodalError, match=r"The strategy name 'entropy' is taken by todal.strategies.uncertainty.Entropy"):
        register(Entropy2)
    original = strategies.REGISTRY.get("entropy")
    try:
        register(replace=True)(Entropy2)
        assert isinstance(strategies.get("entropy"), Entropy2)
    finally:
        strategies.REGISTRY.register("entropy", original, replace=True)


def test_check_strategy_wants_a_class_not_an_instance():
    with pytest.raises(TypeError, match="pass Entropy, not an instance"):
        check_strategy(strategies.get("entropy"))


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown strategy 'codd'. Valid: random, entropy"):
        strategies.get("codd")


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="'spce' parameter of strategy 'random'"):
        strategies.get("random", spce="probs")


def test_the_readme_strategy_example_runs_and_is_usable_by_name():
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"<!-- strategy-example -->\n```python\n(.*?)```", text, re.S).group(1)
    try:
        scope = {}
        exec(compile(block, "README.md", "exec"), scope)
        from tinydata import blobs, mlp
        from todal import select

        picked = select("smallest_margin", mlp(), blobs(60, 0), 5, labeled=list(range(10)))
        assert len(picked) == 5 and min(picked.tolist()) >= 10
    finally:
        strategies.REGISTRY.unregister("smallest_margin")


def test_strategy_names_are_normalized_when_looked_up():
    assert type(strategies.get("MC-Dropout")) is type(strategies.get("mc_dropout"))
    assert "mc_dropout" in strategies.REGISTRY and "Ta-Vaal" in strategies.REGISTRY
