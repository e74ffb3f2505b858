import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from todal.data import fashion_mnist, load_dataset, read_fashion_mnist, read_idx
from todal.errors import TodalError

REAL = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, *, drop: int = 0, magic: int | None = None) -> None:
    """Upstream IDX: big-endian magic 0x0000_08_<ndim>, big-endian uint32 dims, bytes; gzip'd."""
    header = struct.pack(">I", magic if magic is not None else 0x0800 | array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + body[:len(body) - drop])


def write_fmnist(folder: Path, n_train=5, n_test=3, seed=0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
            "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_labels": (np.arange(n_test, dtype=np.uint8) + 7) % 10}
    for key, name in fashion_mnist.FILES.items():
        write_idx(folder / name, data[key])
    return data


def test_reads_upstream_format(isolated):
    data = write_fmnist(isolated / "fm")
    train, test = read_fashion_mnist(isolated / "fm", download=False)
    assert train.x.shape == (5, 1, 28, 28) and test.x.shape == (3, 1, 28, 28)
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert np.array_equal(train.x[:, 0].numpy(), data["train_images"])
    assert test.y.tolist() == [7, 8, 9]
    assert train.num_classes == 10 and train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert (train.crop_padding, train.hflip) == (2, True)
    assert train.mean[0] == pytest.approx(data["train_images"].mean() / 255)
    assert test.mean == train.mean


def test_lookup_order_env_then_cache_then_system(isolated, monkeypatch):
    system = fashion_mnist._paths.SYSTEM_DIR
    write_fmnist(system / "fashion-mnist", n_train=2)
    assert len(read_fashion_mnist(download=False)[0]) == 2
    write_fmnist(isolated / "home" / ".cache" / "todal" / "fashion-mnist", n_train=3)
    assert len(read_fashion_mnist(download=False)[0]) == 3
    write_fmnist(isolated / "env" / "fashion-mnist", n_train=4)
    monkeypatch.setenv("TODAL_DATA", str(isolated / "env"))
    assert len(read_fashion_mnist(download=False)[0]) == 4
    write_fmnist(isolated / "env", n_train=6)  # the folder itself wins over its sub-folder
    assert len(read_fashion_mnist(download=False)[0]) == 6


def test_download_is_atomic_into_cache(isolated, monkeypatch):
    write_fmnist(isolated / "mirror", n_train=4)
    monkeypatch.setattr(fashion_mnist, "URL", (isolated / "mirror").as_uri() + "/")
    train, _ = read_fashion_mnist()
    cache = isolated / "home" / ".cache" / "todal" / "fashion-mnist"
    assert len(train) == 4
    assert sorted(p.name for p in cache.iterdir()) == sorted(fashion_mnist.FILES.values())  # no .part left


def test_not_found_message(isolated, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "URL", (isolated / "nowhere").as_uri() + "/")
    with pytest.raises(TodalError, match=r"Fashion-MNIST not found in .*download from .* failed.*Install the Debian "
                                         r"package dataset-fashion-mnist or set TODAL_DATA") as e:
        read_fashion_mnist()
    assert "\n" not in str(e.value)
    with pytest.raises(TodalError, match="Fashion-MNIST not found in"):
        read_fashion_mnist(download=False)


def test_truncated_file(isolated):
    folder = isolated / "fm"
    write_fmnist(folder)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8), drop=100)
    with pytest.raises(TodalError, match=r"train-images-idx3-ubyte.gz is truncated: its header says 5x28x28 = 3920 "
                                         r"bytes of data, the file holds 3820; re-download or reinstall "
                                         r"dataset-fashion-mnist"):
        read_fashion_mnist(folder, download=False)


def test_truncated_gzip_stream(isolated):
    folder = isolated / "fm"
    write_fmnist(folder)
    p = folder / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-12])
    with pytest.raises(TodalError, match=r"t10k-labels-idx1-ubyte.gz cannot be read .*re-download or reinstall"):
        read_fashion_mnist(folder, download=False)


def test_bad_magic_and_dims(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((2, 3, 3), np.uint8), magic=0x0801)
    with pytest.raises(TodalError, match="IDX magic 0x00000801, expected 0x00000803"):
        read_idx(tmp_path / "a.gz", 3)
    write_idx(tmp_path / "b.gz", np.zeros(4, np.uint8))
    assert read_idx(tmp_path / "b.gz", 1).shape == (4,)
    with pytest.raises(TodalError, match="expected 0x00000803"):
        read_idx(tmp_path / "b.gz", 3)


def test_wrong_image_size(isolated):
    folder = isolated / "fm"
    write_fmnist(folder)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((3, 14, 14), np.uint8))
    with pytest.raises(TodalError, match="holds 14x14 images, Fashion-MNIST's are 28x28"):
        read_fashion_mnist(folder, download=False)


def test_count_mismatch(isolated):
    folder = isolated / "fm"
    write_fmnist(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(TodalError, match="holds 5 images but .* holds 4 labels"):
        read_fashion_mnist(folder, download=False)


def test_real_files():
    if not (REAL / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    t0 = time.perf_counter()
    train, test = load_dataset("fashion-mnist", root=REAL)
    assert time.perf_counter() - t0 < 15
    assert len(train) == 60000 and len(test) == 10000
    assert train.x.shape[1:] == (1, 28, 28) and train.num_classes == 10
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert train.mean[0] == pytest.approx(0.2860, abs=1e-3) and train.std[0] == pytest.approx(0.3530, abs=1e-3)
