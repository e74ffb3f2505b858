import pytest

from todal.data import ArrayDataset, dataset_names, load_dataset, register_dataset
from todal.data import registry
from todal.errors import TodalError


def test_names():
    assert dataset_names() == ["cifar10", "cifar100", "cityscapes", "digits", "fashion-mnist",
                               "fashion-mnist-scenes", "folder", "svhn"]


def test_unknown_name_lists_valid_ones():
    with pytest.raises(TodalError, match=r"Unknown dataset 'fmnist'\. Valid: cifar10, cifar100, cityscapes, "
                                         r"digits, fashion-mnist, fashion-mnist-scenes, folder, svhn; or a path to a .npz file or an image folder\."):
        load_dataset("fmnist")


def test_name_normalization_and_kwargs():
    train, test = load_dataset("Digits", crop_padding=0)
    assert isinstance(train, ArrayDataset) and train.crop_padding == 0 and len(test) == 540


def test_register(monkeypatch):
    monkeypatch.setattr(registry.REGISTRY, "_items", dict(registry.REGISTRY._items))
    register_dataset("mine", lambda root=None, **kw: ("tr", root))
    assert load_dataset("mine", root="/r") == ("tr", "/r")
    with pytest.raises(TodalError, match="register_dataset needs a callable reader"):
        register_dataset("x", None)
    with pytest.raises(TodalError, match="A dataset name must be a non-empty string. Got ''"):
        register_dataset("", lambda root=None: None)


def test_a_name_registered_in_any_case_or_separator_is_loadable(monkeypatch):
    monkeypatch.setattr(registry.REGISTRY, "_items", dict(registry.REGISTRY._items))
    register_dataset("My_Data", lambda root=None, **kw: ("mine", root))
    assert "my-data" in dataset_names()
    for name in ("My_Data", "my-data", "MY_DATA", " my_data "):
        assert load_dataset(name)[0] == "mine"


def test_a_taken_dataset_name_is_refused_unless_replaced(monkeypatch):
    monkeypatch.setattr(registry.REGISTRY, "_items", dict(registry.REGISTRY._items))

    def other(root=None, **kw):
        return "other", None

    with pytest.raises(TodalError, match=r"The dataset name 'digits' is taken by todal.data.digits.read_digits; "
                                         r"choose another name, or pass replace=True"):
        register_dataset("Digits", other)
    register_dataset("digits", other, replace=True)
    assert load_dataset("digits")[0] == "other"
