"""Training loop of the invariant autoencoder: batching, validation, early stopping, divergence checks.

The loop owns everything that is not the model or the penalties: seeding,
the device, equal-per-environment mini-batches, the validation split, the
optimiser and its schedule, early stopping with the best weights restored,
the per-epoch history and the progress bar.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from invariant_mr.errors import InputError, TrainingDivergedError
from invariant_mr.instruments.minibatches import PrefetchedBatches, is_row_source
from invariant_mr.instruments.networks import InvariantAutoencoderNet
from invariant_mr.instruments.penalties import (
    INDEPENDENCE_MEASURES,
    MMD_KERNELS,
    gaussian_logdet,
    pairwise_mmd,
    pooled_and_within_independence,
    rbf_invariance_and_independence,
    standardize,
)

TERMS = ("recon", "inv", "ind", "ent", "rel")


@dataclass(frozen=True)
class LossWeights:
    """Weights and kernels of the objective (METHOD.md section 2)."""

    lam_inv: float = 10.0
    lam_ind: float = 1.0
    lam_ent: float = 0.01
    lam_rel: float = 0.0
    mmd_kernel: str = "poly"
    independence: str = "poly"
    within_env_independence: bool = True
    adaptive_balancer: bool = False
    #: U-statistic MMD/HSIC; the V-statistics' bias rewards light-tailed codes (see penalties).
    unbiased: bool = True
    #: Penalties on standardised codes (otherwise shrinking hW fakes invariance; the authors
    #: instead rely on the entropy bonus to keep the codes' scale).
    standardize_codes: bool = True
    #: Weight of the pooled term of the independence penalty (the authors count it twice).
    pooled_independence_weight: float = 1.0

    def validate(self) -> None:
        if self.mmd_kernel not in MMD_KERNELS:
            raise InputError(f"--mmd-kernel must be one of {', '.join(MMD_KERNELS)}, got {self.mmd_kernel!r}")
        if self.independence not in INDEPENDENCE_MEASURES:
            raise InputError(
                f"--independence must be one of {', '.join(INDEPENDENCE_MEASURES)}, got {self.independence!r}"
            )
        for name in ("lam_inv", "lam_ind", "lam_ent", "lam_rel", "pooled_independence_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 300
    batch_per_env: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    #: Epochs without a better validation loss before stopping; None trains all `epochs`
    #: (the best-validation weights are still the ones kept).
    patience: int | None = 40
    lr_patience: int = 20
    lr_factor: float = 0.5
    min_epochs: int = 20
    #: Epochs over which the penalty weights ramp up linearly from 0: the codes first learn
    #: to reconstruct Z, so the penalties then sort information instead of destroying it.
    warmup_epochs: int = 0
    #: Batches gathered ahead of use when the rows come from a `RowSource` (pinned on a GPU).
    prefetch: int = 2

    def validate(self) -> None:
        if self.prefetch < 1:
            raise InputError(f"prefetch must be at least 1, got {self.prefetch}")
        if self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_per_env < 4:
            raise InputError(f"--batch-size (per environment) must be at least 4, got {self.batch_per_env}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.warmup_epochs < 0:
            raise InputError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 < self.val_fraction < 0.9:
            raise InputError(f"val_fraction must be in (0, 0.9), got {self.val_fraction}")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"patience must be at least 1 (or None: no early stopping), got {self.patience}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) picks CUDA when available; anything else is passed to torch.device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"--device: not a torch device: {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available")
    return dev


def loss_terms(
    net: InvariantAutoencoderNet,
    z: torch.Tensor,
    env: torch.Tensor,
    exposure: torch.Tensor | None,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """Every term of the objective on one batch (unweighted; 'ent' is the log det, to be maximised)."""
    hv, hw = net.encoder(z)
    recon = ((net.decoder(hv, hw) - z) ** 2).mean()
    # Penalties see standardised codes: otherwise shrinking hW would fake invariance.
    sv, sw = (standardize(hv), standardize(hw)) if weights.standardize_codes else (hv, hw)
    pooled = weights.pooled_independence_weight
    if weights.mmd_kernel == "rbf" and weights.independence == "rbf":  # the default: shared Gram matrices
        inv, ind = rbf_invariance_and_independence(
            sw, sv, env, within=weights.within_env_independence, unbiased=weights.unbiased, pooled_weight=pooled
        )
    else:
        inv = pairwise_mmd(sw, env, weights.mmd_kernel, unbiased=weights.unbiased)
        ind = pooled_and_within_independence(
            sw, sv, env, weights.independence, within=weights.within_env_independence, unbiased=weights.unbiased,
            pooled_weight=pooled,
        )  # fmt: skip
    terms = {"recon": recon, "inv": inv, "ind": ind, "ent": gaussian_logdet(torch.cat([sv, sw], dim=1), env)}
    if net.relevance is not None and exposure is not None:
        terms["rel"] = ((net.relevance(hw) - exposure) ** 2).mean()
    else:
        terms["rel"] = z.new_zeros(())
    return terms


def total_loss(terms: dict[str, torch.Tensor], w: dict[str, float]) -> torch.Tensor:
    return (
        terms["recon"]
        + w["inv"] * terms["inv"]
        + w["ind"] * terms["ind"]
        + w["rel"] * terms["rel"]
        - w["ent"] * terms["ent"]
    )


def check_finite(terms: dict[str, torch.Tensor], where: str) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            raise TrainingDivergedError(
                f"training diverged: loss term {name!r} is {value.item()} at {where}; "
                "try a smaller --lr or smaller loss weights"
            )


def validation_split(env_codes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of validation rows, the same fraction from every environment."""
    val = np.zeros(env_codes.shape[0], dtype=bool)
    for code in np.unique(env_codes):
        idx = np.flatnonzero(env_codes == code)
        rng.shuffle(idx)
        val[idx[: max(2, int(round(fraction * idx.size)))]] = True
    return val


