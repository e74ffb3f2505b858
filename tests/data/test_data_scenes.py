import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from todal.data import fashion_mnist, load_dataset, normalize, transforms_for
from todal.data.scenes import ITEM, FashionMNISTScenes, PairAugment, read_fashion_mnist_scenes
from todal.errors import TodalError


def fake_items(n: int, base: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items with a random blob of intensity `base + i % 40` (item i), faint noise elsewhere."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, (n, ITEM, ITEM), dtype=np.uint8)  # below the default threshold 32
    blob = rng.random((n, ITEM, ITEM)) < 0.5
    x[blob] = (base + np.arange(n) % 40)[:, None, None].repeat(ITEM, 1).repeat(ITEM, 2)[blob]
    return x, np.arange(n) % 10


def reference(scenes: FashionMNISTScenes, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene i painted item by item, in plain numpy, from the stated rules."""
    s = scenes.canvas
    x, y = np.zeros((s, s), np.uint8), np.zeros((s, s), np.int64)
    for k in range(4):
        item = int(scenes.item[i, k])
        if item < 0:
            continue
        r, c = (int(v) for v in scenes.offset[i, k])
        src = scenes.items_x[item].numpy()
        opaque = src > scenes.threshold
        x[r:r + ITEM, c:c + ITEM][opaque] = src[opaque]
        y[r:r + ITEM, c:c + ITEM][opaque] = int(scenes.items_y[item]) + 1
    return x, y


@pytest.fixture(scope="module")
def scenes():
    x, y = fake_items(50, 100)
    return FashionMNISTScenes(x, y, size=40, seed=3)


def test_each_pixel_is_labeled_with_the_item_drawn_there(scenes):
    x, y = scenes.batch(torch.arange(len(scenes)))
    assert x.shape == (40, 1, 64, 64) and x.dtype == torch.uint8 and y.shape == (40, 64, 64) and y.dtype == torch.int64
    for i in range(len(scenes)):  # test-only reference loop
        rx, ry = reference(scenes, i)
        assert np.array_equal(x[i, 0].numpy(), rx) and np.array_equal(y[i].numpy(), ry)
    # every labeled pixel holds a value of an item of the labeled class (item i has value 100 + i % 40)
    item_of_value = {100 + i % 40: i % 10 for i in range(50)}  # items i and i + 40 share a class
    lab = y[y > 0] - 1
    val = x[:, 0][y > 0]
    assert all(item_of_value[int(v)] == int(c) for v, c in zip(val[::97], lab[::97]))
    assert torch.equal(x[:, 0] > scenes.threshold, y > 0)  # the image holds exactly the opaque pixels


def test_layout_rules(scenes):
    used = (scenes.item >= 0).sum(1)
    assert int(used.min()) >= 2 and int(used.max()) <= 4
    assert bool((scenes.item[:, :2] >= 0).all())  # the used slots come first
    off = scenes.offset[scenes.item >= 0]
    assert int(off.min()) >= 0 and int(off.max()) <= 64 - ITEM
    # one item a quadrant, jitter 6: any two items of a scene overlap by at most 12 px along some axis
    for a in range(4):
        for b in range(a + 1, 4):
            both = (scenes.item[:, a] >= 0) & (scenes.item[:, b] >= 0)
            gap = (scenes.offset[both, a] - scenes.offset[both, b]).abs()  # (n, 2)
            overlap = (ITEM - gap).clamp_min(0)
            assert int(overlap.min(1).values.max()) <= 12
    x, y = scenes.batch(torch.arange(len(scenes)))
    assert int(y.min()) == 0 and int(y.max()) <= 10 and scenes.num_classes == 11
    assert scenes.classes[0] == "background" and len(scenes.classes) == 11


def test_deterministic_from_the_seed():
    x, y = fake_items(30, 100)
    a = FashionMNISTScenes(x, y, size=20, seed=5)
    b = FashionMNISTScenes(x, y, size=20, seed=5)
    c = FashionMNISTScenes(x, y, size=20, seed=6)
    idx = torch.tensor([3, 0, 19, 3])
    assert all(torch.equal(u, v) for u, v in zip(a.batch(idx), b.batch(idx)))
    assert not torch.equal(a.batch(idx)[1], c.batch(idx)[1])
    xi, yi = a[19]
    assert torch.equal(xi, a.batch(idx)[0][2]) and torch.equal(yi, a.batch(idx)[1][2])
    # the test split draws another stream from the same seed
    assert not torch.equal(FashionMNISTScenes(x, y, size=20, seed=5, split="test").item, a.item)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_train_and_test_scenes_use_their_own_split(isolated):
    folder = isolated / "fm"
    folder.mkdir()
    tr_x, tr_y = fake_items(12, 200)  # train item values 200..211, test 100..107
    te_x, te_y = fake_items(8, 100, seed=1)
    for key, arr in (("train_images", tr_x), ("train_labels", tr_y), ("test_images", te_x), ("test_labels", te_y)):
        write_idx(folder / fashion_mnist.FILES[key], arr)
    train, test = load_dataset("fashion-mnist-scenes", root=folder, download=False, size=30, test_size=10)
    assert (len(train), len(test), train.name, train.in_channels) == (30, 10, "fashion-mnist-scenes", 1)
    assert train.classes[1:] == fashion_mnist.CLASSES
    tv, te = train.batch(torch.arange(30))[0].unique(), test.batch(torch.arange(10))[0].unique()
    assert set(tv.tolist()) - {0} <= set(range(200, 212)) and set(te.tolist()) - {0} <= set(range(100, 108))
    assert test.mean == train.mean and test.std == train.std


def test_missing_fashion_mnist_is_the_readers_error(isolated):
    with pytest.raises(TodalError, match="Fashion-MNIST not found in"):
        read_fashion_mnist_scenes(isolated / "nothing-here", download=False)


def test_option_errors():
    x, y = fake_items(5, 100)
    with pytest.raises(TodalError, match=r"The 'max_items' parameter of read_fashion_mnist_scenes must be an int in "
                                         r"\[min_items=2, 4\]"):
        FashionMNISTScenes(x, y, size=3, max_items=5)
    with pytest.raises(TodalError, match=r"The 'canvas' parameter of read_fashion_mnist_scenes must be an int >= 56"):
        FashionMNISTScenes(x, y, size=3, canvas=40)
    with pytest.raises(TodalError, match=r"The 'images' parameter .* must be uint8 Fashion-MNIST items"):
        FashionMNISTScenes(x[:, :20], y, size=3)


def test_transforms_for_normalizes_without_moving_the_image(scenes):
    x, _ = scenes.batch(torch.arange(4))
    train_fn, test_fn = transforms_for(scenes)
    assert torch.equal(train_fn(x, torch.Generator().manual_seed(0)), normalize(x, scenes.mean, scenes.std))
    assert torch.equal(test_fn(x), scenes.test_transform(x))


def test_pair_transform_moves_image_and_mask_together(scenes):
    x, y = scenes.batch(torch.arange(len(scenes)))
    xa, ya = scenes.train_pair_transform(x, y, torch.Generator().manual_seed(0))
    assert xa.shape == (40, 1, 64, 64) and xa.dtype == torch.float32 and ya.shape == y.shape
    pixels = xa[:, 0] * scenes.std[0] + scenes.mean[0]
    assert torch.equal(pixels > (scenes.threshold + 0.5) / 255, ya > 0)  # still aligned
    assert not torch.equal(ya, y)  # something moved
    again = scenes.train_pair_transform(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], xa) and torch.equal(again[1], ya)


def test_pair_augment_crops_pads_and_flips_exactly():
    x = torch.arange(2 * 2 * 3 * 4, dtype=torch.uint8).reshape(2, 2, 3, 4)
    y = torch.arange(2 * 3 * 4).reshape(2, 3, 4)
    aug = PairAugment(crop=(2, 3), padding=1, hflip=True, fill=0, mask_fill=255)
    xo, yo = aug.apply(x, y, torch.tensor([[0, 0], [2, 2]]), torch.tensor([False, True]))
    # sample 0: padded corner, no flip; sample 1: rows 1..2, cols 1..3 of the original, flipped
    assert torch.equal(xo[0], torch.tensor([[[0, 0, 0], [0, 0, 1]], [[0, 0, 0], [0, 12, 13]]], dtype=torch.uint8))
    assert torch.equal(yo[0], torch.tensor([[255, 255, 255], [255, 0, 1]]))
    assert torch.equal(xo[1], x[1, :, 1:3, 1:4].flip(-1)) and torch.equal(yo[1], y[1, 1:3, 1:4].flip(-1))
    # a crop larger than the image pads, with the mask's fill (ignored pixels)
    big = PairAugment(crop=5, hflip=False)
    xb, yb = big(x, y, torch.Generator().manual_seed(0))
    assert xb.shape == (2, 2, 5, 5) and yb.shape == (2, 5, 5) and int((yb == 255).sum()) == 2 * (25 - 12)
    with pytest.raises(TodalError, match="masks must be \\[B, H, W\\]"):
        aug(x, y[:, :2])
