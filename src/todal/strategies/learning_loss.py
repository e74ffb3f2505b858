"""LL4AL: a loss-prediction module trained with the task model; pick the highest predicted loss.

Yoo & Kweon, Learning Loss for Active Learning, CVPR 2019. The authors' code
(Mephisto405/Learning-Loss-for-Active-Learning, which the TOD code derives from) fixes:
  - `models/lossnet.py`: per tapped feature map a global average pool -> Linear(C_i, 128) -> ReLU,
    the n results concatenated -> Linear(128·n, 1); taps = ResNet-18's layer1..layer4.
  - `main.py` `LossPredLoss`: the batch's first half is paired with its flipped second half,
    `one = 2·sign(clamp(Δl, min=0)) - 1`, `loss = sum(clamp(ξ - one·Δl̂, min=0)) / (B/2)`, the true
    losses detached; total `mean CE + λ·that`; after epoch EPOCHL the tapped features are detached
    (`if epoch > epoch_loss`, 0-based), so late epochs train the module only.
  - `config.py`: MARGIN ξ = 1.0, WEIGHT λ = 1.0, EPOCH 200, EPOCHL 120 (detach_at = 120/200 = 0.6),
    the module's SGD with the backbone's lr 0.1, momentum 0.9, weight decay 5e-4, milestone 160
    (here: one optimizer over both, which `fit()` builds from `TrainConfig`); SUBSET 10,000 random
    unlabeled samples scored per cycle (here: the flavor's `score_subset`), the top ADDENDUM taken.
The module persists across cycles like the task model; its weights are the strategy's state.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import Int, Real, TodalError, param_error, validate
from ..inference import eval_mode
from ..objectives import Objective
from . import register
from .base import Context, RowWriter, ScoreStrategy

MARGIN = 1.0  # ξ, config.py
WEIGHT = 1.0  # λ, config.py
DETACH_AT = 0.6  # EPOCHL / EPOCH = 120 / 200, config.py
HIDDEN = 128  # interm_dim, models/lossnet.py


def _gap(x: Tensor) -> Tensor:
    """Global average pool over every axis after the channel axis: `[B, C, ...]` -> `[B, C]`."""
    return x.flatten(2).mean(2) if x.dim() > 2 else x


class LossNet(nn.Module):
    """LL4AL's loss-prediction module: per tap GAP -> Linear(C_i, hidden) -> ReLU, concat -> Linear(·, 1)."""

    def __init__(self, in_channels: list[int], hidden: int = HIDDEN):
        super().__init__()
        self.in_channels, self.hidden = [int(c) for c in in_channels], int(hidden)
        self.fcs = nn.ModuleList(nn.Linear(c, self.hidden) for c in self.in_channels)
        self.out = nn.Linear(self.hidden * len(self.in_channels), 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Features `[B, C_i, ...]` (or already pooled `[B, C_i]`), one per tap -> predicted loss `[B]`."""
        if len(features) != len(self.fcs):
            raise TodalError(f"LossNet was built for {len(self.fcs)} feature maps but got {len(features)}; "
                             "tap the same layers it was built for.")
        dtype = self.out.weight.dtype
        h = torch.cat([F.relu(fc(_gap(f).to(dtype))) for fc, f in zip(self.fcs, features)], dim=1)  # (B, hidden·n)
        return self.out(h).squeeze(1)  # (B,)


def ranking_loss(pred: Tensor, target: Tensor, margin: float = MARGIN) -> Tensor:
    """The loss-prediction loss (paper Eq. 2, the authors' `LossPredLoss`): scalar.

    Sample i of the batch's first half is paired with sample B-1-i of its second half;
    `mean_pairs max(0, ξ - sign(l_i - l_j)·(l̂_i - l̂_j))` with sign(0) = -1 as in their code, the
    true losses `target` detached. Odd B: the last sample is left out; B < 2: zero (no pair).
    """
    pred, target = pred.reshape(-1), target.reshape(-1).detach()
    if len(pred) != len(target):
        raise TodalError(f"ranking_loss needs one predicted loss per true loss; got {len(pred)} and {len(target)}.")
    n = len(pred) // 2
    if n == 0:
        return pred.sum() * 0.0  # keeps the graph, so a 1-sample batch still backpropagates
    pred, target = pred[: 2 * n], target[: 2 * n]
    d_pred = (pred - pred.flip(0))[:n]  # (n,) l̂_i - l̂_{2n-1-i}
    d_true = (target - target.flip(0))[:n]
    one = 2 * torch.sign(d_true.clamp(min=0)) - 1  # +1 where l_i > l_j, else -1
    return (margin - one * d_pred).clamp(min=0).sum() / n


def _out_channels(module: nn.Module) -> int | None:
    """Channels of a module's output, read from its last Conv/Linear/norm layer (None: unknown)."""
    for m in reversed(list(module.modules())):
        for attr in ("out_channels", "out_features", "num_features", "num_channels"):
            v = getattr(m, attr, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return None


class _Taps:
    """Forward hooks that keep the globally pooled output `[B, C]` of named modules of one model.

    No layers and no `model.feature_layers`: the input of the final linear layer (`head_of`), any
    extra axes between batch and features averaged. Pooling in the hook keeps the value the layer
    produced even when the model later changes it in place; calls of copies of the model (an EMA
    teacher deep-copied after attaching) are ignored.
    """

    def __init__(self, model: nn.Module, layers: list[str] | None):
        from ..models import head_of

        names = layers or list(getattr(model, "feature_layers", None) or [])
        self.handles = []
        if names:
            modules = dict(model.named_modules())
            missing = [n for n in names if n not in modules or not n]
            if missing:
                top = ", ".join(n for n, _ in model.named_children())
                raise param_error("layers", "strategy 'll4al'", f"names of modules of {type(model).__name__}",
                                  missing[0], f"Its top-level modules are: {top} (dotted paths reach inside them).")
            self.names, self.channels = list(names), []
            for i, name in enumerate(names):
                c = _out_channels(modules[name])
                if c is None:
                    raise param_error("layers", "strategy 'll4al'", "modules whose last Conv, Linear or norm "
                                      "layer tells their output channels", name,
                                      "Tap a block that ends in such a layer.")
                self.channels.append(c)
                self.handles.append(modules[name].register_forward_hook(self._hook(i, modules[name], name, c)))
        else:
            head = head_of(model)
            self.names, self.channels = ["<input of the final linear layer>"], [head.in_features]
            self.handles.append(head.register_forward_pre_hook(self._pre_hook(head)))
        self.features: list[Tensor | None] = [None] * len(self.names)

    def _hook(self, i: int, target: nn.Module, name: str, channels: int):
        def hook(module, inputs, output):
            if module is not target:
                return
            if not isinstance(output, Tensor) or output.dim() < 2:
                raise TodalError(f"Layer {name!r} returned {type(output).__name__}, not a [B, C, ...] tensor; "
                                 "tap layers that return a feature map (option layers=).")
            pooled = _gap(output)
            if pooled.shape[1] != channels:
                raise TodalError(f"Layer {name!r} outputs {pooled.shape[1]} channels but its last Conv, Linear or "
                                 f"norm layer has {channels}; tap a block whose last such layer sets its output "
                                 "channels (option layers=).")
            self.features[i] = pooled

        return hook

    def _pre_hook(self, target: nn.Module):
        def hook(module, inputs):
            if module is target:
                x = inputs[0]
                self.features[0] = x.flatten(1, -2).mean(1) if x.dim() > 2 else x  # (B, D)

        return hook

    def take(self) -> list[Tensor]:
        """The features of the last forward pass, cleared so a stale batch is never reused."""
        if any(f is None for f in self.features):
            name = self.names[[f is None for f in self.features].index(True)]
            raise TodalError(f"Layer {name!r} did not run in the model's forward pass, so LL4AL has no "
                             "features from it; tap layers that the forward pass uses (option layers=).")
        out, self.features = list(self.features), [None] * len(self.names)
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


_LL4AL_RULES = {"hidden": Int(lo=1), "margin": Real(lo=0), "weight": Real(lo=0),
                "detach_at": Real(lo=0, hi=1, expected="a float in [0, 1] (a fraction of the epochs)")}


def _check_options(owner: str, layers, hidden, margin, weight, detach_at) -> None:
    if layers is not None and (not isinstance(layers, (list, tuple)) or not layers
                               or not all(isinstance(n, str) and n for n in layers)):
        raise param_error("layers", owner, "None or a non-empty list of module names", layers,
                          "For example layers=['stage1', 'stage2'].")
    validate(owner, _LL4AL_RULES, hidden=hidden, margin=margin, weight=weight, detach_at=detach_at)


class LossPrediction(Objective):
    """The objective `fit()` adds: `weight · ranking_loss(LossNet(taps), per-sample loss, margin)`.

    Owns the LossNet, built on the first `attach` from the tapped layers' channels (initialized
    from torch's global RNG, which the loop seeds per cycle) and kept, trained further, on later ones.
    After epoch `round(detach_at · epochs)` (0-based, strictly after, as the authors' code) the
    features are detached, so only the LossNet learns from this loss.
    """

    def __init__(self, layers: list[str] | None = None, hidden: int = HIDDEN, margin: float = MARGIN,
                 weight: float = WEIGHT, detach_at: float = DETACH_AT):
        _check_options("LossPrediction", layers, hidden, margin, weight, detach_at)
        self.layers = None if layers is None else list(layers)
        self.hidden, self.margin, self.weight, self.detach_at = hidden, float(margin), float(weight), float(detach_at)
        self.net: LossNet | None = None
        self._taps: _Taps | None = None

    def build(self, channels: list[int]) -> LossNet:
        """The LossNet for taps of these channels: the existing one, else a new one."""
        if self.net is None:
            self.net = LossNet(channels, self.hidden)
        elif self.net.in_channels != list(channels):
            raise TodalError(f"The loss-prediction module was built for feature channels {self.net.in_channels} "
                             f"but the model's tapped layers have {list(channels)}; use a fresh 'll4al' "
                             "strategy for a different model.")
        return self.net

    def attach(self, model: nn.Module) -> None:
        self.detach()
        self._taps = _Taps(model, self.layers)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.build(self._taps.channels).to(device)

    def detach(self) -> None:
        if self._taps is not None:
            self._taps.remove()
            self._taps = None

    def parameters(self) -> Iterable[nn.Parameter]:
        return [] if self.net is None else list(self.net.parameters())

    def train(self, mode: bool = True) -> None:
        if self.net is not None:
            self.net.train(mode)

    def loss(self, *, out: Tensor, y: Tensor, per_sample_loss: Tensor, epoch: int, epochs: int) -> Tensor:
        if self._taps is None or self.net is None:
            raise TodalError("LossPrediction.loss was called before attach(model); pass the objective to "
                             "fit(objectives=...), which attaches it.")
        features = self._taps.take()
        if epoch > round(self.detach_at * epochs):  # the authors' `if epoch > epoch_loss`
            features = [f.detach() for f in features]
        return self.weight * ranking_loss(self.net(features), per_sample_loss, self.margin)

    def state_dict(self) -> dict:
        if self.net is None:
            return {"loss_net": None}
        return {"loss_net": {"in_channels": list(self.net.in_channels), "hidden": self.net.hidden,
                             "weights": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}}}

    def load_state_dict(self, state: dict) -> None:
        saved = (state or {}).get("loss_net")
        if saved is None:
            self.net = None
            return
        if self.net is None or self.net.in_channels != saved["in_channels"] or self.net.hidden != saved["hidden"]:
            with torch.random.fork_rng(devices=[]):  # the weights are overwritten: leave the global RNG alone
                self.net = LossNet(saved["in_channels"], saved["hidden"])
        self.net.load_state_dict(saved["weights"])  # in place: the same object fit() trains


@register
class LearningLoss(ScoreStrategy):
    """LL4AL: the highest loss predicted by a module trained beside the task model.

    Options: layers (module names to tap; None: `model.feature_layers`, else the input of the final
    linear layer), hidden (128), margin ξ (1.0), weight λ (1.0), detach_at (0.6: features detached
    after epoch 120 of 200). Train through `ActiveLoop` (or `fit(objectives=strategy.objectives())`);
    an untrained strategy scores with a randomly initialized module and warns.
    """

    name = "ll4al"
    description = "highest loss predicted by a module trained with the model (Learning Loss)"
    reference = "Yoo & Kweon, Learning Loss for Active Learning, CVPR 2019"

    def __init__(self, layers: list[str] | None = None, hidden: int = HIDDEN, margin: float = MARGIN,
                 weight: float = WEIGHT, detach_at: float = DETACH_AT, **unknown):
        super().__init__(**unknown)  # refuses unknown options with the one message template
        _check_options(f"strategy {self.name!r}", layers, hidden, margin, weight, detach_at)
        self.objective = LossPrediction(layers, hidden, margin, weight, detach_at)

    def objectives(self) -> list[Objective]:
        return [self.objective]

    def _untrained_net(self, ctx: Context, channels: list[int]) -> LossNet:
        warnings.warn("Strategy 'll4al' has no trained loss-prediction module, so it scores with a random one; "
                      "train through ActiveLoop or fit(objectives=strategy.objectives()) first.", UserWarning,
                      stacklevel=4)
        with ctx.seeded():
            return LossNet(channels, self.objective.hidden)

    @torch.no_grad()
    def predicted_loss(self, ctx: Context, indices: Tensor) -> Tensor:
        """Predicted loss `[n]` (CPU) of `indices`, the model and the module in eval mode."""
        taps = _Taps(ctx.model, self.objective.layers)
        try:
            net = self.objective.build(taps.channels) if self.objective.net is not None else \
                self._untrained_net(ctx, taps.channels)
            net.to(ctx.device)
            out = RowWriter(len(indices))
            with eval_mode(ctx.model, net):
                for _, x in ctx.batches(indices, f"scoring {self.name}"):
                    ctx.model(x)
                    out.add(net(taps.take()))
        finally:
            taps.remove()
        return out.result()

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        return self.predicted_loss(ctx, candidates)

    def state_dict(self) -> dict:
        return self.objective.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state)
