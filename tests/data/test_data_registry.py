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
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_dataset("mine", lambda root=None, **kw: ("tr", root))
    assert load_dataset("mine", root="/r") == ("tr", "/r")
    with pytest.raises(TodalError, match="register_dataset needs"):
        register_dataset("", None)
