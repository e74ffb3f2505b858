"""todal.select: one call for every strategy, for users with their own training loop."""

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import todal
from tinydata import blobs, mlp
from todal import strategies
from todal.errors import TodalError


def setup(seed=0):
    torch.manual_seed(seed)
    data = blobs(100, seed)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(seed))
    return data, perm[:30].sort().values, mlp(), mlp()


@pytest.mark.parametrize("name", strategies.names())
@pytest.mark.parametrize("kind", ["list", "numpy", "tensor"])
def test_every_strategy_with_list_numpy_and_tensor_indices(name, kind):
    data, labeled, model, previous = setup()
    convert = {"list": lambda t: t.tolist(), "numpy": lambda t: t.numpy(), "tensor": lambda t: t}[kind]
    teacher = copy.deepcopy(model)
    picked = todal.select(name, model, data, 7, labeled=convert(labeled), previous=previous, teacher=teacher)
    assert picked.dtype == torch.long and len(picked) == 7 and len(picked.unique()) == 7
    assert not set(picked.tolist()) & set(labeled.tolist())
    again = todal.select(name, model, data, 7, labeled=labeled, previous=previous, teacher=teacher)
    assert torch.equal(picked, again)  # same seed, same picks


def test_it_equals_the_strategy_on_a_hand_built_context():
    data, labeled, model, _ = setup()
    unlabeled = torch.tensor(sorted(set(range(100)) - set(labeled.tolist())))
    probs = model(data.x[unlabeled]).softmax(1)
    want = unlabeled[(-(probs * probs.log()).sum(1)).topk(5).indices]
    assert sorted(todal.select("entropy", model, data, 5, labeled=labeled).tolist()) == sorted(want.tolist())


def test_cod_picks_the_largest_output_discrepancy_in_probability_space():
    data, labeled, model, previous = setup()  # two differently initialized models disagree by sample
    unl = torch.tensor(sorted(set(range(100)) - set(labeled.tolist())))
    scores = todal.output_discrepancy(model, previous, data, unl, space="probs")
    want = set(unl[scores.topk(6).indices].tolist())
    assert set(todal.select("cod", model, data, 6, labeled=labeled, previous=previous).tolist()) == want


@pytest.mark.parametrize("kw, message", [
    ({"labeled": [0, 0, 1]}, "'labeled' parameter of select must be distinct indices"),
    ({"labeled": [0, 500]}, r"'labeled' parameter of select must be indices in \[0, 100\)"),
    ({"labeled": [0.5, 1.0]}, "'labeled' parameter of select must be a 1-D sequence of integer indices"),
    ({"labeled": [0, 1], "unlabeled": [1, 2]}, "Sample 1 is both labeled and unlabeled"),
    ({"labeled": [0, 1], "k": 0}, "'k' parameter of select must be an int >= 1"),
    ({"labeled": [0, 1], "strategy": "cod"}, "compares the model with the previous one: pass previous="),
    ({"labeled": [0, 1], "strategy": "emaod"}, "needs the EMA teacher: pass teacher="),
    ({"labeled": [0, 1], "labels": [0]}, "select got 1 labels for 2 labeled samples"),
])
def test_bad_input_is_one_line(kw, message):
    data, _, model, _ = setup()
    kw = {"strategy": "entropy", "k": 3, **kw}
    with pytest.raises(TodalError, match=message) as e:
        todal.select(kw.pop("strategy"), model, data, kw.pop("k"), **kw)
    assert "\n" not in str(e.value)


def test_numpy_integers_and_an_instance_with_options_refused():
    data, labeled, model, _ = setup()
    assert len(todal.select("random", model, data, np.int64(4), labeled=labeled)) == 4
    with pytest.raises(TodalError, match="with a strategy instance, which has its own"):
        todal.select(strategies.get("entropy"), model, data, 3, labeled=labeled, passes=3)


def test_the_readme_example_runs():
    """README's "Bring your own training loop" block, executed as written."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"<!-- select-example -->\n```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 12
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert len(scope["picked"]) == 20 and not set(scope["picked"].tolist()) & set(scope["labeled"])
