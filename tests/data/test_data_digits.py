import numpy as np
import torch

from todal.data import load_dataset, read_digits


def test_sizes_and_metadata():
    train, test = read_digits()
    assert len(train) == 1257 and len(test) == 540
    assert train.x.shape == (1257, 1, 8, 8) and train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert train.classes == [str(i) for i in range(10)] and train.num_classes == 10
    assert (train.crop_padding, train.hflip) == (1, False)
    assert int(train.x.max()) == 255 and int(train.x.min()) == 0
    assert test.mean == train.mean and 0.2 < train.mean[0] < 0.4


def test_pixels_are_scaled_sklearn_values():
    from sklearn.datasets import load_digits

    raw = load_digits().images
    train, test = read_digits()
    allx = torch.cat([train.x, test.x])[:, 0].numpy().astype(np.int64)
    want = np.rint(raw * 255 / 16).astype(np.int64)
    # same multiset of images: compare sorted flattened rows
    key = lambda a: sorted(map(bytes, a.reshape(len(a), -1).astype(np.uint8)))  # noqa: E731
    assert key(allx) == key(want)


def test_split_is_deterministic_and_stratified():
    a_train, a_test = read_digits()
    b_train, b_test = load_dataset("digits")
    assert torch.equal(a_train.x, b_train.x) and torch.equal(a_test.y, b_test.y)
    full = torch.bincount(torch.cat([a_train.y, a_test.y]), minlength=10).double()
    frac = torch.bincount(a_test.y, minlength=10) / full
    assert (frac - 0.3).abs().max() < 0.02
