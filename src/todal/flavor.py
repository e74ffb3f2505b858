"""Flavors: `"paper"` (the paper's equations), `"official"` (the authors' code), and `"default"`.

Every field of `Flavor` is one place where the paper and the code differ; nothing else changes with
the flavor. Where the paper is silent all follow the code (the model continues across cycles, the EMA
teacher persists, classification discrepancy is on softmax probabilities).

The default (`ActiveLoop()`, `todal run`, the bench's `cpu` protocols, labeling projects) is the paper
flavor with the three choices of the code that the evidence supports (the numbers are in the benchmarks
named, each beside the command that measured it):
- `consistency_reduction="mean"`: Eq. 7 averaged over the C outputs, as the code's `F.mse_loss`. Summed as
  printed, the paper's λ weighs the TOD loss C times the authors' (benchmarks/flavor-ablation);
- `first_cycle_lowest`, per task: in the first cycle, with only the untrained model to compare with, COD
  takes the lowest discrepancy for classification, as the code does; the highest (the text) picks the
  samples the model is already sure of (benchmarks/cod-first-cycle). For segmentation it takes the highest,
  as the text says: there the first pick's effect is seed-dependent and, paired over trials, no different
  from the lowest (benchmarks/segmentation-first-cycle, benchmarks/segmentation-first-pick), so it follows
  the paper;
- `teacher_train_mode=True`: the EMA teacher runs in train mode, normalising each unlabeled batch with that
  batch's statistics as the student does (the code). In eval mode its running statistics mix labeled and
  unlabeled batches, which COD makes differ, and cod + TOD loss diverged when every cycle was trained to
  convergence (benchmarks/converged-teacher-mode).
`flavor="paper"` keeps Eq. 7 as printed, the highest pick and an eval-mode teacher; `flavor="official"` is
the code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from collections.abc import Mapping

from .errors import Bool, Choice, Int, Real, TodalError, check_choice, param_error
from .settings import check, setting

# Official code, per dataset: λ (WEIGHT) and the size of the random unlabeled subset scored (SUBSET).
OFFICIAL_LAMBDA = {"cifar10": 0.02, "cifar100": 0.05, "svhn": 0.005, "caltech101": 0.1}
OFFICIAL_SUBSET = {"cifar10": 25000, "cifar100": 25000, "svhn": 29302, "caltech101": 4340}
# Official code quirk: these datasets are scored with the training augmentation.
OFFICIAL_SCORE_AUGMENT = ("svhn", "caltech101")
# What runs recorded before a choice was added to the flavor did (their config.json lacks it).
FLAVOR_BEFORE_CHOICES = {"consistency_reduction": "sum"}


@dataclass(frozen=True)
class Flavor:
    """The choices where the paper and the authors' code differ; the defaults are the paper's.

    consistency "cyclic" is the CyclicOD loss of Fig. 10 (in the first cycle, with no previous model, the
    task loss alone); `consistency_reduction` applies to "eq7" and "cyclic".
    """

    name: str = setting("paper", Choice(("paper", "default", "official")), "the flavor these choices start from")
    measure: str = setting("l2", Choice(("l2", "half_sq")),
                           "COD's value: l2 = ||.|| (Eq. 5) or half_sq = 0.5·||.||² (the code; same ranking)")
    score_subset: int | None = setting(None, Int(lo=1, optional=True, expected="an int >= 1 or None (the whole pool)"),
                                       "score a random subset of this many unlabeled samples (None: all)")
    first_cycle_lowest: bool = setting(False, Bool(),
                                       "COD's first selection, against the untrained model: the lowest (the code)")
    first_reference: str = setting("initial", Choice(("initial", "independent")),
                                   "COD's cycle-0 reference: the initial weights, or an independently initialized net")
    consistency: str = setting("eq7", Choice(("eq7", "official", "cyclic")),
                               "the TOD loss: eq7 against the EMA teacher, official (two heads), cyclic (Fig. 10)")
    consistency_reduction: str = setting("sum", Choice(("sum", "mean")),
                                         "Eq. 7 over the C outputs: sum (as printed) or mean (the code)")
    lam: float = setting(0.05, Real(lo=0), "λ of Eq. 9, the weight of the TOD loss")
    ema_init: str = setting("copy", Choice(("copy", "independent")),
                            "the EMA teacher starts as a copy of the student, or independently initialized")
    ema_buffers: bool = setting(True, Bool(), "the teacher averages BatchNorm buffers too (the code: parameters only)")
    teacher_train_mode: bool = setting(False, Bool(), "the teacher runs in train mode (batch statistics)")
    score_augment: bool = setting(False, Bool(), "score with the training augmentation (a quirk of the code)")

    def __post_init__(self):
        check(self)

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
            raise TodalError(f"Unknown flavor choice {unknown[0]!r}; valid: {', '.join(choices)}.")
        out = dataclasses.replace(self, **changes)
        if not out.ema_buffers and not out.teacher_train_mode:
            # measured (benchmarks/flavor-ablation, "teacher: parameters only"): an eval-mode teacher
            # with its BatchNorm statistics left at initialisation diverges to NaN within 6 cycles
            raise TodalError("The flavor choice ema_buffers=False needs teacher_train_mode=True: an eval-mode "
                             "teacher would normalise with never-updated BatchNorm statistics and diverge; "
                             "set both, as the authors' code does, or keep ema_buffers=True.")
        return out


# Whether runs train with the TOD loss when nobody says (`ActiveLoop(semi_supervised=None)`, `todal run`,
# `make demo`), per task: the evidence, with the numbers, is in README's Results and the reports it links.
# Classification: off. Trained to convergence (benchmarks/fashion-mnist-converged, 6 paired trials) COD sampling
# alone beats COD with the TOD loss; on the short `cpu` protocol (benchmarks/fashion-mnist-cpu-default, 6 trials,
# trials 3-5 fresh seeds) the loss adds nothing beyond noise, and it costs a second forward pass per step.
# Segmentation: likewise off (benchmarks/fashion-mnist-scenes-default): COD with and without it are level.
DEFAULT_SEMI = {"classification": False, "segmentation": False}

FLAVORS = ("default", "paper", "official")
DEFAULT = "default"


def flavor_for(name: str, dataset: str = "", task: str = "classification") -> Flavor:
    """The flavor's choices for a dataset (λ and the scored subset depend on it in the code) and, for the
    default, the task (COD's first pick: lowest for classification, highest for segmentation)."""
    check_choice("flavor", "ActiveLoop", name, FLAVORS)
    key = dataset.lower().replace("-", "").replace("_", "")
    if name == "default":
        return Flavor(name="default", consistency_reduction="mean", first_cycle_lowest=task != "segmentation",
                      teacher_train_mode=True)
    if name == "paper":
        return Flavor(name="paper")
    return Flavor(name="official", measure="half_sq", score_subset=OFFICIAL_SUBSET.get(key, 25000),
                  first_cycle_lowest=True, first_reference="independent", consistency="official",
                  consistency_reduction="mean",
                  lam=OFFICIAL_LAMBDA.get(key, 0.05), ema_init="independent", ema_buffers=False,
                  teacher_train_mode=True, score_augment=key in OFFICIAL_SCORE_AUGMENT)


def resolve(spec: str | Flavor | Mapping, dataset: str = "", owner: str = "ActiveLoop",
            task: str = "classification") -> Flavor:
    """A flavor from its name (resolved for `dataset`), a `Flavor` (as it is), or a dict of single choices over
    a named one: `{"name": "official", "lam": 0.1}` (the name defaults to "default")."""
    if isinstance(spec, Flavor):
        return spec
    if isinstance(spec, str):
        return flavor_for(spec, dataset, task)
    if isinstance(spec, Mapping):
        changes = dict(spec)
        return flavor_for(changes.pop("name", DEFAULT), dataset, task).replace(**changes)
    raise param_error("flavor", owner, "a flavor name (" + ", ".join(FLAVORS) + "), a todal.flavor.Flavor, or a dict "
                      "of its choices such as {'name': 'official', 'lam': 0.1}", spec)
