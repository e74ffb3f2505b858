"""Flavors: `"paper"` (the paper's equations), `"official"` (the authors' code), and `"default"`.

Every field of `Flavor` is one place where the paper and the code differ; nothing else changes with
the flavor. Where the paper is silent all follow the code (the model continues across cycles, the EMA
teacher persists, classification discrepancy is on softmax probabilities).

The default (`ActiveLoop()`, `todal run`, the bench's `cpu` protocols, labeling projects) is the paper
flavor with the three choices of the code that the evidence says matter, the first two measured one at a
time on the `cpu` protocol, 3 paired trials (benchmarks/flavor-ablation, benchmarks/cod-first-cycle), the
third on the `converged` protocol (benchmarks/converged-teacher-mode):
- `consistency_reduction="mean"`: Eq. 7 averaged over the C outputs, as the code's `F.mse_loss`. As
  printed, Eq. 7 sums them, which at the paper's λ = 0.05 weighs the TOD loss C times the authors' (10x
  on 10 classes) and made cod + TOD loss end 2 points below random;
- `first_cycle_lowest=True`: in the first cycle, with only the untrained model to compare with, COD
  takes the lowest discrepancy as the code does; the highest (the text) labels the samples the model is
  already sure of (Spearman with the true loss -0.86);
- `teacher_train_mode=True`: the EMA teacher runs in train mode, normalising each unlabeled batch with
  that batch's statistics as the student does (the code). In eval mode, its running statistics mix the
  labeled and the unlabeled batches; once COD has labeled the samples that moved most, the two differ, the
  eval-mode teacher's outputs differ from the train-mode student's by more than any weights can close,
  and in the paper's regime (training to convergence every cycle) cod + TOD loss diverged from the 5th
  cycle in 3 of 3 trials (training loss 0.4 -> 16-44, logits growing 8 -> 140), train mode did not.
`flavor="paper"` keeps Eq. 7 as printed, the highest pick and an eval-mode teacher; `flavor="official"` is
the code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import TodalError, check_choice

# Official code, per dataset: λ (WEIGHT) and the size of the random unlabeled subset scored (SUBSET).
OFFICIAL_LAMBDA = {"cifar10": 0.02, "cifar100": 0.05, "svhn": 0.005, "caltech101": 0.1}
OFFICIAL_SUBSET = {"cifar10": 25000, "cifar100": 25000, "svhn": 29302, "caltech101": 4340}
# Official code quirk: these datasets are scored with the training augmentation.
OFFICIAL_SCORE_AUGMENT = ("svhn", "caltech101")
# What runs recorded before a choice was added to the flavor did (their config.json lacks it).
FLAVOR_BEFORE_CHOICES = {"consistency_reduction": "sum"}


@dataclass(frozen=True)
class Flavor:
    """Resolved choices for one flavor (see DESIGN.md, "the official code").

    measure: discrepancy value, "l2" = ||·|| (Eq. 5) or "half_sq" = 0.5·||·||² (same ranking).
    score_subset: score a random subset of this many unlabeled samples (None: the whole pool).
    first_cycle_lowest: in the first cycle select the LOWEST discrepancy (the code) not the highest.
    first_reference: cycle-0 COD reference, "initial" = the student's own initial weights (paper),
        "independent" = a separately initialized network (code).
    consistency: "eq7" = Eq. 7 on the unlabeled batch, or "official" = MSE of a second head
        against the teacher on labeled and unlabeled batches plus MSE between the two heads, or
        "cyclic" = Eq. 7 against the previous cycle's model instead of the EMA teacher (the CyclicOD
        loss of Fig. 10; the first cycle, with no previous model, trains on the task loss only).
    consistency_reduction: Eq. 7 over the C outputs, "sum" (the squared norm, as printed) or "mean"
        (the code's `F.mse_loss`, C times weaker at the same λ). Used by consistency "eq7" and "cyclic".
    lam: λ of Eq. 9.
    ema_init: "copy" of the student, or "independent" initialization (code).
    ema_buffers: average BatchNorm buffers too (paper), or parameters only (code).
    teacher_train_mode: run the teacher in train mode, batch statistics (code), or eval mode.
    score_augment: score with the training augmentation (code quirk on SVHN and Caltech-101).
    """

    name: str
    measure: str
    score_subset: int | None
    first_cycle_lowest: bool
    first_reference: str
    consistency: str
    consistency_reduction: str
    lam: float
    ema_init: str
    ema_buffers: bool
    teacher_train_mode: bool
    score_augment: bool

    def consistency_objective(self, ema_teacher, previous=None):
        """The unsupervised loss of Eq. 9 this flavor trains with: Eq. 7 against the EMA teacher (summed or
        averaged over outputs), the authors' two-head form, or the CyclicOD loss against the previous cycle's
        model (`previous`; None in the first cycle: no unsupervised loss then)."""
        from .objectives import Eq7Consistency, OfficialConsistency

        if self.consistency == "cyclic":
            return None if previous is None else Eq7Consistency(previous, self.lam, reduction=self.consistency_reduction,
                                                                teacher_train_mode=self.teacher_train_mode)
        if self.consistency == "official":
            return OfficialConsistency(ema_teacher, self.lam, teacher_train_mode=self.teacher_train_mode)
        return Eq7Consistency(ema_teacher, self.lam, reduction=self.consistency_reduction,
                              teacher_train_mode=self.teacher_train_mode)

    def replace(self, **changes) -> Flavor:
        """This flavor with single choices changed; an unknown one is refused, naming the valid ones."""
        choices = [f.name for f in dataclasses.fields(self) if f.name != "name"]
        unknown = sorted(set(changes) - set(choices))
        if unknown:
            raise TodalError(f"unknown flavor_overrides {unknown}; valid: {', '.join(choices)}.")
        out = dataclasses.replace(self, **changes)
        if not out.ema_buffers and not out.teacher_train_mode:
            # measured (benchmarks/flavor-ablation, "teacher: parameters only"): an eval-mode teacher
            # with its BatchNorm statistics left at initialisation diverges to NaN within 6 cycles
            raise TodalError("flavor_overrides ema_buffers=False needs teacher_train_mode=True: an eval-mode "
                             "teacher would normalise with never-updated BatchNorm statistics and diverge; "
                             "set both, as the authors' code does, or keep ema_buffers=True.")
        return out


FLAVORS = ("default", "paper", "official")
DEFAULT = "default"


def flavor_for(name: str, dataset: str = "") -> Flavor:
    """The flavor's choices for a dataset (λ and the scored subset depend on it in the code)."""
    check_choice("flavor", "ActiveLoop", name, FLAVORS)
    key = dataset.lower().replace("-", "").replace("_", "")
    if name == "default":
        return dataclasses.replace(flavor_for("paper"), name="default", consistency_reduction="mean",
                                   first_cycle_lowest=True, teacher_train_mode=True)
    if name == "paper":
        return Flavor(name="paper", measure="l2", score_subset=None, first_cycle_lowest=False,
                      first_reference="initial", consistency="eq7", consistency_reduction="sum", lam=0.05,
                      ema_init="copy",
                      ema_buffers=True, teacher_train_mode=False, score_augment=False)
    return Flavor(name="official", measure="half_sq", score_subset=OFFICIAL_SUBSET.get(key, 25000),
                  first_cycle_lowest=True, first_reference="independent", consistency="official",
                  consistency_reduction="mean",
                  lam=OFFICIAL_LAMBDA.get(key, 0.05), ema_init="independent", ema_buffers=False,
                  teacher_train_mode=True, score_augment=key in OFFICIAL_SCORE_AUGMENT)
