"""When to stop labeling: an honest accuracy estimate, three stopping criteria, and one recommendation.

- The estimate: accuracy on a random validation slice (labels never trained on) with its 95% Wilson
  interval; the slice grows every step, so the interval narrows (half-width ~ 1.96·sqrt(p(1-p)/n)).
- *Stabilizing predictions* (Bloodgood & Vijay-Shanker, CoNLL 2009): Cohen's κ between the predictions of
  consecutive models on a fixed stop set of unlabeled samples; stop once the mean κ of the last `window` (3)
  steps reaches `threshold` (0.99).
- *Overall uncertainty* (Zhu, Wang & Hovy, 2008): the mean normalized entropy of the model's predictions on
  the pool; stop once it falls below `max_uncertainty`.
- *Plateau of the estimated accuracy*: the gain per 100 labels between the last two models, with a 95%
  interval. Both models are scored on the same validation labels (the items both steps had), so the gain is a
  paired difference: (newly right - newly wrong) / n, with Agresti and Min's interval (0.5 added to each cell),
  far narrower than two independent estimates' difference; diminishing once the upper bound is below
  `min_gain` points per 100 labels.

`recommend` turns them into "keep labeling", "diminishing returns" or "stop", with the numbers behind it.
Pure functions over tensors and numbers: the loop, the bench and projects feed them what they measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import Choice, Int, Real
from .settings import check, setting, to_dict

Z95 = 1.959963984540054


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion correct/n; (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def cohen_kappa(a: Tensor, b: Tensor, num_classes: int | None = None) -> float:
    """Cohen's κ between two label vectors `[n]`: (p_o - p_e) / (1 - p_e); 1.0 when both are one same class."""
    a, b = torch.as_tensor(a).long().flatten(), torch.as_tensor(b).long().flatten()
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"cohen_kappa needs two equally long, non-empty label vectors; got {len(a)} and {len(b)}.")
    c = int(num_classes or int(torch.maximum(a.max(), b.max())) + 1)
    conf = torch.bincount(a * c + b, minlength=c * c).reshape(c, c).double()
    n = conf.sum()
    p_o = conf.diag().sum() / n
    p_e = (conf.sum(1) * conf.sum(0)).sum() / n ** 2
    return 1.0 if float(p_e) >= 1.0 else float((p_o - p_e) / (1 - p_e))


def mean_uncertainty(probs: Tensor) -> float:
    """Overall uncertainty: the mean entropy of `[n, C]` class probabilities over log C (0: certain, 1: uniform)."""
    p = probs.double().clamp_min(1e-12)
    return float((-(p * p.log()).sum(1)).mean() / math.log(probs.shape[1]))


def gain_per_100(newly_right: int, newly_wrong: int, n: int, labels_added: int) -> tuple[float, float, float]:
    """Accuracy gained per 100 labels between two models scored on the same `n` validation items, in points, with
    a 95% interval: the paired difference (newly right - newly wrong) / n, Agresti-Min's adjusted Wald interval
    (0.5 added to each of the four cells), scaled to 100 labels."""
    b, c, m = newly_right + 0.5, newly_wrong + 0.5, n + 2.0
    d = (newly_right - newly_wrong) / max(n, 1)
    se = math.sqrt(max(b + c - (b - c) ** 2 / m, 0.0)) / m
    centre = (b - c) / m
    per = 100.0 * 100.0 / max(labels_added, 1)  # points per 100 labels
    return d * per, (centre - Z95 * se) * per, (centre + Z95 * se) * per


@dataclass
class StopRule:
    """The thresholds of the three criteria and which of them may end a run (`ActiveLoop(stop=...)`, `todal run
    --stop`)."""

    criterion: str = setting("kappa", Choice(("kappa", "uncertainty", "plateau", "any")),
                             "what ends a run early: kappa, uncertainty, plateau, or any of them")
    window: int = setting(3, Int(lo=1), "stabilizing predictions: steps whose mean κ is compared")
    threshold: float = setting(0.99, Real(lo=0, hi=1), "stabilizing predictions: the mean κ that stops")
    max_uncertainty: float = setting(0.05, Real(lo=0, hi=1), "overall uncertainty: the mean normalized entropy "
                                                             "below which it stops")
    min_gain: float = setting(1.0, Real(lo=0), "plateau: points per 100 labels the gain's upper bound must exceed")
    stop_set: int = setting(1000, Int(lo=10), "samples of the fixed stop set the predictions are compared on")

    def __post_init__(self):
        check(self)

    def to_dict(self) -> dict:
        return to_dict(self)


