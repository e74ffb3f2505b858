import pytest
import torch
import torch.nn.functional as F
from torch import nn

from todal.errors import TodalError
from todal.tasks import Classification, Segmentation, get_task
from todal.train import evaluate


def logits_for(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits `[N, C, H, W]` whose argmax is `pred` `[N, H, W]`."""
    return F.one_hot(pred, num_classes).permute(0, 3, 1, 2).float() * 5


def test_registered_with_ignore_index_255():
    task = get_task("segmentation", 19)
    assert isinstance(task, Segmentation) and task.name == "segmentation"
    assert task.ignore_index == 255 and task.reduction == "sum" and task.num_classes == 19
    assert get_task("segmentation", 3, reduction="mean").reduction == "mean"
    with pytest.raises(TodalError, match=r"The 'reduction' parameter of Segmentation must be one of sum, mean\. "
                                         r"Got 'max'\."):
        Segmentation(3, reduction="max")


def test_confusion_by_bincount_skips_ignored_pixels():
    y = torch.tensor([[[0, 0, 1], [2, 255, 1]], [[255, 255, 0], [1, 1, 2]]])  # (2, 2, 3)
    pred = torch.tensor([[[0, 1, 1], [2, 0, 2]], [[2, 2, 0], [1, 0, 0]]])
    conf = Segmentation(3).confusion(logits_for(pred, 3), y)
    # rows: truth, cols: prediction, over the 9 valid pixels
    want = torch.tensor([[2, 1, 0],
                         [1, 2, 1],
                         [1, 0, 1]])
    assert torch.equal(conf, want)


def test_metrics_from_hand_computed_confusion():
    conf = torch.tensor([[3, 1, 0, 0],
                         [0, 2, 2, 0],
                         [1, 0, 1, 0],
                         [0, 0, 0, 0]])  # class 3: neither in the truth nor predicted
    m = Segmentation(4).metrics(conf, loss_sum=3.0, count=2)
    # IoU = TP / (row + col - TP): 3/(4+4-3), 2/(4+3-2), 1/(2+3-1)
    assert m["per_class_iou"][:3] == pytest.approx([0.6, 0.4, 0.25]) and m["per_class_iou"][3] is None
    assert m["miou"] == pytest.approx((0.6 + 0.4 + 0.25) / 3)  # the absent class is left out
    assert m["accuracy"] == m["pixel_accuracy"] == pytest.approx(6 / 10)
    assert m["class_proportion"] == pytest.approx([0.4, 0.4, 0.2, 0.0])
    assert m["per_class_accuracy"] == pytest.approx([0.75, 0.5, 0.5, 0.0])
    assert m["loss"] == pytest.approx(1.5)


def test_predicted_but_absent_class_counts_as_zero_iou():
    conf = torch.tensor([[2, 2], [0, 0]])  # class 1 never true, but predicted twice
    m = Segmentation(2).metrics(conf, 0.0, 1)
    assert m["per_class_iou"] == pytest.approx([0.5, 0.0]) and m["miou"] == pytest.approx(0.25)


def test_loss_averages_over_valid_pixels_only():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(2, 3, 4, 5, generator=g)
    y = torch.randint(0, 3, (2, 4, 5), generator=g)
    y[0, :2] = 255
    y[1, 3, 4] = 255
    task = Segmentation(3)
    per_pixel = -out.log_softmax(1).gather(1, y.clamp(max=2)[:, None])[:, 0]  # (2, 4, 5)
    valid = y != 255
    want = torch.stack([per_pixel[i][valid[i]].mean() for i in range(2)])
    assert torch.allclose(task.per_sample_loss(out, y), want, atol=1e-6)
    assert torch.allclose(task.loss(out, y), per_pixel[valid].mean(), atol=1e-6)


def test_reduce_sums_or_averages_pixels():
    v = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(Segmentation(3).reduce(v), v.flatten(1).sum(1))
    assert torch.equal(Segmentation(3, reduction="mean").reduce(v), v.flatten(1).mean(1))


def test_label_outside_classes_is_a_clear_error():
    y = torch.tensor([[[0, 7]]])
    with pytest.raises(TodalError, match=r"A label map holds 7, outside \[0, 3\) and not the ignore index 255"):
        Segmentation(3).confusion(torch.zeros(1, 3, 1, 2), y)


class _Fixed(nn.Module):
    """Predicts class (x > 0) per pixel, whatever the batch."""

    def forward(self, x):
        pred = (x[:, 0] > 0).long()
        return logits_for(pred, 2)


class _Seg:
    def __init__(self, x, y):
        self.x, self.y, self.num_classes = x, y, 2

    def __len__(self):
        return len(self.x)

    def batch(self, idx):
        return self.x[idx], self.y[idx]


def test_evaluate_accumulates_one_confusion_over_batches():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 1, 3, 4, generator=g)
    y = torch.randint(0, 2, (7, 3, 4), generator=g)
    y[2, 0] = 255
    task = Segmentation(2)
    whole = task.metrics(task.confusion(_Fixed()(x), y), 0.0, 1)
    m = evaluate(_Fixed(), task, _Seg(x, y), batch_size=3, transform=lambda b: b)
    assert m["miou"] == pytest.approx(whole["miou"]) and m["per_class_iou"] == pytest.approx(whole["per_class_iou"])
    assert m["class_proportion"] == pytest.approx(whole["class_proportion"])
    assert sum(m["class_proportion"]) == pytest.approx(1.0)


def test_classification_metrics_unchanged():
    m = Classification(2).metrics(torch.tensor([[3, 1], [0, 4]]), 2.0, 4)
    assert set(m) == {"accuracy", "loss", "per_class_accuracy"}
    assert m["accuracy"] == pytest.approx(7 / 8) and m["per_class_accuracy"] == pytest.approx([0.75, 1.0])
