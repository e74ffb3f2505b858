import numpy as np
import pytest
import torch

from todal.data import load_dataset, read_svhn, svhn
from todal.errors import TodalError

sio = pytest.importorskip("scipy.io")


def write_mat(path, labels, seed):
    x = np.random.default_rng(seed).integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
    sio.savemat(path, {"X": x, "y": np.asarray(labels, dtype=np.uint8).reshape(-1, 1)})
    return x


def test_upstream_layout_and_label_10(tmp_path):
    x = write_mat(tmp_path / "train_32x32.mat", [10, 1, 9, 10], 0)
    write_mat(tmp_path / "test_32x32.mat", [3, 10], 1)
    train, test = load_dataset("svhn", root=tmp_path)
    assert train.x.shape == (4, 3, 32, 32) and train.x.dtype == torch.uint8
    assert train.y.tolist() == [0, 1, 9, 0] and test.y.tolist() == [3, 0]
    # X[h, w, c, n] -> x[n, c, h, w]
    assert int(train.x[2, 1, 5, 7]) == x[5, 7, 1, 2]
    assert np.array_equal(train.x.numpy(), x.transpose(3, 2, 0, 1))
    assert train.classes == [str(i) for i in range(10)] and train.num_classes == 10
    assert (train.crop_padding, train.hflip) == (4, True) and train.mean == svhn.MEAN


def test_errors(tmp_path, isolated, monkeypatch):
    with pytest.raises(TodalError, match="SVHN not found in .*train_32x32.mat and test_32x32.mat"):
        read_svhn()
    sio.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8)})
    write_mat(tmp_path / "test_32x32.mat", [1], 0)
    with pytest.raises(TodalError, match="has no 'y' variable"):
        read_svhn(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "scipy.io", None)  # as if scipy were not installed
    with pytest.raises(TodalError, match="needs scipy: pip install scipy"):
        read_svhn(tmp_path)
