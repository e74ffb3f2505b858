"""Adversarial selection: a VAE and a labeled/unlabeled discriminator on its latent means.

VAAL (Sinha et al., ICCV 2019) trains a β-VAE on labeled and unlabeled inputs while a discriminator
learns to tell their latent means apart; the VAE also tries to fool it. The unlabeled samples the
discriminator rates least likely to be labeled are queried. SRAAL relabels the discriminator's
target for unlabeled samples with an uncertainty score of the task model; TA-VAAL feeds LL4AL's
predicted loss into the VAE decoder and the discriminator.

Constants of the authors' code (github.com/sinhasam/vaal: `solver.py`, `model.py`, `arguments.py`):
z_dim 32, β 1, adversary weight 1, Adam lr 5e-4 for the VAE and the discriminator, batch 128,
2 VAE steps and 1 discriminator step per iteration, (50000·100 epochs)/128 ≈ 39k iterations per
cycle; VAE loss MSE(mean) + β·KL(summed over batch and latent); VAE: four 4x4 stride-2 convs
(widths 128, 256, 512, 1024, BatchNorm, ReLU) on 32x32 inputs, decoder Linear -> 1024x4x4 -> three
4x4 stride-2 transposed convs -> 1x1 conv; discriminator z -> 512 -> 512 -> 512 -> 512 -> 1;
Kaiming-normal init; new networks every cycle; query = lowest D(μ). The CPU defaults here are
smaller (`width` 8: convs 8..64; discriminator width 128; 8x8 images at 16x16; 10 to 100 iterations of
batch 64): about a minute per selection on a 56,000-image pool on 2 CPU cores. The paper's values
are options: width=128, disc_width=512, image_size=32, batch_size=128, iterations=39000.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import Int, Real, TodalError, check_number, validate
from ..inference import fetch
from . import register
from .base import Context, RowWriter, ScoreStrategy
from .learning_loss import DETACH_AT, HIDDEN, MARGIN, WEIGHT, LearningLoss

# ---------------------------------------------------------------- pure losses and scores


def kl_divergence(mu: Tensor, logvar: Tensor, reduction: str = "sum") -> Tensor:
    """KL(N(μ, e^logvar) || N(0, I)) = -½ Σ (1 + logvar - μ² - e^logvar) over `[B, z]`.

    `reduction` "sum" (over batch and latent: VAAL's code) or "mean" (TA-VAAL's code).
    """
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    return kl.sum() if reduction == "sum" else kl.mean()


def vae_loss(x: Tensor, recon: Tensor, mu: Tensor, logvar: Tensor, beta: float = 1.0,
             kl_reduction: str = "sum") -> Tensor:
    """Mean squared reconstruction error + β·KL (the authors' `vae_loss`)."""
    return F.mse_loss(recon, x) + beta * kl_divergence(mu, logvar, kl_reduction)


def adversary_loss(d_labeled: Tensor, d_unlabeled: Tensor) -> Tensor:
    """The VAE's adversarial term, BCE(D(μ_l), 1) + BCE(D(μ_u), 1), on discriminator logits."""
    return (F.binary_cross_entropy_with_logits(d_labeled, torch.ones_like(d_labeled))
            + F.binary_cross_entropy_with_logits(d_unlabeled, torch.ones_like(d_unlabeled)))


def discriminator_loss(d_labeled: Tensor, d_unlabeled: Tensor, unlabeled_state: Tensor | None = None) -> Tensor:
    """BCE(D(μ_l), 1) + BCE(D(μ_u), s_u) on logits: s_u = 0 (VAAL) or SRAAL's relabeled state."""
    state = torch.zeros_like(d_unlabeled) if unlabeled_state is None else unlabeled_state.reshape(d_unlabeled.shape)
    return (F.binary_cross_entropy_with_logits(d_labeled, torch.ones_like(d_labeled))
            + F.binary_cross_entropy_with_logits(d_unlabeled, state))


def online_uncertainty(probs: Tensor) -> Tensor:
    """SRAAL's online uncertainty indicator, `[N, C, *S]` probabilities -> `[N]` in [0, 1).

    ind(P) = 1 - max(P) · minVar(P) / Var(P), where Var is the variance over the C classes and
    minVar(P) = ((max P - 1/C)² + (C-1)·((1 - max P)/(C-1) - 1/C)²) / C is the least variance any
    probability vector with the same maximum can have. One-hot -> 0, uniform -> 1 - 1/C (a uniform
    P is its own least-variance vector). Dense outputs: pixel mean.
    """
    p = probs.float().movedim(1, -1)  # (N, *S, C)
    c = p.shape[-1]
    top = p.max(-1).values
    var = (p - 1.0 / c).pow(2).mean(-1)
    rest = (1.0 - top) / max(c - 1, 1)  # the other classes share the remaining mass equally
    min_var = ((top - 1.0 / c).pow(2) + (c - 1) * (rest - 1.0 / c).pow(2)) / c
    ratio = torch.where(var > 1e-12, min_var / var.clamp_min(1e-12), torch.ones_like(var)).clamp(max=1.0)
    ind = 1.0 - top * ratio
    return ind if ind.dim() == 1 else ind.flatten(1).mean(1)


# ---------------------------------------------------------------- networks


def _kaiming(module: nn.Module) -> None:
    """The authors' `kaiming_init`: Kaiming-normal Linear/Conv2d weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _VAE(nn.Module):
    """Encoder -> (μ, logvar) -> z (+ condition) -> decoder; subclasses set the layers and `prepare`."""

    encoder: nn.Module
    decoder: nn.Module

    def prepare(self, x: Tensor) -> Tensor:
        """The input as the VAE sees it (resized or flattened): also the reconstruction target."""
        return x

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def forward(self, x: Tensor, noise: torch.Generator, cond: Tensor | None = None):
        """`(recon, z, μ, logvar)`; the reparameterization noise comes from `noise`."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn(mu.shape, generator=noise, device=mu.device, dtype=mu.dtype) * (0.5 * logvar).exp()
        return self.decoder(z if cond is None else torch.cat([z, cond], 1)), z, mu, logvar


class ConvVAE(_VAE):
    """The authors' conv VAE with widths w, 2w, 4w, 8w (paper: w = 128) on `size` x `size` inputs."""

    def __init__(self, channels: int, z_dim: int, width: int, size: int, cond_dim: int = 0):
        super().__init__()
        w, self.size = width, size
        layers, c_in = [], channels
        for c_out in (w, 2 * w, 4 * w, 8 * w):  # each halves H and W: size -> size/16
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
            c_in = c_out
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        flat = 8 * w * (size // 16) ** 2
        self.fc_mu, self.fc_logvar = nn.Linear(flat, z_dim), nn.Linear(flat, z_dim)
        s = size // 8
        self.decoder = nn.Sequential(
            nn.Linear(z_dim + cond_dim, 8 * w * s * s), nn.Unflatten(1, (8 * w, s, s)),  # (B, 8w, size/8, size/8)
            nn.ConvTranspose2d(8 * w, 4 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(True),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(True),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),
            nn.ConvTranspose2d(w, channels, 1),  # (B, C, size, size)
        )

    def prepare(self, x: Tensor) -> Tensor:
        x = x.float()
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


class MLPVAE(_VAE):
    """VAE for flat `[B, D]` inputs: D -> 4w -> 2w -> z and back."""

    def __init__(self, dim: int, z_dim: int, width: int, cond_dim: int = 0):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, 4 * width), nn.ReLU(True), nn.Linear(4 * width, 2 * width),
                                     nn.ReLU(True))
        self.fc_mu, self.fc_logvar = nn.Linear(2 * width, z_dim), nn.Linear(2 * width, z_dim)
        self.decoder = nn.Sequential(nn.Linear(z_dim + cond_dim, 2 * width), nn.ReLU(True),
                                     nn.Linear(2 * width, 4 * width), nn.ReLU(True), nn.Linear(4 * width, dim))

    def prepare(self, x: Tensor) -> Tensor:
        return x.float().flatten(1)


