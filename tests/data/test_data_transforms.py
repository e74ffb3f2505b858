import pytest
import torch
import torch.nn.functional as F

from todal.data import ArrayDataset, BatchAugment, normalize, transforms_for
from todal.errors import TodalError


def batch(b=6, c=2, h=5, w=7, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_normalize_by_hand():
    x = torch.tensor([255, 0, 51], dtype=torch.uint8).view(1, 1, 1, 3)
    out = normalize(x, (0.5,), (0.25,))
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([2.0, -2.0, -1.2]).view(1, 1, 1, 3))
    # float input is used as-is (no /255), per channel
    xf = torch.ones(2, 2, 1, 1)
    out = normalize(xf, (0.0, 0.5), (1.0, 0.5))
    assert torch.allclose(out[:, 0], torch.ones(2, 1, 1)) and torch.allclose(out[:, 1], torch.ones(2, 1, 1))
    with pytest.raises(TodalError, match="one mean and std per channel"):
        normalize(torch.zeros(1, 3, 2, 2), (0.1, 0.2), (1.0, 1.0))


@pytest.mark.parametrize("p", [1, 3])
def test_crop_equals_slice_of_padded(p):
    x = batch()
    aug = BatchAugment(p, False)
    h, w = x.shape[-2:]
    offsets = torch.tensor([[0, 0], [2 * p, 2 * p], [p, p], [1, 2 * p - 1], [2 * p, 0], [p - 1, 1]])
    out = aug.apply(x, offsets, torch.zeros(len(x), dtype=torch.bool))
    padded = F.pad(x, (p, p, p, p))
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, dy:dy + h, dx:dx + w])
    assert torch.equal(out[2], x[2])  # offset (p, p) is the identity
    assert out[0, :, 0, 0].eq(0).all()  # top-left pixel comes from the zero padding


def test_flip_equals_torch_flip():
    x = batch()
    flips = torch.tensor([True, False, True, False, False, True])
    for p in (0, 2):
        out = BatchAugment(p, True).apply(x, torch.full((6, 2), p), flips)
        assert torch.equal(out[flips], torch.flip(x[flips], [-1]))
        assert torch.equal(out[~flips], x[~flips])


def test_crop_and_flip_together():
    x, p = batch(b=2), 2
    out = BatchAugment(p, True).apply(x, torch.tensor([[1, 3], [0, 4]]), torch.tensor([True, False]))
    padded = F.pad(x, (p, p, p, p))
    assert torch.equal(out[0], torch.flip(padded[0, :, 1:6, 3:10], [-1]))
    assert torch.equal(out[1], padded[1, :, 0:5, 4:11])


def test_seeded_reproducibility_shape_dtype():
    x = batch(b=32)
    aug = BatchAugment(2, True)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    u8 = (x * 255).to(torch.uint8)
    assert aug(u8, torch.Generator().manual_seed(7)).dtype == torch.uint8


def test_sample_ranges_and_both_outcomes():
    off, fl = BatchAugment(3, True).sample(500, torch.Generator().manual_seed(0))
    assert off.shape == (500, 2) and off.min() == 0 and off.max() == 6
    assert 150 < int(fl.sum()) < 350
    off, fl = BatchAugment(0, False).sample(4, torch.Generator().manual_seed(0))
    assert not off.any() and not fl.any()


def test_identity_and_bad_args():
    x = batch()
    assert BatchAugment(0, False)(x) is x
    with pytest.raises(TodalError, match="'crop_padding' parameter of BatchAugment must be an int >= 0"):
        BatchAugment(-1, True)
    with pytest.raises(TodalError, match="4-D batch"):
        BatchAugment(1, False)(x[0])


def test_transforms_for_pads_black_pixels_before_normalizing():
    # All-white images: after augmentation every value is either white or the zero padding, normalized.
    x = torch.full((64, 1, 6, 6), 255, dtype=torch.uint8)
    d = ArrayDataset(x, torch.zeros(64, dtype=torch.long), num_classes=1, mean=0.5, std=0.25, crop_padding=2,
                     hflip=True)
    train_fn, test_fn = transforms_for(d)
    out = train_fn(d.x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == x.shape
    values = set(out.unique().tolist())
    assert values == {2.0, -2.0}  # (1 - .5) / .25 and (0 - .5) / .25: padding is pixel 0
    assert torch.equal(out, train_fn(d.x, torch.Generator().manual_seed(0)))
    assert torch.equal(test_fn(d.x), torch.full(x.shape, 2.0))


def test_transforms_for_plain_dataset():
    class Plain:
        pass

    train_fn, test_fn = transforms_for(Plain())
    x = torch.arange(6, dtype=torch.float64).view(1, 1, 2, 3)
    assert torch.equal(train_fn(x, torch.Generator()), x.float()) and test_fn(x).dtype == torch.float32
