from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from todal.data import load_dataset, read_image_folder
from todal.errors import TodalError


def png(path: Path, array: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def rgb(seed, h=6, w=6):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_split_tree_round_trip(tmp_path):
    want = {}
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("zebra", "ant"):
            for i in range(n):
                want[(split, cls, i)] = png(tmp_path / split / cls / f"{i}.png", rgb(hash((split, cls, i)) % 1000))
    train, test = read_image_folder(tmp_path, image_size=6)
    assert train.classes == ["ant", "zebra"] and train.num_classes == 2
    assert train.x.shape == (6, 3, 6, 6) and test.x.shape == (2, 3, 6, 6) and train.x.dtype == torch.uint8
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1] and test.y.tolist() == [0, 1]
    # same size: PIL's resize is a no-op, so pixels round-trip exactly (HWC -> CHW)
    assert np.array_equal(train.x[3].numpy(), want[("train", "zebra", 0)].transpose(2, 0, 1))
    assert np.array_equal(test.x[0].numpy(), want[("test", "ant", 0)].transpose(2, 0, 1))
    assert (train.crop_padding, train.hflip) == (1, True)


def test_stratified_split_gray_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("a", 10), ("b", 20)):
        for i in range(n):
            png(tmp_path / "imgs" / cls / f"{i:02d}.png", rng.integers(0, 256, (10, 14), dtype=np.uint8))
    (tmp_path / "imgs" / "a" / "notes.txt").write_text("not an image")
    train, test = load_dataset(str(tmp_path / "imgs"), image_size=8)
    assert train.x.shape == (27, 1, 8, 8) and test.x.shape == (3, 1, 8, 8)  # all grayscale -> 1 channel
    assert torch.bincount(test.y).tolist() == [1, 2]
    again, _ = read_image_folder(tmp_path / "imgs", image_size=8)
    assert torch.equal(again.x, train.x)
    _, other = read_image_folder(tmp_path / "imgs", image_size=8, seed=1)
    assert not torch.equal(other.x, test.x)
    rgb_train, _ = read_image_folder(tmp_path / "imgs", image_size=8, grayscale=False)
    assert rgb_train.in_channels == 3


def test_resize_and_center_crop(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 15:25] = 255  # a white band in the middle survives the centre crop
    png(tmp_path / "c" / "x" / "0.png", img)
    png(tmp_path / "c" / "x" / "1.png", img)
    train, _ = read_image_folder(tmp_path / "c", resize=10, center_crop=8, test_fraction=0.0)
    assert train.x.shape == (2, 3, 8, 8)  # 20x40 -> 10x20 -> centre 8x8
    assert int(train.x[0, :, :, 4].min()) > 200 and int(train.x[0, :, :, 0].max()) == 0
    folder_train, _ = load_dataset("folder", root=tmp_path / "c", image_size=(4, 5), test_fraction=0.0)
    assert folder_train.image_size == (4, 5)


def test_errors(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(TodalError, match=r"No images .* found in class sub-folders of .*empty; put each class's images"):
        read_image_folder(tmp_path / "empty")
    with pytest.raises(TodalError, match="does not exist"):
        read_image_folder(tmp_path / "missing")
    (tmp_path / "bad" / "cls" / "x.png").parent.mkdir(parents=True)
    (tmp_path / "bad" / "cls" / "x.png").write_bytes(b"garbage")
    with pytest.raises(TodalError, match=r"x.png cannot be opened as an image.*delete or replace"):
        read_image_folder(tmp_path / "bad")
    with pytest.raises(TodalError, match="'folder' dataset needs root="):
        load_dataset("folder")
    with pytest.raises(TodalError, match="'test_fraction' parameter"):
        read_image_folder(tmp_path / "bad", test_fraction=1.5)


def test_each_sample_keeps_its_file_path(tmp_path):
    arrays = {}
    for cls in ("ant", "zebra"):
        for i in range(3):
            arrays[f"{cls}/{i}.png"] = png(tmp_path / cls / f"{i}.png", rgb(hash((cls, i)) % 1000))
    train, test = read_image_folder(tmp_path, image_size=6, test_fraction=0.34)
    for data in (train, test):
        assert len(data.paths) == len(data)
        for i, rel in enumerate(data.paths):
            assert np.array_equal(data.x[i].numpy(), arrays[rel].transpose(2, 0, 1))
            assert data.classes[int(data.y[i])] == rel.split("/")[0]


def test_a_flat_folder_points_to_a_labeling_project(tmp_path):
    png(tmp_path / "a.png", rgb(0))
    with pytest.raises(TodalError, match="start a labeling project: todal init PROJECT --images"):
        read_image_folder(tmp_path, image_size=6)