def build_networks(arch: dict) -> nn.ModuleDict:
    """The VAE, the discriminator (logits) and, for SRAAL, the target-learner head, from `arch`."""
    cond = arch.get("cond_dim", 0)
    if arch["kind"] == "conv":
        vae = ConvVAE(arch["channels"], arch["z_dim"], arch["width"], arch["size"], cond)
    else:
        vae = MLPVAE(arch["dim"], arch["z_dim"], arch["width"], cond)
    w, layers, d_in = arch["disc_width"], [], arch["z_dim"] + arch.get("disc_extra", 0)
    for _ in range(arch["disc_depth"]):
        layers += [nn.Linear(d_in, w), nn.ReLU(True)]
        d_in = w
    nets = nn.ModuleDict({"vae": vae, "discriminator": nn.Sequential(*layers, nn.Linear(d_in, 1))})
    if arch.get("classes", 0):
        nets["sti"] = nn.Sequential(nn.Linear(arch["z_dim"], 4 * arch["width"]), nn.ReLU(True),
                                    nn.Linear(4 * arch["width"], arch["classes"]))
    _kaiming(nets)
    return nets


# ---------------------------------------------------------------- strategies


_ADVERSARIAL_RULES = {
    "iterations": Int(lo=1, optional=True), "batch_size": Int(lo=1), "z_dim": Int(lo=1), "width": Int(lo=1),
    "disc_width": Int(lo=1), "beta": Real(lo=0), "adversary_weight": Real(lo=0), "lr": Real(lo=0, lo_open=True),
    "image_size": Int(lo=16, multiple_of=16, optional=True, expected="None or a multiple of 16 (16, 32, 64, ...)",
                      fix="The VAE's four stride-2 convolutions need it; the authors use 32."),
}


