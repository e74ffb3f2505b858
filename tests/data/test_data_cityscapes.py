from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from todal.data import load_dataset
from todal.data.cityscapes import CLASSES, LABEL_TO_TRAIN, read_cityscapes, to_train_ids
from todal.errors import TodalError

# The 19 evaluated classes' label ids, in train-id order (cityscapesScripts labels.py).
EVALUATED = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
H, W = 8, 12


def write_tree(root: Path, cities=(("aachen", 2), ("bochum", 1)), seed: int = 0) -> dict:
    """The standard layout: leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/.../*_gtFine_labelIds.png."""
    rng = np.random.default_rng(seed)
    made = {}
    for split in ("train", "val"):
        for city, n in cities:
            for i in range(n):
                stem = f"{city}_{i:06d}_000019"
                img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                ids = rng.integers(0, 40, (H, W), dtype=np.uint8)  # ids past 33 occur too
                for kind, suffix, arr in (("leftImg8bit", "_leftImg8bit.png", img),
                                          ("gtFine", "_gtFine_labelIds.png", ids)):
                    path = root / kind / split / city / f"{stem}{suffix}"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr).save(path)
                made[(split, city, i)] = (img, ids)
    return made


def test_label_ids_map_to_the_19_train_ids():
    ids = np.arange(256)
    want = np.full(256, 255)
    want[EVALUATED] = np.arange(19)
    assert np.array_equal(to_train_ids(ids).numpy(), want) and np.array_equal(LABEL_TO_TRAIN, want)
    assert to_train_ids(np.array([-1, 7, 300, 33])).tolist() == [255, 0, 255, 18]  # license plate -1, junk
    assert len(CLASSES) == 19 and CLASSES[0] == "road" and CLASSES[13] == "car" and CLASSES[18] == "bicycle"


def test_reads_the_standard_layout(isolated):
    made = write_tree(isolated / "cs")
    train, val = load_dataset("cityscapes", root=isolated / "cs", crop=None)
    assert (len(train), len(val), train.num_classes, train.in_channels) == (3, 3, 19, 3)
    x, y = train.batch(torch.tensor([2, 0]))  # sorted: aachen 0, aachen 1, bochum 0
    assert x.shape == (2, 3, H, W) and x.dtype == torch.uint8 and y.shape == (2, H, W) and y.dtype == torch.int64
    img, ids = made[("train", "bochum", 0)]
    assert np.array_equal(x[0].numpy(), img.transpose(2, 0, 1))
    assert np.array_equal(y[0].numpy(), LABEL_TO_TRAIN[ids])
    xi, yi = val[1]
    img, ids = made[("val", "aachen", 1)]
    assert np.array_equal(xi.numpy(), img.transpose(2, 0, 1)) and np.array_equal(yi.numpy(), LABEL_TO_TRAIN[ids])
    assert set(y.unique().tolist()) <= set(range(19)) | {255}


def test_lookup_through_todal_data(isolated, monkeypatch):
    write_tree(isolated / "env" / "cityscapes")
    monkeypatch.setenv("TODAL_DATA", str(isolated / "env"))
    train, _ = read_cityscapes()
    assert len(train) == 3


def test_paper_crops_and_flips_move_image_and_mask_together(isolated):
    write_tree(isolated / "cs")
    train, _ = read_cityscapes(isolated / "cs", crop=(5, 7))
    x, y = train.batch(torch.arange(3))
    xa, ya = train.train_pair_transform(x, y, torch.Generator().manual_seed(0))
    assert xa.shape == (3, 3, 5, 7) and xa.dtype == torch.float32 and ya.shape == (3, 5, 7)
    # recover each crop's window by matching the image, then the mask must be the same window
    pixels = torch.round((xa * torch.tensor(train.std).view(3, 1, 1) + torch.tensor(train.mean).view(3, 1, 1)) * 255)
    for i in range(3):
        hits = []
        for flip in (False, True):
            src_x, src_y = (x[i].flip(-1), y[i].flip(-1)) if flip else (x[i], y[i])
            for r in range(H - 5 + 1):
                for c in range(W - 7 + 1):
                    if torch.equal(src_x[:, r:r + 5, c:c + 7].float(), pixels[i]):
                        hits.append(torch.equal(src_y[r:r + 5, c:c + 7], ya[i]))
        assert hits and all(hits)
    assert read_cityscapes(isolated / "cs")[0].augment.crop == (688, 688)  # the paper's default


def test_downsample_takes_mask_pixels_never_interpolates(isolated):
    made = write_tree(isolated / "cs")
    train, _ = read_cityscapes(isolated / "cs", crop=None, hflip=False, downsample=2)
    x, y = train.batch(torch.tensor([0]))
    img, ids = made[("train", "aachen", 0)]
    assert x.shape == (1, 3, H // 2, W // 2)
    assert np.array_equal(y[0].numpy(), LABEL_TO_TRAIN[ids[1::2, 1::2]])
    box = img.reshape(H // 2, 2, W // 2, 2, 3).astype(float).mean((1, 3)).transpose(2, 0, 1)
    assert np.abs(x[0].numpy() - box).max() <= 1


def test_missing_files_are_one_line_errors(isolated):
    with pytest.raises(TodalError, match=r"The data root '.*nope' for Cityscapes does not exist"):
        read_cityscapes(isolated / "nope")
    (isolated / "empty").mkdir()
    with pytest.raises(TodalError, match=r"Cityscapes \(leftImg8bit/ and gtFine/, train and val\) not found in .*"
                                         r"gtFine_trainvaltest\.zip.*--data-root"):
        load_dataset("cityscapes", root=isolated / "empty")
    write_tree(isolated / "cs")
    (isolated / "cs" / "gtFine" / "val" / "bochum" / "bochum_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(TodalError, match=r"bochum_000000_000019_gtFine_labelIds\.png is missing \(1 of the val label "
                                         r"maps are\)"):
        read_cityscapes(isolated / "cs")
