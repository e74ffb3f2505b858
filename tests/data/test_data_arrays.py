import numpy as np
import pytest
import torch

from todal.data import ArrayDataset, channel_stats, stratified_split
from todal.errors import TodalError


def make(n=6, c=1, num_classes=3, **kw):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, c, 4, 5), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % num_classes
    kw.setdefault("mean", 0.5)
    kw.setdefault("std", 0.25)
    return ArrayDataset(x, y, num_classes=num_classes, **kw)


def test_attributes_and_indexing():
    d = make(c=3, name="toy", crop_padding=2, hflip=True)
    assert len(d) == 6 and d.in_channels == 3 and d.image_size == (4, 5)
    assert d.mean == (0.5, 0.5, 0.5) and d.std == (0.25, 0.25, 0.25)
    assert d.classes == ["0", "1", "2"] and d.name == "toy" and d.crop_padding == 2 and d.hflip
    x, y = d[4]
    assert torch.equal(x, d.x[4]) and int(y) == 1
    idx = torch.tensor([5, 0, 3])
    xb, yb = d.batch(idx)
    assert xb.shape == (3, 3, 4, 5) and xb.dtype == torch.uint8 and yb.dtype == torch.int64
    assert torch.equal(xb, d.x[idx]) and torch.equal(yb, d.y[idx])


def test_subset_keeps_metadata():
    d = make(classes=["a", "b", "c"], crop_padding=1)
    s = d.subset([1, 2])
    assert isinstance(s, ArrayDataset) and len(s) == 2 and s.classes == ["a", "b", "c"] and s.crop_padding == 1
    assert torch.equal(s.x, d.x[1:3])


def test_numpy_and_float_inputs():
    x = np.random.default_rng(0).random((4, 2, 3, 3)).astype(np.float64)
    d = ArrayDataset(x, np.array([0, 1, 0, 1]), num_classes=2, mean=[0, 0], std=[1, 1])
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64


def test_label_out_of_range():
    x = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(TodalError, match=r"y has label 5 at sample 2, outside \[0, 3\).*remap them or pass a larger"):
        ArrayDataset(x, torch.tensor([0, 1, 5]), num_classes=3, mean=0.5, std=0.5)
    with pytest.raises(TodalError, match=r"y has label -1 at sample 0"):
        ArrayDataset(x, torch.tensor([-1, 1, 0]), num_classes=3, mean=0.5, std=0.5)


def test_nan_and_inf():
    x = torch.zeros(20, 1, 2, 2)
    x[17, 0, 1, 1] = float("nan")
    with pytest.raises(TodalError, match="x contains NaN at sample 17; clean the data or drop those samples"):
        ArrayDataset(x, torch.zeros(20, dtype=torch.long), num_classes=1, mean=0, std=1)
    x[17] = 0
    x[3, 0, 0, 0] = float("inf")
    with pytest.raises(TodalError, match="x contains inf at sample 3"):
        ArrayDataset(x, torch.zeros(20, dtype=torch.long), num_classes=1, mean=0, std=1)


@pytest.mark.parametrize("kw, pattern", [
    ({"x": torch.zeros(3, 2, 2, dtype=torch.uint8)}, "'x' parameter of ArrayDataset must be a 4-D"),
    ({"y": torch.zeros(4, dtype=torch.long)}, "x has 3 samples but y has 4"),
    ({"y": torch.zeros(3)}, "'y' parameter .* integer class labels.*y.long"),
    ({"num_classes": 0}, "'num_classes' parameter .* an int >= 1"),
    ({"std": 0.0}, "'std' parameter .* > 0"),
    ({"mean": [0.1, 0.2]}, "one value per channel"),
    ({"classes": ["a"]}, "'classes' parameter .* 2 names"),
    ({"crop_padding": -1}, "'crop_padding' parameter .* >= 0"),
    ({"x": torch.zeros(3, 1, 2, 2, dtype=torch.int32)}, "uint8 .* or float"),
])
def test_bad_construction(kw, pattern):
    args = {"x": torch.zeros(3, 1, 2, 2, dtype=torch.uint8), "y": torch.tensor([0, 1, 0]), "num_classes": 2,
            "mean": 0.5, "std": 0.5}
    args.update(kw)
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(TodalError, match=pattern):
        ArrayDataset(x, y, **args)


def test_channel_stats_uint8_matches_float():
    x = torch.randint(0, 256, (50, 3, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    mean, std = channel_stats(x)
    xf = x.double() / 255
    assert np.allclose(mean, xf.mean((0, 2, 3)).numpy())
    assert np.allclose(std, xf.std((0, 2, 3), unbiased=False).numpy())
    assert channel_stats(xf.float())[0] == pytest.approx(mean, abs=1e-6)


def test_stratified_split_is_per_class_and_deterministic():
    labels = np.repeat(np.arange(3), [10, 20, 1])
    tr, te = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[te], minlength=3).tolist() == [1, 2, 0]
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(31))
    tr2, te2 = stratified_split(labels, 0.1, seed=0)
    assert np.array_equal(te, te2) and np.array_equal(tr, tr2)