class _Adversarial(ScoreStrategy):
    """VAAL's training and scoring; SRAAL and TA-VAAL override the hooks (`_side` and after).

    Options:
        iterations: training iterations; None: two passes over labeled + candidates in batches,
            clipped to [10, 100] (the authors: 100 epochs of the training set, ≈39k on CIFAR-10).
        batch_size: labeled and unlabeled samples per step (authors: 128).
        z_dim: latent size (authors: 32). width: first conv width w, convs w..8w (authors: 128, 8 here);
            for flat inputs the MLP's hidden sizes are 4w and 2w.
        disc_width: discriminator hidden width (authors: 512; 128 here for the CPU).
        image_size: side images are resized to, a multiple of 16 (authors: 32, their stack's input);
            None: 16 for images up to 16x16 (digits), else 32.
        beta: KL weight (authors: 1). adversary_weight: the VAE's adversarial term (authors: 1).
        lr: Adam learning rate of both networks (authors: 5e-4).
    """

    shardable = False  # trains its own selector on every feature: rank 0 alone in data-parallel runs

    reference = "Sinha, Ebrahimi, Darrell, Variational Adversarial Active Learning, ICCV 2019"
    vae_steps: ClassVar[int] = 2
    adv_steps: ClassVar[int] = 1
    disc_depth: ClassVar[int] = 4
    kl_reduction: ClassVar[str] = "sum"
    cond_dim: ClassVar[int] = 0  # extra decoder inputs (TA-VAAL's ranker score)
    disc_extra: ClassVar[int] = 0  # extra discriminator inputs

    def __init__(self, *, iterations: int | None = None, batch_size: int = 64, z_dim: int = 32, width: int = 8,
                 disc_width: int = 128, image_size: int | None = None, beta: float = 1.0, adversary_weight: float = 1.0,
                 lr: float = 5e-4, **unknown):
        super().__init__(**unknown)  # unknown options: one TodalError naming the first
        vars(self).update(validate(f"strategy {self.name!r}", _ADVERSARIAL_RULES, iterations=iterations,
                                   batch_size=batch_size, z_dim=z_dim, width=width, disc_width=disc_width,
                                   image_size=image_size, beta=beta, adversary_weight=adversary_weight, lr=lr))
        self.arch_: dict | None = None
        self.nets_: dict | None = None

    # ---- hooks (VAAL: no side information)

    def _side(self, ctx: Context, candidates: Tensor) -> dict:
        """Per-sample tensors the losses need, aligned with `ctx.labeled` ("l") and `candidates` ("u")."""
        return {}

    def _cond(self, side: dict, part: str, pos: Tensor) -> Tensor | None:
        """Extra decoder input for samples `pos` of `part`, or None."""
        return None

    def _disc_input(self, mu: Tensor, side: dict, part: str, pos: Tensor) -> Tensor:
        return mu

    def _unlabeled_state(self, side: dict, pos: Tensor) -> Tensor | None:
        """Discriminator target of unlabeled samples: None means 0."""
        return None

    def _extra_loss(self, nets: nn.ModuleDict, side: dict, pos: Tensor, z: Tensor) -> Tensor | float:
        """An extra generator loss on the labeled batch (SRAAL's target learner)."""
        return 0.0

    def _classes(self, ctx: Context) -> int:
        return 0

    # ---- training

    def _inputs(self, ctx: Context, idx: Tensor) -> Tensor:
        return ctx.transform(fetch(ctx.dataset, idx)[0]).float().to(ctx.device)

    def _arch(self, ctx: Context) -> dict:
        probe = self._inputs(ctx, ctx.labeled[:1])
        arch = {"z_dim": self.z_dim, "width": self.width, "disc_width": self.disc_width,
                "disc_depth": self.disc_depth, "cond_dim": self.cond_dim, "disc_extra": self.disc_extra,
                "classes": self._classes(ctx)}
        if probe.dim() == 4:
            size = self.image_size or (16 if max(probe.shape[-2:]) <= 16 else 32)
            return {**arch, "kind": "conv", "channels": int(probe.shape[1]), "size": size}
        return {**arch, "kind": "mlp", "dim": int(probe[0].numel())}

    def _num_iterations(self, n: int) -> int:
        if self.iterations is not None:
            return self.iterations
        return min(100, max(10, math.ceil(2 * n / self.batch_size)))

    def _generator_loss(self, nets, side, noise, pl, pu, xl, xu) -> Tensor:
        vae, disc = nets["vae"], nets["discriminator"]
        xl, xu = vae.prepare(xl), vae.prepare(xu)
        rec_l, z_l, mu_l, lv_l = vae(xl, noise, self._cond(side, "l", pl))
        rec_u, _, mu_u, lv_u = vae(xu, noise, self._cond(side, "u", pu))
        loss = (vae_loss(xl, rec_l, mu_l, lv_l, self.beta, self.kl_reduction)
                + vae_loss(xu, rec_u, mu_u, lv_u, self.beta, self.kl_reduction))
        adv = adversary_loss(disc(self._disc_input(mu_l, side, "l", pl)), disc(self._disc_input(mu_u, side, "u", pu)))
        return loss + self.adversary_weight * adv + self._extra_loss(nets, side, pl, z_l)

    def _discriminator_loss(self, nets, side, pl, pu, xl, xu) -> Tensor:
        vae, disc = nets["vae"], nets["discriminator"]
        with torch.no_grad():
            mu_l = vae.encode(vae.prepare(xl))[0]
            mu_u = vae.encode(vae.prepare(xu))[0]
        return discriminator_loss(disc(self._disc_input(mu_l, side, "l", pl)),
                                  disc(self._disc_input(mu_u, side, "u", pu)), self._unlabeled_state(side, pu))

    def _train(self, ctx: Context, unlabeled: Tensor, side: dict) -> tuple[nn.ModuleDict, dict]:
        """Fresh networks (seeded from ctx.generator) trained on labeled vs `unlabeled` batches."""
        labeled, g = ctx.labeled, ctx.generator
        arch = self._arch(ctx)
        with ctx.seeded() as seed:
            nets = build_networks(arch)
        nets.to(ctx.device).train()
        noise = torch.Generator(device=ctx.device).manual_seed(seed + 1)
        gen_params = [p for k, m in nets.items() if k != "discriminator" for p in m.parameters()]
        opt_g = torch.optim.Adam(gen_params, lr=self.lr)
        opt_d = torch.optim.Adam(nets["discriminator"].parameters(), lr=self.lr)

        def positions(n: int) -> Tensor:
            p = torch.randperm(n, generator=g)[: self.batch_size]
            return p.repeat(2) if len(p) == 1 else p  # BatchNorm needs two values per channel

        def draw():
            pl, pu = positions(len(labeled)), positions(len(unlabeled))
            return pl, pu, self._inputs(ctx, labeled[pl]), self._inputs(ctx, unlabeled[pu])

        for _ in range(self._num_iterations(len(labeled) + len(unlabeled))):
            for _ in range(self.vae_steps):
                batch = draw()
                loss = self._generator_loss(nets, side, noise, *batch)
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_g.step()
            for step in range(self.adv_steps):
                if step > 0:  # the first discriminator step reuses the last VAE batch (authors' code)
                    batch = draw()
                loss = self._discriminator_loss(nets, side, *batch)
                opt_d.zero_grad(set_to_none=True)
                loss.backward()
                opt_d.step()
        return nets.eval(), arch

    @torch.no_grad()
    def _labeled_probability(self, ctx: Context, nets: nn.ModuleDict, candidates: Tensor, side: dict) -> Tensor:
        """`[n]` D(μ(x)) = the discriminator's probability that each candidate is labeled."""
        vae, disc, out = nets["vae"], nets["discriminator"], RowWriter(len(candidates))
        for _, x in ctx.batches(candidates, f"scoring {self.name}"):
            pos = torch.arange(out.pos, out.pos + len(x))
            mu = vae.encode(vae.prepare(x.float()))[0]
            out.add(torch.sigmoid(disc(self._disc_input(mu, side, "u", pos))).flatten())
        return out.result()

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        """1 - D(μ(x)): the candidates the discriminator rates least likely to be labeled score highest."""
        if len(ctx.labeled) == 0:
            raise TodalError(f"Strategy {self.name!r} needs labeled samples to train its discriminator; start "
                             "with initial >= 1 labeled samples.")
        side = {k: v.to(ctx.device) for k, v in self._side(ctx, candidates).items()}
        nets, arch = self._train(ctx, candidates, side)
        p_labeled = self._labeled_probability(ctx, nets, candidates, side)
        self.arch_ = arch
        self.nets_ = {k: v.detach().cpu().clone() for k, v in nets.state_dict().items()}
        return 1.0 - p_labeled

    # ---- state

    def networks(self) -> nn.ModuleDict | None:
        """The networks of the last selection, rebuilt on the CPU in eval mode (None before any)."""
        if self.arch_ is None:
            return None
        nets = build_networks(self.arch_)
        nets.load_state_dict(self.nets_)
        return nets.eval()

    def state_dict(self) -> dict:
        return {} if self.arch_ is None else {"arch": dict(self.arch_), "nets": dict(self.nets_)}

    def load_state_dict(self, state: dict) -> None:
        if not state or state.get("arch") is None:
            self.arch_, self.nets_ = None, None
            return
        self.arch_, self.nets_ = dict(state["arch"]), dict(state["nets"])
        self.networks()  # fails now, not at the next use, if the state does not fit the architecture


