"""The paper's invariant autoencoder as an sklearn-style transformer, and its two registered methods.

`InvariantAutoencoder.fit(Z, env, exposure=None)` learns an encoder
Z -> (hV, hW) whose hW block has the same distribution in every environment
(MMD), is independent of hV (HSIC, pooled and within environments), keeps
the information in Z (reconstruction, entropy) and, optionally, predicts the
exposure (relevance head). `transform(Z)` returns hW, the learned instruments.

Methods:
* `invariant_autoencoder`: cross-fitted (encoder learned on k-1 folds, 2SLS on
  out-of-fold instruments with fold-interacted first stages), environment
  fixed effects. Valid SEs even though the instruments are learned.
* `invariant_autoencoder_insample`: the paper's variant: learn and estimate on
  the same rows. Point estimates as in the paper; SEs ignore the learning step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from itertools import combinations
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from .crossfit import crossfit_estimates, crossfit_instruments
from .data import MRData
from .diagnostics import DIAGNOSTIC_PERMUTATIONS, instrument_diagnostics
from .errors import InputError
from .estimation import iv_estimates
from .networks import InvariantAutoencoderNet
from .penalties import INDEPENDENCE_MEASURES, MMD_KERNELS
from .registry import MethodContext, MethodOption, MethodOutput, register_method
from .results import Diagnostic
from .training import LossWeights, TrainingConfig, resolve_device, train, training_summary

WARM_STARTS = ("none", "linear")
_FORMAT_VERSION = 1


def input_map(Zc: np.ndarray, whiten: bool, rtol: float = 1e-9) -> np.ndarray:
    """(p, r) matrix applied to centred Z before the network.

    Whitening (pooled covariance, numerically null directions dropped) makes
    every direction of Z equally easy to reach for the encoder's linear path.
    Without it, W can hide in a low-variance direction (under cubic mixing the
    V^3 monomials dominate every column), which the optimiser, with weight
    decay, reaches only after a very long time.
    """
    if not whiten:
        scale = Zc.std(0)
        # Constant columns carry no information; a unit scale keeps them at zero instead of NaN.
        return np.diag(1.0 / np.where(scale > 1e-12, scale, 1.0))
    cov = Zc.T @ Zc / Zc.shape[0]
    vals, vecs = np.linalg.eigh(cov)
    keep = vals > rtol * max(vals.max(), 1e-300)
    if not keep.any():
        raise InputError("Z is constant: no direction to learn instruments from")
    return vecs[:, keep] / np.sqrt(vals[keep])


class InvariantAutoencoder:
    """Learn invariant instruments hW = f_W(Z) across environments.

    Parameters are stored as given; they are validated in `fit`. `batch_size`
    is the number of rows drawn from *each* environment per step. `warm_start`
    "linear" initialises the linear path of the encoder's hW block with the
    closed-form invariant directions (`invariant_linear`).
    """

    def __init__(
        self,
        dim_v: int = 2,
        dim_w: int = 2,
        hidden: int = 64,
        n_layers: int = 2,
        encoder_layers: int | None = None,
        whiten: bool = True,
        linear_w: bool = False,
        lam_inv: float = 100.0,
        lam_ind: float = 1.0,
        lam_ent: float = 0.01,
        lam_rel: float = 1.0,
        mmd_kernel: str = "rbf",
        independence: str = "rbf",
        within_env_independence: bool = True,
        adaptive_balancer: bool = False,
        epochs: int = 200,
        batch_size: int = 128,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        val_fraction: float = 0.2,
        patience: int = 40,
        warmup_epochs: int = 40,
        warm_start: str = "none",
        device: str = "auto",
        seed: int = 0,
        progress: bool = False,
    ):
        self.dim_v = dim_v
        self.dim_w = dim_w
        self.hidden = hidden
        self.n_layers = n_layers
        self.encoder_layers = encoder_layers
        self.whiten = whiten
        self.linear_w = linear_w
        self.lam_inv = lam_inv
        self.lam_ind = lam_ind
        self.lam_ent = lam_ent
        self.lam_rel = lam_rel
        self.mmd_kernel = mmd_kernel
        self.independence = independence
        self.within_env_independence = within_env_independence
        self.adaptive_balancer = adaptive_balancer
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.warmup_epochs = warmup_epochs
        self.warm_start = warm_start
        self.device = device
        self.seed = seed
        self.progress = progress

    # -------------------------------------------------------------- sklearn plumbing

    _PARAMS = (
        "dim_v", "dim_w", "hidden", "n_layers", "encoder_layers", "whiten", "linear_w", "lam_inv", "lam_ind", "lam_ent", "lam_rel", "mmd_kernel",
        "independence", "within_env_independence", "adaptive_balancer", "epochs", "batch_size", "lr",
        "weight_decay", "val_fraction", "patience", "warmup_epochs", "warm_start", "device", "seed", "progress",
    )  # fmt: skip

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._PARAMS}

    def set_params(self, **params) -> "InvariantAutoencoder":
        for k, v in params.items():
            if k not in self._PARAMS:
                raise InputError(f"InvariantAutoencoder has no parameter {k!r}")
            setattr(self, k, v)
        return self

    def _weights(self) -> LossWeights:
        return LossWeights(
            lam_inv=float(self.lam_inv),
            lam_ind=float(self.lam_ind),
            lam_ent=float(self.lam_ent),
            lam_rel=float(self.lam_rel),
            mmd_kernel=self.mmd_kernel,
            independence=self.independence,
            within_env_independence=bool(self.within_env_independence),
            adaptive_balancer=bool(self.adaptive_balancer),
        )

    def _config(self) -> TrainingConfig:
        return TrainingConfig(
            epochs=int(self.epochs),
            batch_per_env=int(self.batch_size),
            lr=float(self.lr),
            weight_decay=float(self.weight_decay),
            val_fraction=float(self.val_fraction),
            patience=int(self.patience),
            warmup_epochs=int(self.warmup_epochs),
        )

    def _build_net(self, d_in: int) -> InvariantAutoencoderNet:
        # float32 whatever torch's global default dtype is: training feeds float32 tensors.
        return InvariantAutoencoderNet(
            d_in, int(self.dim_v), int(self.dim_w), int(self.hidden), int(self.n_layers),
            relevance=float(self.lam_rel) > 0, linear_w=bool(self.linear_w),
            encoder_layers=None if self.encoder_layers is None else int(self.encoder_layers),
        ).float()  # fmt: skip

    # -------------------------------------------------------------- fit / transform

    def fit(self, Z, env, exposure=None) -> "InvariantAutoencoder":
        Z = np.asarray(Z, dtype=float)
        if Z.ndim != 2 or Z.shape[0] < 8:
            raise InputError(f"Z must be a 2-D array with at least 8 rows, got shape {Z.shape}")
        if not np.isfinite(Z).all():
            raise InputError("Z (instruments) contains NaN or infinite values")
        env = np.asarray(env)
        if env.shape != (Z.shape[0],):
            raise InputError(f"env must have one label per row of Z ({Z.shape[0]}), got shape {env.shape}")
        levels, codes = np.unique(env, return_inverse=True)
        if levels.size < 2:
            raise InputError("the invariant autoencoder needs at least 2 environments")
        for name in ("dim_v", "dim_w", "hidden"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warm_start not in WARM_STARTS:
            raise InputError(f"--warm-start must be one of {', '.join(WARM_STARTS)}, got {self.warm_start!r}")
        if exposure is not None:
            exposure = np.asarray(exposure, dtype=float).reshape(-1)
            if exposure.shape[0] != Z.shape[0] or not np.isfinite(exposure).all():
                raise InputError("exposure must be finite with one value per row of Z")
        weights, config = self._weights(), self._config()
        weights.validate()
        config.validate()
        device = resolve_device(self.device)

        self.z_mean_ = Z.mean(0)
        self.z_map_ = input_map(Z - self.z_mean_, bool(self.whiten))
        Zs = (Z - self.z_mean_) @ self.z_map_
        ds = None
        if exposure is not None and float(self.lam_rel) > 0:
            # Within-environment variation only: 2SLS uses environment fixed effects, and the
            # between-environment shift of the exposure would otherwise swamp the relevance signal.
            centred = exposure - (np.bincount(codes, weights=exposure) / np.bincount(codes))[codes]
            ds = centred / (centred.std() + 1e-12)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            net = self._build_net(Zs.shape[1])
        if self.warm_start == "linear":
            self._load_linear_warm_start(net, Zs, env, exposure)
        net.to(device)
        self.history_ = train(
            net, Zs, codes, ds, weights, config, seed=int(self.seed), device=device, progress=bool(self.progress)
        )
        self.net_ = net.cpu().eval()
        self.env_levels_ = levels
        self.n_features_in_ = Z.shape[1]
        self.training_summary_ = training_summary(self.history_)
        return self

    def _load_linear_warm_start(self, net: InvariantAutoencoderNet, Zs: np.ndarray, env, exposure) -> None:
        """Set the hW rows of the encoder's linear path to the closed-form invariant directions."""
        try:
            from .invariant_linear import LinearInvariantInstruments
        except ImportError as exc:  # pragma: no cover - depends on the closed-form module
            raise InputError("--warm-start linear needs invariant_mr.invariant_linear") from exc
        lin = LinearInvariantInstruments().fit(Zs, env, exposure=exposure)
        # The closed form may be affine; read its map off by transforming the unit basis.
        origin = np.asarray(lin.transform(np.zeros((1, Zs.shape[1]))), dtype=float)
        basis = np.asarray(lin.transform(np.eye(Zs.shape[1])), dtype=float) - origin
        k = min(int(self.dim_w), basis.shape[1])
        if k == 0:
            return
        scale = np.asarray(lin.transform(Zs), dtype=float)[:, :k].std(0) + 1e-12
        with torch.no_grad():
            rows = slice(int(self.dim_v), int(self.dim_v) + k)
            net.encoder.linear.weight[rows] = torch.as_tensor((basis[:, :k] / scale).T, dtype=torch.float32)
            net.encoder.linear.bias[rows] = torch.as_tensor(-(origin[0, :k]) / scale, dtype=torch.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise InputError("this InvariantAutoencoder is not fitted yet; call fit(Z, env) first")

    def transform_all(self, Z) -> tuple[np.ndarray, np.ndarray]:
        """(hV, hW) for the rows of Z."""
        self._check_fitted()
        Z = np.asarray(Z, dtype=float)
        if Z.ndim != 2 or Z.shape[1] != self.n_features_in_:
            raise InputError(f"Z must have {self.n_features_in_} columns, got shape {Z.shape}")
        zs = torch.as_tensor((Z - self.z_mean_) @ self.z_map_, dtype=torch.float32)
        with torch.no_grad():
            hv, hw = self.net_.encoder(zs)
        return hv.double().numpy(), hw.double().numpy()

    def transform(self, Z) -> np.ndarray:
        """The learned instruments hW."""
        return self.transform_all(Z)[1]

    def fit_transform(self, Z, env, exposure=None) -> np.ndarray:
        return self.fit(Z, env, exposure).transform(Z)

    # -------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write a directory with `model.pt` (state dict only) and `config.json`, atomically."""
        self._check_fitted()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            state = {k: v.detach().cpu() for k, v in self.net_.state_dict().items()}
            state["_z_mean"] = torch.as_tensor(self.z_mean_, dtype=torch.float64)
            state["_z_map"] = torch.as_tensor(self.z_map_, dtype=torch.float64)
            torch.save(state, stage / "model.pt")
            config = {
                "format_version": _FORMAT_VERSION,
                "class": "InvariantAutoencoder",
                "params": self.get_params(),
                "n_features_in": int(self.n_features_in_),
                "env_levels": [str(x) for x in self.env_levels_],
                "training_summary": self.training_summary_,
                "history": self.history_,
            }
            (stage / "config.json").write_text(json.dumps(config, indent=2))
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(stage, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(stage, target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InvariantAutoencoder":
        """Load a model written by `save`; tensors only (weights_only=True), no pickled code."""
        path = Path(path)
        try:
            config = json.loads((path / "config.json").read_text())
        except FileNotFoundError as exc:
            raise InputError(f"{path}: not a saved InvariantAutoencoder (no config.json)") from exc
        if config.get("class") != "InvariantAutoencoder" or config.get("format_version") != _FORMAT_VERSION:
            raise InputError(f"{path}/config.json: not a saved InvariantAutoencoder of format {_FORMAT_VERSION}")
        model = cls(**config["params"])
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        model.z_mean_ = state.pop("_z_mean").numpy()
        model.z_map_ = state.pop("_z_map").numpy()
        net = model._build_net(model.z_map_.shape[1])
        net.load_state_dict(state)
        model.net_ = net.eval()
        model.n_features_in_ = int(config["n_features_in"])
        model.env_levels_ = np.array(config["env_levels"], dtype=object)
        model.history_ = config["history"]
        model.training_summary_ = config["training_summary"]
        return model


# ------------------------------------------------------------------ registered methods

_OPTIONS = (
    MethodOption("latent_dim_v", int, 2, "invariant autoencoder: dimension of the confounded code hV"),
    MethodOption("latent_dim_w", int, 2, "invariant autoencoder: dimension of the instrument code hW"),
    MethodOption("hidden", int, 64, "invariant autoencoder: width of the hidden layers"),
    MethodOption("n_layers", int, 2, "invariant autoencoder: hidden layers in encoder/decoder (0 = linear encoder)"),
    MethodOption("encoder_layers", int, None, "invariant autoencoder: hidden layers of the encoder (default: --n-layers; 0 = linear encoder)"),
    MethodOption("whiten", bool, True, "invariant autoencoder: whiten Z (pooled covariance) before the network"),
    MethodOption("linear_w", bool, False, "invariant autoencoder: make hW an affine function of Z (MLP only for hV)"),
    MethodOption("lam_inv", float, 100.0, "invariant autoencoder: weight of the MMD invariance penalty"),
    MethodOption("lam_ind", float, 1.0, "invariant autoencoder: weight of the hW-hV independence penalty"),
    MethodOption("lam_ent", float, 0.01, "invariant autoencoder: weight of the log-det entropy bonus"),
    MethodOption("lam_rel", float, 1.0, "invariant autoencoder: weight of the exposure relevance head (0 = off; >0 uses the exposure of the training folds)"),
    MethodOption("mmd_kernel", click.Choice(MMD_KERNELS), "rbf", "invariant autoencoder: MMD kernel"),
    MethodOption("independence", click.Choice(INDEPENDENCE_MEASURES), "rbf", "invariant autoencoder: independence measure"),
    MethodOption("adaptive_balancer", bool, False, "invariant autoencoder: rescale penalty weights to the reconstruction scale"),
    MethodOption("warm_start", click.Choice(WARM_STARTS), "none", "invariant autoencoder: initialise from the closed-form invariant directions"),
    MethodOption("epochs", int, 200, "invariant autoencoder: maximum training epochs"),
    MethodOption("warmup_epochs", int, 40, "invariant autoencoder: epochs over which penalty weights ramp up from 0"),
    MethodOption("batch_size", int, 128, "invariant autoencoder: rows per environment in each mini-batch"),
    MethodOption("lr", float, 3e-3, "invariant autoencoder: AdamW learning rate"),
    MethodOption("device", str, "auto", "invariant autoencoder: torch device ('auto' = CUDA when available)"),
    MethodOption("n_folds", int, 2, "cross-fitting folds for learned instruments"),
    MethodOption("invariance_permutations", int, 99, "invariant autoencoder: permutations of the held-out invariance test (0 = skip)"),
    DIAGNOSTIC_PERMUTATIONS,
)  # fmt: skip

#: Options of the methods, not of the estimator.
_METHOD_ONLY_OPTIONS = ("n_folds", "invariance_permutations", "diagnostic_permutations")

_ESTIMATOR_OPTION = {
    "latent_dim_v": "dim_v",
    "latent_dim_w": "dim_w",
}


def estimator_from_context(ctx: MethodContext, seed: int) -> InvariantAutoencoder:
    params: dict[str, Any] = {}
    for opt in _OPTIONS:
        if opt.name in _METHOD_ONLY_OPTIONS:
            continue
        params[_ESTIMATOR_OPTION.get(opt.name, opt.name)] = ctx.option(opt.name, opt.default)
    return InvariantAutoencoder(**params, seed=seed, progress=ctx.progress)


def heldout_invariance_test(
    instruments: np.ndarray,
    env_codes: np.ndarray,
    strata: np.ndarray,
    rng: np.random.Generator,
    n_permutations: int = 199,
    max_rows: int = 2000,
) -> tuple[float, float]:
    """Permutation test that out-of-fold instruments have the same distribution in every environment.

    Statistic: mean pairwise RBF MMD^2 (U-statistic) of the standardised
    instruments, with one median-heuristic bandwidth from all tested rows.
    Environment labels are permuted within strata (the folds),
    because each fold's instruments come from a different encoder. A truth-free
    check of the learned invariance on data the encoder never saw.

    The bandwidth and the kernel matrix do not depend on the labels, so they
    are computed once; each permutation only re-sums blocks of the same
    matrix (before, every permutation recomputed the O(n^2) kernel and its
    median: 99 permutations took longer than training an encoder).
    """
    from .penalties import RBF_SCALES, rbf_gram, standardize

    if instruments.shape[1] == 0:
        return float("nan"), float("nan")
    rows = np.arange(instruments.shape[0])
    if rows.size > max_rows:  # the RBF statistic is O(n^2); a subsample keeps it fast
        rows = np.sort(rng.choice(rows, max_rows, replace=False))
    h = torch.as_tensor(instruments[rows], dtype=torch.float64)
    strata = strata[rows]
    # Standardise per stratum: folds' encoders have arbitrary location and scale.
    for s_ in np.unique(strata):
        m = torch.as_tensor(strata == s_)
        h[m] = standardize(h[m])
    env = env_codes[rows]
    with torch.no_grad():
        gram = rbf_gram(h)[0].numpy()
    k_self = float(len(RBF_SCALES))  # k(x, x) for every row
    levels = np.unique(env)
    pairs = list(combinations(range(levels.size), 2))
    if not pairs:
        return 0.0, 1.0

    labelings = [env]
    for _ in range(n_permutations):
        perm = env.copy()
        for s_ in np.unique(strata):
            idx = np.flatnonzero(strata == s_)
            perm[idx] = perm[rng.permutation(idx)]
        labelings.append(perm)
    # One product of the Gram matrix with every labelling's indicators (a single pass over the
    # O(n^2) matrix instead of one per permutation), then per labelling the block sums.
    onehots = np.stack([(lab[:, None] == levels[None, :]).astype(float) for lab in labelings])  # (P, n, L)
    gram_onehots = np.einsum("ij,pjl->pil", gram, onehots, optimize=True)
    block_sums = np.einsum("pik,pil->pkl", onehots, gram_onehots)  # (P, L, L)
    counts = onehots.sum(1)  # (P, L)
    within = (np.einsum("pkk->pk", block_sums) - k_self * counts) / (counts * (counts - 1))
    stats = np.mean(
        [within[:, a] + within[:, b] - 2.0 * block_sums[:, a, b] / (counts[:, a] * counts[:, b]) for a, b in pairs],
        axis=0,
    )
    observed = float(stats[0])
    exceed = int(np.sum(stats[1:] >= observed))
    return observed, (1 + exceed) / (1 + n_permutations)


def _history_rows(history: list[dict], **tags) -> list[dict]:
    return [{**tags, **row} for row in history]


@register_method(
    "invariant_autoencoder",
    description="2SLS on instruments from the invariant autoencoder (cross-fitted), environment fixed effects",
    default=False,
    options=_OPTIONS,
)
def invariant_autoencoder(data: MRData, ctx: MethodContext) -> MethodOutput:
    n_folds = int(ctx.option("n_folds", 2))
    if n_folds < 2:
        raise InputError(f"--n-folds must be at least 2 for cross-fitting, got {n_folds}")
    use_exposure = float(ctx.option("lam_rel", 1.0)) > 0
    base_seed = int(ctx.rng("invariant_autoencoder seed").integers(2**31 - 1))
    instruments, folds, learners = crossfit_instruments(
        data,
        lambda fold: estimator_from_context(ctx, base_seed + fold),
        n_folds=n_folds,
        rng=ctx.rng("invariant_autoencoder folds"),
        use_exposure=use_exposure,
    )
    history = [row for f, m in enumerate(learners) for row in _history_rows(m.history_, fold=f)]
    summaries = [m.training_summary_ for m in learners]
    estimates = crossfit_estimates(
        data, instruments, folds, ctx, method="invariant_autoencoder",
        extra={"training": summaries},
    )  # fmt: skip
    # Out-of-fold hV of each fold's encoder: the environment-varying component the HSIC check tests against.
    hv = np.zeros((data.n, learners[0].dim_v))
    for f, model in enumerate(learners):
        hv[folds == f] = model.transform_all(data.Z[folds == f])[0]
    diagnostics = tuple(
        instrument_diagnostics(data, instruments, ctx, hv, method="invariant_autoencoder", folds=folds)
    )
    n_perm = int(ctx.option("invariance_permutations", 99))
    if n_perm > 0:
        stat, pvalue = heldout_invariance_test(
            instruments, data.env_codes, folds, ctx.rng("invariant_autoencoder invariance test"), n_perm
        )
        diagnostics += (
            Diagnostic(
                name="heldout_invariance",
                scope="invariant_autoencoder",
                statistic=stat,
                pvalue=pvalue,
                flag="instruments differ across environments on held-out folds"
                if pvalue <= ctx.alpha
                else "no evidence against invariance on held-out folds",
                detail={"test": "RBF MMD^2 permutation (within folds)", "n_permutations": n_perm},
            ),
        )
    return MethodOutput(
        tuple(estimates), diagnostics, artifacts={"instruments": instruments, "folds": folds, "history": history}
    )


@register_method(
    "invariant_autoencoder_insample",
    description="2SLS on invariant-autoencoder instruments learned on the same rows (the paper's variant)",
    default=False,
    options=_OPTIONS,
)
def invariant_autoencoder_insample(data: MRData, ctx: MethodContext) -> MethodOutput:
    seed = int(ctx.rng("invariant_autoencoder_insample seed").integers(2**31 - 1))
    model = estimator_from_context(ctx, seed)
    use_exposure = float(ctx.option("lam_rel", 1.0)) > 0
    model.fit(data.Z, data.env, exposure=data.exposure if use_exposure else None)
    hv, instruments = model.transform_all(data.Z)  # one encoder pass for the instruments and the HSIC check
    estimates = iv_estimates(
        data, instruments, ctx, method="invariant_autoencoder_insample",
        extra={"training": model.training_summary_, "in_sample": True},
    )  # fmt: skip
    diagnostics = instrument_diagnostics(data, instruments, ctx, hv, method="invariant_autoencoder_insample")
    return MethodOutput(
        tuple(estimates), tuple(diagnostics), artifacts={"instruments": instruments, "history": model.history_}
    )


__all__ = ["InvariantAutoencoder", "invariant_autoencoder", "invariant_autoencoder_insample"]
