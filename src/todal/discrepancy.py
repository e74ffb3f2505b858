"""Temporal Output Discrepancy (Eq. 1) and Cyclic Output Discrepancy (Eq. 5).

    D(x) = ||f(x; w_a) - f(x; w_b)||_2

computed per sample, streaming over a pool. `space="probs"`, the default of both `output_discrepancy` and
the `cod`/`emaod` strategies (`DEFAULT_SPACE`), compares softmax probabilities (what the authors' code does
for classification; `"logits"` compares raw outputs, for regression or any output that is not class scores); `measure="half_sq"` gives their 0.5·||·||², which
ranks samples exactly as the norm does. Dense outputs `[N, C, H, W]` get a per-pixel norm over
the class axis, summed (or averaged) over pixels by the task.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import TodalError, check_choice
from .inference import Transform, fetch, predict, test_transform, chunks, eval_mode
from .tasks import Task

SPACES = ("logits", "probs")
DEFAULT_SPACE = "probs"
MEASURES = ("l2", "half_sq")


def to_space(out: Tensor, space: str) -> Tensor:
    """Raw outputs -> the space the discrepancy is measured in (softmax over dim 1 for "probs")."""
    if space != "probs":
        return out
    if out.dim() < 2 or out.shape[1] < 2:
        raise TodalError(f"space='probs' needs class scores on dim 1, got outputs of shape {list(out.shape)}; "
                         "pass space='logits' for regression or single-output models.")
    return out.softmax(dim=1)


def discrepancy(a: Tensor, b: Tensor, *, measure: str = "l2", task: Task | None = None) -> Tensor:
    """Per-sample discrepancy of two output batches already in the chosen space.

    `[N, C]` -> `[N]`: ||a - b||_2 ("l2", Eq. 1/5) or 0.5·||a - b||² ("half_sq", official code).
    `[N, C, *S]`: the same over the class axis per element, then the task's reduction over S
    (sum unless the task says mean); without a task, sum.
    """
    sq = (a - b).pow(2)
    per_elem = sq.sum(dim=1) if sq.dim() > 1 else sq  # (N, *S)
    per_elem = per_elem.sqrt() if measure == "l2" else 0.5 * per_elem
    if per_elem.dim() == 1:
        return per_elem
    return task.reduce(per_elem) if task is not None else per_elem.flatten(1).sum(1)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; CPU for a model without any."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def output_discrepancy(
    model_a: nn.Module,
    model_b: nn.Module,
    dataset,
    indices: Tensor | None = None,
    *,
    space: str = DEFAULT_SPACE,
    measure: str = "l2",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    transform: Transform | None = None,
    task: Task | None = None,
) -> Tensor:
    """TOD of every sample in `indices` (all by default): `[N]`, ||f(x; w_a) - f(x; w_b)||_2 (Eq. 1).

    Both models run in eval mode on the same batches; only the `[N]` scores are kept. `space`: "probs"
    (default, as the `cod` strategy) or "logits"; `device`: default, where `model_a`'s parameters are.
    """
    check_choice("space", "output_discrepancy", space, SPACES)
    check_choice("measure", "output_discrepancy", measure, MEASURES)
    indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    device = torch.device(device) if device is not None else model_device(model_a)
    transform = transform or test_transform(dataset)
    scores = torch.empty(len(indices))
    pos = 0
    with eval_mode(model_a, model_b):
        for idx in chunks(indices, batch_size):
            x = transform(fetch(dataset, idx)[0]).to(device)
            a = to_space(model_a(x).float(), space)
            b = to_space(model_b(x).float(), space)
            scores[pos : pos + len(idx)] = discrepancy(a, b, measure=measure, task=task).cpu()
            pos += len(idx)
    return scores


__all__ = ["discrepancy", "output_discrepancy", "to_space", "predict", "SPACES", "MEASURES"]