#: Validation rows per evaluation chunk: the kernel penalties are O(rows^2) in time and memory.
VALIDATION_CHUNK_ROWS = 4096


def validation_chunks(env_codes: np.ndarray, max_rows: int = VALIDATION_CHUNK_ROWS) -> list[np.ndarray]:
    """Index sets that split the validation rows into chunks of at most about `max_rows`, each
    holding the same share of every environment (so every chunk can score the invariance penalty).
    One chunk, the whole set, when it is small enough."""
    n_chunks = max(1, -(-env_codes.shape[0] // max_rows))
    parts = [np.array_split(np.flatnonzero(env_codes == c), n_chunks) for c in np.unique(env_codes)]
    return [np.concatenate([p[i] for p in parts]) for i in range(n_chunks)]


def chunked_loss_terms(net, z, env, exposure, weights, chunks: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Loss terms averaged over validation chunks (each term is a mean, or a U-statistic, per chunk)."""
    if len(chunks) == 1:  # the whole set: no per-epoch copy of the validation rows
        return loss_terms(net, z, env, exposure, weights)
    parts = [
        loss_terms(net, z[idx], env[idx], None if exposure is None else exposure[idx], weights)
        for idx in (torch.as_tensor(c, device=z.device) for c in chunks)
    ]
    return {k: torch.stack([p[k] for p in parts]).mean() for k in parts[0]}


def streamed_loss_terms(net, source, val_rows, env, exposure, weights, chunks, device, prefetch):
    """`chunked_loss_terms` with each chunk's rows gathered from a `RowSource` (never the whole set)."""
    batches = PrefetchedBatches(source, [val_rows[c] for c in chunks], device, prefetch=prefetch)
    parts = []
    for c, z in zip(chunks, batches):
        idx = torch.as_tensor(c, device=device)
        parts.append(loss_terms(net, z, env[idx], None if exposure is None else exposure[idx], weights))
    return {k: torch.stack([p[k] for p in parts]).mean() for k in parts[0]}


class AdaptiveBalancer:
    """Rescales lam_inv and lam_ind so each weighted term stays on the scale of the reconstruction.

    Uses exponential moving averages of the detached term values; the factor
    is clipped to [0.01, 100] so a term that reaches zero cannot blow up its weight.
    """

    def __init__(self, base: dict[str, float], momentum: float = 0.9):
        self.base = dict(base)
        self.momentum = momentum
        self.ema: dict[str, float] = {}

    def update(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        for name in ("recon", "inv", "ind"):
            v = float(terms[name].detach())
            self.ema[name] = v if name not in self.ema else self.momentum * self.ema[name] + (1 - self.momentum) * v
        w = dict(self.base)
        for name in ("inv", "ind"):
            if self.base[name] > 0:
                ratio = self.ema["recon"] / max(self.ema[name], 1e-12)
                w[name] = self.base[name] * float(np.clip(ratio, 0.01, 100.0))
        return w


def train(
    net: InvariantAutoencoderNet,
    z: np.ndarray,
    env_codes: np.ndarray,
    exposure: np.ndarray | None,
    weights: LossWeights,
    config: TrainingConfig,
    *,
    seed: int,
    device: torch.device,
    progress: bool = False,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    rows_used: dict | None = None,
) -> list[dict]:
    """Train `net` in place; returns the per-epoch history. The best-validation weights are restored.

    `validation` = (z, env_codes, exposure or None) is a separate validation
    set (the authors generate one from its own seed); then every row of `z`
    trains and `config.val_fraction` is unused. By default the validation rows
    are split off `z`, the same fraction from every environment.

    `rows_used`, when given, is filled with how many rows took gradient steps
    (`train_rows`) and how many scored the validation loss (`val_rows`).
    """
    weights.validate()
    config.validate()
    rng = np.random.default_rng([seed, 7])
    dtype = torch.float32

    def to_t(a, dt=dtype):
        return None if a is None else torch.as_tensor(a, dtype=dt, device=device)

    # A RowSource (e.g. an int8 memory-mapped cache) is never copied whole: batches and validation
    # chunks are gathered on demand, ahead of use (`minibatches.PrefetchedBatches`).
    streamed = is_row_source(z)
    if validation is None:
        val_mask = validation_split(env_codes, config.val_fraction, rng)
        train_rows, val_rows = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
        z_tr, z_va = (None, None) if streamed else (to_t(z[~val_mask]), to_t(z[val_mask]))
        e_tr_np, e_va_np = env_codes[~val_mask], env_codes[val_mask]
        d_tr = None if exposure is None else to_t(exposure[~val_mask])
        d_va = None if exposure is None else to_t(exposure[val_mask])
    else:
        if streamed:
            raise InputError("an explicit validation set needs Z in memory")
        z_val, e_va_np, d_val = validation
        train_rows, val_rows = np.arange(len(env_codes)), None
        z_tr, z_va = to_t(z), to_t(z_val)
        e_tr_np = env_codes
        d_tr = None if exposure is None else to_t(exposure)
        d_va = None if exposure is None or d_val is None else to_t(d_val)
    e_tr, e_va = to_t(e_tr_np, torch.int64), to_t(e_va_np, torch.int64)
    if rows_used is not None:
        rows_used.update(train_rows=int(e_tr_np.size), val_rows=int(e_va_np.size))
    val_chunks = validation_chunks(e_va_np)
    per_env_rows = [np.flatnonzero(e_tr_np == c) for c in np.unique(e_tr_np)]
    batch = min(config.batch_per_env, min(r.size for r in per_env_rows))
    steps = max(1, max(r.size for r in per_env_rows) // batch)

    base = {"inv": weights.lam_inv, "ind": weights.lam_ind, "ent": weights.lam_ent, "rel": weights.lam_rel}
    balancer = AdaptiveBalancer(base) if weights.adaptive_balancer else None
    w = dict(base)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=config.lr_factor, patience=config.lr_patience
    )
    best, best_state, since_best = math.inf, copy.deepcopy(net.state_dict()), 0
    history: list[dict] = []
    bar = tqdm(range(config.epochs), desc="invariant autoencoder", disable=not progress, leave=False)
    for epoch in bar:
        ramp = min(1.0, (epoch + 1) / config.warmup_epochs) if config.warmup_epochs > 0 else 1.0
        in_warmup = epoch + 1 < config.warmup_epochs
        if balancer is None:
            w = {k: (v * ramp if k in ("inv", "ind", "ent") else v) for k, v in base.items()}
        else:
            balancer.base = {k: (v * ramp if k in ("inv", "ind", "ent") else v) for k, v in base.items()}
        net.train()
        perms = [r[rng.permutation(r.size)] for r in per_env_rows]
        sums = dict.fromkeys(TERMS, 0.0)
        # Equal numbers per environment; a smaller environment wraps around.
        epoch_rows = [np.concatenate([p[np.arange(s * batch, (s + 1) * batch) % p.size] for p in perms])
                      for s in range(steps)]
        feed = (PrefetchedBatches(z, [train_rows[r] for r in epoch_rows], device, prefetch=config.prefetch)
                if streamed else (None for _ in epoch_rows))
        for s, (rows, z_batch) in enumerate(zip(epoch_rows, feed)):
            idx = torch.as_tensor(rows, device=device)
            terms = loss_terms(net, z_tr[idx] if z_batch is None else z_batch, e_tr[idx],
                               None if d_tr is None else d_tr[idx], weights)
            check_finite(terms, f"epoch {epoch}, step {s}")
            if balancer is not None:
                w = balancer.update(terms)
            loss = total_loss(terms, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k in TERMS:
                sums[k] += float(terms[k].detach())
        net.eval()
        with torch.no_grad():
            if streamed:
                vterms = streamed_loss_terms(net, z, val_rows, e_va, d_va, weights, val_chunks, device, config.prefetch)
            else:
                vterms = chunked_loss_terms(net, z_va, e_va, d_va, weights, val_chunks)
        check_finite(vterms, f"epoch {epoch}, validation")
        # The stopping criterion uses the user's weights, not the balancer's moving ones.
        vtotal = float(total_loss(vterms, base))
        if not in_warmup:
            sched.step(vtotal)
        row = {"epoch": epoch, **{f"train_{k}": v / steps for k, v in sums.items()}}
        row.update({f"val_{k}": float(v) for k, v in vterms.items()})
        row.update({"val_total": vtotal, "lr": opt.param_groups[0]["lr"], "w_inv": w["inv"], "w_ind": w["ind"]})
        history.append(row)
        if not in_warmup and (vtotal < best - 1e-6 * abs(best) or not math.isfinite(best)):
            best, since_best = vtotal, 0
            best_state = copy.deepcopy(net.state_dict())
            row["best"] = True
        else:
            since_best += 1
        bar.set_postfix(
            recon=f"{row['val_recon']:.3g}", inv=f"{row['val_inv']:.2g}", ind=f"{row['val_ind']:.2g}",
            ent=f"{row['val_ent']:.2g}", total=f"{vtotal:.3g}",
        )
        if (
            config.patience is not None
            and since_best >= config.patience
            and epoch + 1 >= max(config.min_epochs, config.warmup_epochs)
        ):
            break
    net.load_state_dict(best_state)
    return history


def training_summary(history: list[dict]) -> dict:
    best = min(history, key=lambda r: r["val_total"])
    return {"epochs_run": len(history), "best_epoch": best["epoch"], "best_val_total": best["val_total"]}


__all__ = [
    "LossWeights",
    "TrainingConfig",
    "train",
    "loss_terms",
    "resolve_device",
    "validation_split",
    "training_summary",
]