def criteria(history: list[dict], rule: StopRule) -> dict:
    """Each criterion's value and verdict after the last step of `history` (oldest first; each entry holds what a
    step measured: `kappa` vs the step before, `uncertainty`, `labels`, and `paired`: `(newly right, newly
    wrong, n)` on the validation items it shares with the step before)."""
    last = history[-1] if history else {}
    kappas = [h["kappa"] for h in history if h.get("kappa") is not None]
    recent = kappas[-rule.window:]
    kappa_mean = sum(recent) / len(recent) if len(recent) == rule.window else None
    out = {"kappa": last.get("kappa"), "kappa_mean": kappa_mean,
           "kappa_stop": kappa_mean is not None and kappa_mean >= rule.threshold,
           "uncertainty": last.get("uncertainty"),
           "uncertainty_stop": last.get("uncertainty") is not None and last["uncertainty"] < rule.max_uncertainty,
           "gain": None, "gain_low": None, "gain_high": None, "plateau": False}
    if len(history) >= 2 and last.get("paired") and last["paired"][2] > 0:
        right, wrong, n = last["paired"]
        gain, low, high = gain_per_100(right, wrong, n, last["labels"] - history[-2]["labels"])
        out.update(gain=gain, gain_low=low, gain_high=high, plateau=high < rule.min_gain)
    return out


def should_stop(c: dict, rule: StopRule) -> str | None:
    """Why a run configured with `rule` stops after a step with criteria `c`, or None to go on."""
    reasons = {"kappa": c["kappa_stop"] and f"predictions stabilized: mean κ {c['kappa_mean']:.4f} over the last "
                                            f"{rule.window} steps >= {rule.threshold}",
               "uncertainty": c["uncertainty_stop"] and f"overall uncertainty {c['uncertainty']:.4f} < "
                                                        f"{rule.max_uncertainty}",
               "plateau": c["plateau"] and f"accuracy plateau: gain {c['gain']:+.2f} points per 100 labels (95% "
                                           f"interval {c['gain_low']:+.2f} to {c['gain_high']:+.2f}) below "
                                           f"{rule.min_gain}"}
    names = list(reasons) if rule.criterion == "any" else [rule.criterion]
    return next((reasons[k] for k in names if reasons[k]), None)


def recommend(c: dict, rule: StopRule) -> tuple[str, str]:
    """`(verdict, sentence)`: "stop" when the model has settled (stabilizing predictions or low overall
    uncertainty) and the accuracy no longer rises beyond noise, "diminishing returns" when one of the two holds,
    else "keep labeling". The sentence gives each criterion's value, its threshold, and whether it is met."""
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    parts = []
    if c["kappa"] is not None:
        parts.append(f"κ between the last two models {c['kappa']:.3f}" + (
            f", mean {c['kappa_mean']:.3f} over {rule.window} steps (stop at {rule.threshold}: "
            f"{met(c['kappa_stop'])})"
            if c["kappa_mean"] is not None else f" (stop at a mean of {rule.threshold} over {rule.window} steps)"))
    if c["gain"] is not None:
        parts.append(f"accuracy {c['gain']:+.2f} points per 100 labels (95% interval {c['gain_low']:+.2f} to "
                     f"{c['gain_high']:+.2f}; plateau below {rule.min_gain:+.2f}: {met(c['plateau'])})")
    if c["uncertainty"] is not None:
        parts.append(f"pool uncertainty {c['uncertainty']:.3f} (stop below {rule.max_uncertainty}: "
                     f"{met(c['uncertainty_stop'])})")
    stable, flat = c["kappa_stop"] or c["uncertainty_stop"], c["plateau"]
    verdict = "stop" if stable and flat else "diminishing returns" if stable or flat else "keep labeling"
    return verdict, f"{verdict}: " + ("; ".join(parts) if parts else "not enough steps yet to judge") + "."


__all__ = ["StopRule", "cohen_kappa", "criteria", "gain_per_100", "mean_uncertainty", "recommend", "should_stop",
           "wilson"]
