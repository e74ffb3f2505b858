"""The dataset contract: what is required, and what each optional attribute changes."""

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from todal.data import OPTIONAL, PoolDataset, explain, read_digits
from todal.errors import TodalError


def test_a_tensor_dataset_meets_the_contract_and_has_no_optional_attributes():
    ds = TensorDataset(torch.randn(4, 2), torch.arange(4))
    assert isinstance(ds, PoolDataset) and explain(ds) == {}


def test_explain_names_what_an_array_dataset_changes():
    train, _ = read_digits()
    got = explain(train)
    assert {"batch", "num_classes", "y", "classes", "mean", "std", "name", "in_channels"} <= set(got)
    assert "normalized" in got["mean"]


def test_not_a_dataset_is_one_line():
    with pytest.raises(TodalError, match=r"int is not a dataset todal can read: it needs __len__ and __getitem__"):
        explain(3)


def test_the_readme_documents_every_optional_attribute():
    text = (Path(__file__).parents[2] / "README.md").read_text()
    table = re.search(r"<!-- dataset-contract -->(.*?)<!-- /dataset-contract -->", text, re.S).group(1)
    assert set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M)) == set(OPTIONAL)
