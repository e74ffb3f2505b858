import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from todal.data import load_dataset, read_cifar10, read_cifar100
from todal.errors import TodalError


def dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_batch=2) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i in range(1, 6):
        batches[i] = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": [i, (i + 3) % 10][:per_batch],
                      b"data": images(per_batch, i), b"filenames": [b"a.png", b"b.png"][:per_batch]}
        dump(folder / f"data_batch_{i}", batches[i])
    batches["test"] = {b"batch_label": b"testing batch 1 of 1", b"labels": [9, 0, 3], b"data": images(3, 9),
                       b"filenames": [b"t.png"] * 3}
    dump(folder / "test_batch", batches["test"])
    names = [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                  "truck"]]
    dump(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072})
    return batches


def test_cifar10_upstream_format(tmp_path):
    batches = write_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the folder itself
        train, test = read_cifar10(root)
        assert train.x.shape == (10, 3, 32, 32) and test.x.shape == (3, 3, 32, 32)
        assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
        assert train.y.tolist() == [1, 4, 2, 5, 3, 6, 4, 7, 5, 8] and test.y.tolist() == [9, 0, 3]
        assert train.classes[1] == "automobile" and train.num_classes == 10
        assert (train.crop_padding, train.hflip) == (4, True)
        assert train.mean == (0.4914, 0.4822, 0.4465) and train.std == (0.2023, 0.1994, 0.2010)
    # row-major planes: row = R(32x32) G(32x32) B(32x32); pixel (c, h, w) is row[c*1024 + h*32 + w]
    row = batches[2][b"data"][1]
    assert int(train.x[3, 0, 0, 0]) == row[0]
    assert int(train.x[3, 1, 0, 0]) == row[1024]
    assert int(train.x[3, 2, 5, 7]) == row[2048 + 5 * 32 + 7]
    assert np.array_equal(test.x.reshape(3, -1).numpy(), batches["test"][b"data"])


def test_cifar100_upstream_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = {b"filenames": [b"x"] * 4, b"batch_label": b"training batch 1 of 1", b"fine_labels": [0, 99, 50, 7],
             b"coarse_labels": [4, 19, 0, 1], b"data": images(4, 1)}
    test = {b"filenames": [b"y"] * 2, b"batch_label": b"testing batch 1 of 1", b"fine_labels": [3, 98],
            b"coarse_labels": [2, 3], b"data": images(2, 2)}
    fine = [f"class{i}".encode() for i in range(100)]
    coarse = [f"super{i}".encode() for i in range(20)]
    for name, obj in (("train", train), ("test", test),
                      ("meta", {b"fine_label_names": fine, b"coarse_label_names": coarse})):
        dump(folder / name, obj)
    tr, te = load_dataset("cifar100", root=tmp_path)
    assert tr.num_classes == 100 and tr.classes[99] == "class99"
    assert tr.y.tolist() == [0, 99, 50, 7] and te.y.tolist() == [3, 98]
    assert np.array_equal(tr.x.reshape(4, -1).numpy(), train[b"data"])
    tr, _ = read_cifar100(folder, labels="coarse")
    assert tr.num_classes == 20 and tr.y.tolist() == [4, 19, 0, 1]


def test_cifar_errors(tmp_path, isolated):
    with pytest.raises(TodalError, match=r"CIFAR-10 not found in .*Download cifar-10-python.tar.gz"):
        read_cifar10()
    write_cifar10(tmp_path / "c")
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(TodalError, match="data_batch_4 is missing"):
        read_cifar10(tmp_path / "c")
    dump(tmp_path / "c" / "cifar-10-batches-py" / "data_batch_4", {b"data": images(1, 0)})
    with pytest.raises(TodalError, match="has no 'labels' entry"):
        read_cifar10(tmp_path / "c")
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_4").write_bytes(b"\x80\x02}q")
    with pytest.raises(TodalError, match="data_batch_4 cannot be unpickled"):
        read_cifar10(tmp_path / "c")
    with pytest.raises(TodalError, match="data root .* does not exist"):
        read_cifar100(tmp_path / "missing")


class _Payload:
    """A pickle that, when loaded by plain pickle, writes a marker file (stands for any code a file could run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_a_batch_that_would_run_code_is_refused_and_never_run(tmp_path):
    batches = write_cifar10(tmp_path)
    marker = tmp_path / "ran.txt"
    bad = dict(batches[1])
    bad[b"batch_label"] = _Payload(marker)
    dump(tmp_path / "cifar-10-batches-py" / "data_batch_1", bad)
    refused = r"data_batch_1 cannot be unpickled \(UnpicklingError: it names .*refused, not run\)"
    with pytest.raises(TodalError, match=refused):
        read_cifar10(tmp_path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: plain pickle would have run it
    assert marker.exists()
