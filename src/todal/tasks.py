"""What differs between tasks: the loss, the metrics, and how outputs reduce to one number per sample.

Outputs are `[N, C]` (classification) or `[N, C, H, W]` (segmentation): the class axis is always
dim 1, so one implementation serves both, and the per-sample reduction runs over the other axes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import TodalError, check_choice, param_error


class Task:
    """Classification over dim 1 of the outputs; subclasses change the metrics and reductions.

    Args:
        num_classes: C.
        reduction: how per-element values (per pixel) reduce to one per sample: "sum" or "mean".
        ignore_index: label ignored by the loss and metrics (segmentation's 255).
    """

    name = "classification"

    def __init__(self, num_classes: int, *, reduction: str = "sum", ignore_index: int = -100):
        if int(num_classes) < 1:
            raise param_error("num_classes", type(self).__name__, "an int >= 1", num_classes)
        self.num_classes = int(num_classes)
        self.reduction = check_choice("reduction", type(self).__name__, reduction, ("sum", "mean"))
        self.ignore_index = ignore_index

    # --- losses -------------------------------------------------------------------------------
    def per_sample_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy per sample, `[N]` (per-pixel losses averaged over valid pixels)."""
        loss = F.cross_entropy(out, y, reduction="none", ignore_index=self.ignore_index)
        if loss.dim() == 1:
            return loss
        valid = (y != self.ignore_index).flatten(1).sum(1).clamp_min(1)
        return loss.flatten(1).sum(1) / valid

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy over the batch (over valid pixels for dense outputs), Eq. 8."""
        return F.cross_entropy(out, y, ignore_index=self.ignore_index)

    # --- per-sample reductions ----------------------------------------------------------------
    def probs(self, out: Tensor) -> Tensor:
        return out.softmax(dim=1)

    def reduce(self, per_element: Tensor) -> Tensor:
        """`[N, *S]` -> `[N]`: sum (or mean) over the spatial axes; identity for `[N]`."""
        if per_element.dim() == 1:
            return per_element
        flat = per_element.flatten(1)
        return flat.sum(1) if self.reduction == "sum" else flat.mean(1)

    # --- metrics ------------------------------------------------------------------------------
    def confusion(self, out: Tensor, y: Tensor) -> Tensor:
        """Confusion matrix `[C, C]` (rows: truth, cols: prediction) of one batch, by bincount."""
        pred = out.argmax(dim=1).flatten()
        y = y.flatten()
        keep = y != self.ignore_index
        c = self.num_classes
        idx = y[keep] * c + pred[keep]
        return torch.bincount(idx, minlength=c * c).reshape(c, c)

    def metrics(self, confusion: Tensor, loss_sum: float, count: int) -> dict:
        """Accuracy, mean loss and per-class accuracy (recall) from an accumulated confusion matrix."""
        conf = confusion.double()
        support = conf.sum(1)
        per_class = (conf.diag() / support.clamp_min(1)).tolist()
        return {
            "accuracy": float(conf.diag().sum() / conf.sum().clamp_min(1)),
            "loss": loss_sum / max(count, 1),
            "per_class_accuracy": [round(v, 6) for v in per_class],
        }


class Classification(Task):
    name = "classification"


class Segmentation(Task):
    """Per-pixel classification: outputs `[N, C, H, W]`, labels `[N, H, W]`, 255 = ignored pixel.

    The loss is the per-pixel cross-entropy over the valid pixels; per-sample reductions (the
    discrepancy of Eq. 1 and Eq. 5, uncertainty maps) sum over pixels, or average with
    `reduction="mean"`. Metrics come from one confusion matrix accumulated over the test set.
    """

    name = "segmentation"

    def __init__(self, num_classes: int, *, reduction: str = "sum", ignore_index: int = 255):
        super().__init__(num_classes, reduction=reduction, ignore_index=ignore_index)

    def confusion(self, out: Tensor, y: Tensor) -> Tensor:
        """Confusion matrix `[C, C]` of one batch over the valid pixels (labels other than 255)."""
        valid = y[y != self.ignore_index]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.num_classes):
            bad = int(valid.max()) if int(valid.max()) >= self.num_classes else int(valid.min())
            raise TodalError(f"A label map holds {bad}, outside [0, {self.num_classes}) and not the ignore "
                             f"index {self.ignore_index}; remap the labels or pass a larger num_classes.")
        return super().confusion(out, y)

    def metrics(self, confusion: Tensor, loss_sum: float, count: int) -> dict:
        """mIoU, per-class IoU, pixel accuracy, mean loss and per-class pixel proportions.

        IoU_c = TP_c / (TP_c + FP_c + FN_c) from the `[C, C]` confusion matrix (rows: truth). A class
        absent from both the truth and the predictions has no IoU (None) and is left out of the mIoU,
        as in the DRN evaluation (nanmean). "accuracy" is the pixel accuracy, so tables that read
        accuracy keep working; "class_proportion" is each class's share of the valid truth pixels
        (Table 2's "Proportion" row).
        """
        conf = confusion.double()
        tp = conf.diag()
        support, predicted = conf.sum(1), conf.sum(0)
        union = support + predicted - tp
        present = union > 0
        iou = tp / union.clamp_min(1)
        total = conf.sum().clamp_min(1)
        pixel_acc = float(tp.sum() / total)
        miou = float(iou[present].mean()) if bool(present.any()) else 0.0
        return {
            "accuracy": pixel_acc,
            "pixel_accuracy": pixel_acc,
            "miou": miou,
            "loss": loss_sum / max(count, 1),
            "per_class_iou": [round(float(v), 6) if p else None for v, p in zip(iou, present)],
            "per_class_accuracy": [round(float(v), 6) for v in tp / support.clamp_min(1)],
            "class_proportion": [round(float(v), 6) for v in support / total],
        }


TASKS = {"classification": Classification, "segmentation": Segmentation}


def get_task(name: str, num_classes: int, **kwargs) -> Task:
    check_choice("task", "ActiveLoop", name, sorted(TASKS))
    return TASKS[name](num_classes, **kwargs)