@register
class VAAL(_Adversarial):
    """Variational Adversarial Active Learning (see the module docstring for the authors' constants).

    Departures: the task model is not used (as in VAAL, whose task model trains separately); batches
    are drawn without replacement within a batch but independently per step (the authors cycle
    through shuffled loaders); the networks score in eval mode (the authors' sampler left them in
    train mode, so BatchNorm used batch statistics); the discriminator emits logits and the BCE
    takes logits (same loss, stable); CPU-sized defaults as listed in `_Adversarial`.
    """

    name = "vaal"
    description = "VAE + discriminator: picks samples the discriminator rates least likely labeled"


@register
class SRAAL(_Adversarial):
    """State-Relabeling Adversarial Active Learning (Zhang et al., CVPR 2020).

    VAAL's generator and discriminator, plus (1) the online uncertainty indicator
    `online_uncertainty` of the task model's probabilities, which relabels the discriminator's
    target for unlabeled samples from VAAL's hard 0 to the state 1 - ind(P) (confident predictions
    look labeled, ind = 1 keeps VAAL's 0), and (2) the unified representation generator: the
    encoder feeds the unsupervised image reconstructor (VAAL's decoder, loss MSE + β·KL) and a
    supervised target learner (a classifier head on z, cross-entropy on the labeled batch, weight
    `sti_weight`). Selection: lowest D(μ) among the candidates.

    Sources: the paper's equations could not be read here (only its abstract, which names the
    OUI, the relabeling and the generator), and the authors released no code we could find. The
    indicator and the relabeled target follow the third-party reimplementation
    wenxuanou/SRAAL_Realization (`utils.getUncertainty`, `main.py`), whose comments quote the
    paper's unlabeled term as -E log(ind - D(z_u)); it trains, as here, BCE against the soft
    target 1 - ind (VAAL's term when ind = 1). Not verified: that reading of the loss, the weights
    λ of the generator loss (all 1 here), the target learner's head (z -> 4w -> C here) and whether
    its loss repeats the KL (not here: the reconstructor's loss has it on the shared encoder). The
    paper's initial-pool sampling is not part of a selection strategy. The task model is fixed
    during selection, so the indicator is computed once per selection (in the paper it moves with
    the task model's training).
    Segmentation: the indicator is the pixel mean of the per-pixel indicator, computed batch by
    batch (`ctx.per_sample`), so no pool-wide dense outputs are held; the target learner is off
    (labels are maps).
    """

    name = "sraal"
    description = "VAAL whose unlabeled targets are relabeled by the task model's uncertainty (OUI)"
    reference = "Zhang et al., State-Relabeling Adversarial Active Learning, CVPR 2020"

    def __init__(self, *, sti_weight: float = 1.0, **options):
        super().__init__(**options)
        self.sti_weight = check_number("sti_weight", f"strategy {self.name!r}", sti_weight, lo=0)

    def _classes(self, ctx: Context) -> int:
        return int(ctx.task.num_classes) if ctx.labels.dim() == 1 and self.sti_weight > 0 else 0

    def _side(self, ctx: Context, candidates: Tensor) -> dict:
        # per batch: one batch of (dense) outputs at a time, whatever the pool size
        ind = ctx.per_sample(lambda out: online_uncertainty(ctx.task.probs(out)), [ctx.model], candidates,
                             "SRAAL uncertainty")
        side = {"state_u": 1.0 - ind}
        if ctx.labels.dim() == 1:  # class labels, for the target learner (label maps are not read)
            side["y_l"] = ctx.labels.long()
        return side

    def _unlabeled_state(self, side: dict, pos: Tensor) -> Tensor:
        return side["state_u"][pos.to(side["state_u"].device)].unsqueeze(1)

    def _extra_loss(self, nets: nn.ModuleDict, side: dict, pos: Tensor, z: Tensor) -> Tensor | float:
        if "sti" not in nets:
            return 0.0
        return self.sti_weight * F.cross_entropy(nets["sti"](z), side["y_l"][pos.to(z.device)])


