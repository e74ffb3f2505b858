"""Features for coreset/badge/VAAL/GCN/LL4AL: the model's embed(), a layer the user names, or a guess that
says how to name the layer when it is wrong."""

import pytest
import torch
from torch import nn

from tinydata import TinyData
from todal import select
from todal.errors import TodalError
from todal.models import embed, head_of


class WithAux(nn.Module):
    """A classifier followed by an auxiliary nn.Linear that is not part of the output (a projection head)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.classifier = nn.Linear(6, 3)
        self.proj = nn.Linear(6, 5)  # registered last: a "last nn.Linear" guess takes it

    def forward(self, x):
        return self.classifier(self.body(x))


def data(n=40):
    g = torch.Generator().manual_seed(0)
    return TinyData(torch.randn(n, 4, generator=g), torch.arange(n) % 3, 3)


@pytest.mark.parametrize("strategy", ["coreset", "badge"])
def test_a_wrong_guess_says_how_to_name_the_layer_and_naming_it_works(strategy):
    model, ds = WithAux(), data()
    with pytest.raises(TodalError, match=r"\('proj', 5 outputs\) does not make its 3 outputs; set "
                                         r"model.feature_layer = '<name"):
        select(strategy, model, ds, 4, labeled=[0, 1, 2, 3, 4, 5])
    model.feature_layer = "classifier"
    picked = select(strategy, model, ds, 4, labeled=[0, 1, 2, 3, 4, 5])
    assert len(picked) == 4 and not set(picked.tolist()) & {0, 1, 2, 3, 4, 5}


def test_features_are_the_input_of_the_named_layer():
    model, x = WithAux(), data().x[:5]
    model.feature_layer = "classifier"
    assert head_of(model) is model.classifier
    assert torch.equal(embed(model, x), model.body(x))
    model.feature_layer = "nope"
    with pytest.raises(TodalError, match=r"feature_layer 'nope' is not a submodule of WithAux; its nn.Linear "
                                         r"layers: body.0, classifier, proj"):
        head_of(model)
    model.feature_layer = "body"
    with pytest.raises(TodalError, match="feature_layer 'body' is a Sequential; name the nn.Linear classifier"):
        head_of(model)
