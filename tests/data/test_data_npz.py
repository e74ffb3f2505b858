import numpy as np
import pytest
import torch

from todal.data import load_dataset, read_npz
from todal.errors import TodalError


def arrays(shape_train, shape_test, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    make = (lambda s: rng.integers(0, 256, s, dtype=np.uint8)) if dtype == np.uint8 else \
        (lambda s: rng.random(s).astype(dtype))
    return {"x_train": make(shape_train), "y_train": np.array([0, 2, 1, 2, 0, 1]),
            "x_test": make(shape_test), "y_test": np.array([1, 0])}


@pytest.mark.parametrize("layout, train_shape, to_nchw", [
    ("NHW", (6, 8, 9), lambda a: a[:, None]),
    ("NHWC-1", (6, 8, 9, 1), lambda a: a.transpose(0, 3, 1, 2)),
    ("NHWC-3", (6, 8, 9, 3), lambda a: a.transpose(0, 3, 1, 2)),
    ("NHWC-4", (6, 8, 9, 4), lambda a: a.transpose(0, 3, 1, 2)),
    ("NCHW", (6, 3, 8, 9), lambda a: a),
])
def test_layouts_round_trip(tmp_path, layout, train_shape, to_nchw):
    d = arrays(train_shape, (2,) + train_shape[1:])
    np.savez(tmp_path / "d.npz", **d)
    train, test = read_npz(tmp_path / "d.npz")
    assert train.x.dtype == torch.uint8 and train.x.shape[2:] == (8, 9)
    assert np.array_equal(train.x.numpy(), to_nchw(d["x_train"]))
    assert np.array_equal(test.x.numpy(), to_nchw(d["x_test"]))
    assert train.y.tolist() == [0, 2, 1, 2, 0, 1] and train.num_classes == 3 and train.classes == ["0", "1", "2"]
    assert (train.crop_padding, train.hflip) == (1, False) and train.name == "d"


def test_float_and_optional_keys(tmp_path):
    d = arrays((6, 5, 5, 3), (2, 5, 5, 3), dtype=np.float64)
    np.savez(tmp_path / "f.npz", **d, classes=np.array(["cat", "dog", "emu", "fox"]), num_classes=4,
             mean=np.array([0.1, 0.2, 0.3]), std=np.array([1.0, 2.0, 3.0]))
    train, test = load_dataset(str(tmp_path / "f.npz"), hflip=True)
    assert train.x.dtype == torch.float32
    assert torch.allclose(train.x, torch.from_numpy(d["x_train"]).permute(0, 3, 1, 2).float())
    assert train.num_classes == 4 and test.classes == ["cat", "dog", "emu", "fox"]
    assert train.mean == (0.1, 0.2, 0.3) and train.std == (1.0, 2.0, 3.0) and train.hflip


def test_mean_std_default_from_train(tmp_path):
    d = arrays((6, 4, 4), (2, 4, 4))
    np.savez(tmp_path / "d.npz", **d)
    train, test = read_npz(tmp_path / "d.npz")
    assert train.mean[0] == pytest.approx(d["x_train"].mean() / 255) and test.mean == train.mean


def test_missing_key(tmp_path):
    d = arrays((6, 4, 4), (2, 4, 4))
    del d["y_test"]
    np.savez(tmp_path / "d.npz", **d)
    with pytest.raises(TodalError, match=r"d.npz has no 'y_test' array; save x_train, y_train, x_test, y_test "
                                         r"with numpy.savez"):
        read_npz(tmp_path / "d.npz")


@pytest.mark.parametrize("change, pattern", [
    (lambda d: d.update(y_train=d["y_train"][:5]), "x_train has 6 samples but y_train has 5"),
    (lambda d: d.update(y_test=np.array([1, -2])), "y_test has negative label -2 at sample 1.*remap them"),
    (lambda d: d.__setitem__("x_train", np.where(np.arange(6)[:, None, None] == 4, np.nan, 0.5)),
     "x_train contains NaN at sample 4; clean the data or drop those samples"),
    (lambda d: d.update(y_train=np.full(6, 0.5)), "y_train has dtype float64; save labels as integer"),
    (lambda d: d.update(x_test=np.zeros((2, 5, 4), np.uint8)), r"x_train images are .* but x_test images are"),
    (lambda d: d.update(num_classes=2), "num_classes is 2 but the labels go up to 2"),
    (lambda d: d.update(classes=np.array(["a", "b"])), "classes has 2 names for 3 classes"),
    (lambda d: d.update(std=np.array([0.0])), "std is .*> 0"),
    (lambda d: d.update(x_train=np.zeros((6, 2, 2, 2, 2))), "has shape .*save images as"),
])
def test_bad_files(tmp_path, change, pattern):
    d = arrays((6, 4, 4), (2, 4, 4))
    change(d)
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(TodalError, match=pattern):
        read_npz(tmp_path / "bad.npz")


def test_not_a_file(tmp_path):
    with pytest.raises(TodalError, match="does not exist; pass the path of an .npz"):
        load_dataset(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TodalError, match="is not a readable .npz"):
        read_npz(tmp_path / "junk.npz")
