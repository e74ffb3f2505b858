"""`todal.select`: which k samples to label next, in one call, for users who train their own way.

    picked = todal.select("cod", model, pool, 100, labeled=labeled_idx, previous=model_before_this_round)

Every registered strategy works through it. Indices may be lists, numpy arrays or tensors; they are
positions in `dataset`. The model runs on its own device unless `device` says otherwise.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .discrepancy import model_device
from .errors import TodalError, check_int, param_error
from .flavor import flavor_for
from .inference import fetch
from .strategies import Context, Strategy
from .strategies import get as get_strategy
from .strategies.base import LabelMaps
from .tasks import get_task


def as_indices(value, name: str, size: int, owner: str = "select") -> Tensor:
    """A 1-D LongTensor of distinct positions in [0, size) from a list, range, numpy array or tensor."""
    try:
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
    except (TypeError, ValueError):
        raise param_error(name, owner, "a sequence of sample indices (list, numpy array or tensor)",
                          type(value).__name__) from None
    if t.dim() == 0:
        t = t.reshape(1)
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise param_error(name, owner, "a 1-D sequence of integer indices", f"shape {tuple(t.shape)} of {t.dtype}",
                          "For a boolean mask, pass mask.nonzero().flatten().")
    t = t.long().cpu()
    bad = t[(t < 0) | (t >= size)]
    if len(bad):
        raise param_error(name, owner, f"indices in [0, {size}) (positions in the dataset)", int(bad[0]))
    if len(t.unique()) != len(t):
        raise param_error(name, owner, "distinct indices", "a repeated index", "Pass each sample once.")
    return t


def select(strategy: str | Strategy, model: nn.Module, dataset, k: int, *, labeled, unlabeled=None,
           previous: nn.Module | Callable[[], nn.Module] | None = None, teacher: nn.Module | None = None,
           labels=None, device: str | torch.device | None = None, task: str | None = None,
           num_classes: int | None = None, batch_size: int = 256, seed: int = 0, first_cycle: bool = False,
           **options) -> Tensor:
    """The `k` samples of `unlabeled` that `strategy` would label next: `Tensor[k]` of dataset indices.

    Args:
        strategy: a name of `todal strategies` (its options as keyword arguments) or a strategy instance.
        model: the model trained on `labeled` (not modified). dataset: indexable `(x, y)` samples.
        labeled, unlabeled: positions in `dataset` (unlabeled: the rest, by default).
        previous: COD's reference, the model before this round of training (a model or a callable).
        teacher: the EMA teacher (EMAOD). labels: the labels of `labeled` (default: the dataset's own).
        device: where the model runs (default: the model's own device).
        first_cycle: COD with no trained previous model (`previous` is the untrained initial one).
    """
    if isinstance(strategy, Strategy):
        if options:
            raise TodalError(f"select got options {sorted(options)} with a strategy instance, which has its own; "
                             "pass the strategy by name with its options, or set them on the instance.")
        strat = copy.deepcopy(strategy)
    elif isinstance(strategy, str):
        strat = get_strategy(strategy, **options)
    else:
        raise param_error("strategy", "select", "a strategy name or a todal Strategy", type(strategy).__name__)
    if not isinstance(model, nn.Module):
        raise param_error("model", "select", "a torch.nn.Module", type(model).__name__)
    k = check_int("k", "select", k, lo=1)
    n = len(dataset)
    labeled = as_indices(labeled, "labeled", n)
    if unlabeled is None:
        mask = torch.ones(n, dtype=torch.bool)
        mask[labeled] = False
        unlabeled = mask.nonzero().flatten()
    else:
        unlabeled = as_indices(unlabeled, "unlabeled", n)
        both = labeled[torch.isin(labeled, unlabeled)]
        if len(both):
            raise TodalError(f"Sample {int(both[0])} is both labeled and unlabeled; pass disjoint index sets.")
    if len(unlabeled) == 0:
        raise TodalError("select has no unlabeled samples to choose from; every sample is labeled.")
    if strat.needs_previous and previous is None:
        raise TodalError(f"Strategy {strat.name!r} compares the model with the previous one: pass previous=<the "
                         "model before this round of training>.")
    if strat.needs_ema and teacher is None:
        raise TodalError(f"Strategy {strat.name!r} needs the EMA teacher: pass teacher=<todal.EMA(...).model>.")
    dev = torch.device(device) if device is not None else model_device(model)
    task_name = task or (getattr(dataset, "task", None) if isinstance(getattr(dataset, "task", None), str) else None) \
        or "classification"
    if num_classes is None:
        num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None:
        from .inference import test_transform

        x = test_transform(dataset)(fetch(dataset, unlabeled[:1])[0]).to(dev)
        was = model.training
        model.eval()
        with torch.no_grad():
            num_classes = int(model(x).shape[1])
        model.train(was)
    t = get_task(task_name, int(num_classes))
    if labels is None:
        labels = LabelMaps(dataset, labeled) if task_name == "segmentation" else fetch(dataset, labeled)[1].long()
    elif task_name != "segmentation":
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long().cpu()
        if labels.shape != labeled.shape:
            raise TodalError(f"select got {len(labels)} labels for {len(labeled)} labeled samples; pass one label "
                             "per labeled index, in the same order.")
    if previous is not None and not callable(previous):
        raise param_error("previous", "select", "a model or a callable returning one", type(previous).__name__)
    prev = (lambda: previous) if isinstance(previous, nn.Module) else previous
    if teacher is not None:
        teacher = teacher.to(dev)
    ctx = Context(model=model.to(dev), task=t, dataset=dataset, labeled=labeled, unlabeled=unlabeled, labels=labels,
                  generator=torch.Generator().manual_seed(int(seed)), cycle=0 if first_cycle else 1, device=dev,
                  batch_size=batch_size, ema_model=teacher, flavor=flavor_for("default", task=task_name), previous=prev)
    with ctx.seeded():
        return strat.select(ctx, int(k))