@register
class TAVAAL(_Adversarial):
    """Task-Aware VAAL (Kim et al., CVPR 2021): VAAL conditioned on LL4AL's predicted loss.

    Holds a `LearningLoss` ranker: its loss-prediction module trains with the task model through
    `objectives()`, and `predicted_loss` gives r for the labeled samples and the candidates once
    per selection. As in the authors' code (cubeyoung/TA-VAAL, `selection_methods.py`,
    `models/query_models.py`): the decoder reads z ⊕ sigmoid(r), the discriminator reads μ ⊕ r
    (raw), z+1 -> 512 -> 512 -> 1; one VAE and one discriminator step per iteration; KL averaged
    (`torch.mean`) instead of VAAL's sum; β 1, adversary weight 1, Adam 5e-4 for both; fresh VAE
    and discriminator every cycle trained on the labeled set vs the scored subset (SUBSET 10,000)
    for (labeled + SUBSET)·100 epochs / 128 iterations; query = lowest D(μ, r).
    Departures: the authors' first iteration feeds uniform random r instead of the ranker's (not
    reproduced); Fashion-MNIST there uses a 28x28 stack with z_dim 28, here inputs are resized to
    `image_size`; CPU-sized defaults as in VAAL. Options: VAAL's, plus LL4AL's (layers, hidden,
    margin, weight, detach_at), passed to the ranker.
    """

    name = "ta_vaal"
    description = "VAAL whose VAE and discriminator also see LL4AL's predicted loss (task-aware)"
    reference = "Kim, Park, Kim, Chun, Task-Aware Variational Adversarial Active Learning, CVPR 2021"
    vae_steps = 1
    adv_steps = 1
    disc_depth = 2
    kl_reduction = "mean"
    cond_dim = 1
    disc_extra = 1

    def __init__(self, *, layers: list[str] | None = None, hidden: int = HIDDEN, margin: float = MARGIN,
                 weight: float = WEIGHT, detach_at: float = DETACH_AT, **options):
        super().__init__(**options)
        self.ranker = LearningLoss(layers=layers, hidden=hidden, margin=margin, weight=weight, detach_at=detach_at)

    def objectives(self) -> list:
        return self.ranker.objectives()

    def _side(self, ctx: Context, candidates: Tensor) -> dict:
        # one call, so an untrained ranker (a random module drawn per call) scores both sides alike
        r = self.ranker.predicted_loss(ctx, torch.cat([ctx.labeled, candidates])).flatten()
        return {"r_l": r[: len(ctx.labeled)], "r_u": r[len(ctx.labeled):]}

    def _rank(self, side: dict, part: str, pos: Tensor) -> Tensor:
        r = side["r_" + part]
        return r[pos.to(r.device)].unsqueeze(1)  # (B, 1)

    def _cond(self, side: dict, part: str, pos: Tensor) -> Tensor:
        return torch.sigmoid(self._rank(side, part, pos))

    def _disc_input(self, mu: Tensor, side: dict, part: str, pos: Tensor) -> Tensor:
        return torch.cat([mu, self._rank(side, part, pos).to(mu.dtype)], 1)

    def state_dict(self) -> dict:
        return {"adversarial": super().state_dict(), "ranker": self.ranker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        state = state or {}
        super().load_state_dict(state.get("adversarial") or {})
        self.ranker.load_state_dict(state.get("ranker") or {})
