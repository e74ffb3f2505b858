"""The EMA teacher of Eq. 6: w~ <- alpha·w~ + (1 - alpha)·w, after every optimizer step."""

from __future__ import annotations

import copy

import torch
from torch import nn

DEFAULT_DECAY = 0.999  # α of the paper (appendix B); the one home of this default


class EMA:
    """Exponential moving average of a model's weights.

    Args:
        model: the student. The teacher starts as a deep copy of it unless `teacher` is given
            (the authors' code starts from a separately initialized network).
        decay: alpha of Eq. 6. The effective decay is `min(1 - 1/(step + 1), decay)`, where `step`
            counts updates from 1: the true average while it is more accurate (official code).
        buffers: average floating buffers (BatchNorm running statistics) like parameters and copy
            integer ones (`num_batches_tracked`). False: parameters only, as the official code.
        teacher: an explicit initial teacher module (same architecture as the student).
    """

    def __init__(self, model: nn.Module, decay: float = DEFAULT_DECAY, *, buffers: bool = True,
                 teacher: nn.Module | None = None):
        self.decay = float(decay)
        self.buffers = bool(buffers)
        self.model = copy.deepcopy(model) if teacher is None else teacher
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.step = 0

    def alpha(self) -> float:
        return min(1.0 - 1.0 / (self.step + 1), self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step toward `model` (Eq. 6)."""
        self.step += 1
        a = self.alpha()
        for t, s in zip(self.model.parameters(), model.parameters()):
            t.lerp_(s.detach(), 1.0 - a)
        if self.buffers:
            for t, s in zip(self.model.buffers(), model.buffers()):
                if t.is_floating_point():
                    t.lerp_(s, 1.0 - a)
                else:
                    t.copy_(s)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "step": self.step, "decay": self.decay,
                "buffers": self.buffers}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.step = int(state["step"])
