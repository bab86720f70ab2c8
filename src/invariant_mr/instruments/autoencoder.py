"""The paper's invariant autoencoder as an sklearn-style transformer.

`InvariantAutoencoder.fit(Z, env, exposure=None)` learns an encoder
Z -> (hV, hW) whose hW block has the same distribution in every environment
(MMD), is independent of hV (HSIC, pooled and within environments), keeps
the information in Z (reconstruction, entropy) and, optionally, predicts the
exposure (relevance head). `transform(Z)` returns hW, the learned instruments.

Two recipes share the class. The defaults are this project's (whitened Z,
linear-plus-MLP encoder, RBF U-statistic penalties on standardised codes,
relevance head, early stopping). `InvariantAutoencoder.paper_recipe()` returns
an estimator with every constructor argument set to the authors' published
recipe (issue 11, finding 1; see its docstring). Both are ordinary
constructor arguments, so `get_params`, `set_params` and `save`/`load` see
them all, and any one of them can be overridden.

The cross-fitted and in-sample methods built on it are in `methods/autoencoder.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from invariant_mr.errors import InputError
from invariant_mr.io.output import publish_directory
from invariant_mr.instruments.minibatches import AffineRows, input_moments, is_row_source, iter_row_blocks, pass_block_rows
from invariant_mr.instruments.networks import DECODER_KINDS, ENCODER_KINDS, InvariantAutoencoderNet
from invariant_mr.instruments.training import LossWeights, TrainingConfig, resolve_device, train, training_summary

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
    return input_map_from_covariance(Zc.T @ Zc / Zc.shape[0], True, rtol)


def input_map_from_covariance(cov: np.ndarray, whiten: bool, rtol: float = 1e-9) -> np.ndarray:
    """`input_map` from the (maximum-likelihood) covariance of Z, e.g. accumulated over row blocks."""
    if not whiten:
        scale = np.sqrt(np.clip(np.diag(cov), 0, None))
        return np.diag(1.0 / np.where(scale > 1e-12, scale, 1.0))
    vals, vecs = np.linalg.eigh(cov)
    keep = vals > rtol * max(vals.max(), 1e-300)
    if not keep.any():
        raise InputError("Z is constant: no direction to learn instruments from")
    return vecs[:, keep] / np.sqrt(vals[keep])


def paper_recipe_params(decoder_degree: int = 3, decoder: str = "poly") -> dict:
    """Constructor arguments of the authors' recipe (issue 11, finding 1), every one explicit.

    * encoder: a plain MLP with two hidden layers Linear -> LayerNorm -> ReLU;
    * decoder: a linear map of all monomials of the codes up to
      `decoder_degree` (the mixing degree; `decoder="poly"`), or, for MLP and
      discrete mixing, an MLP of the same kind (`decoder="layernorm-mlp"`);
    * raw Z: neither centred nor scaled (`whiten=False, raw_input=True`);
    * penalties on the codes as they are (`standardize_codes=False`), as
      V-statistics (`unbiased_penalties=False`): MMD with the polynomial kernel
      (x'y + 1)^2, weight 1; polynomial degree-2 HSIC, weight 1, pooled term
      counted twice plus the within-environment terms;
    * entropy 0.01 x (-log det Cov) of all four codes per environment;
    * no relevance head (`lam_rel=0`);
    * AdamW lr 1e-3, weight decay 1e-4, ReduceLROnPlateau(0.5, patience 20)
      on the validation total loss (the training loop's fixed schedule);
    * 400 epochs, no early stopping, no warm-up, the weights with the best
      validation total loss kept. Give the separate validation set to `fit`
      (`validation=(Z_val, env_val)`); without one, 20% of the rows are held out.

    Not fixed by the study, and set here to this project's values: hidden
    width 64 and 256 rows per environment per mini-batch.
    """
    return dict(
        dim_v=2, dim_w=2, hidden=64, n_layers=2, encoder_layers=2, encoder="layernorm-mlp",
        decoder=decoder, decoder_degree=int(decoder_degree), whiten=False, raw_input=True, linear_w=False,
        lam_inv=1.0, lam_ind=1.0, lam_ent=0.01, lam_rel=0.0, mmd_kernel="poly", independence="poly",
        within_env_independence=True, pooled_independence_weight=2.0, standardize_codes=False,
        unbiased_penalties=False, adaptive_balancer=False, epochs=400, batch_size=256, lr=1e-3,
        weight_decay=1e-4, val_fraction=0.2, patience=None, warmup_epochs=0, warm_start="none",
    )  # fmt: skip


#: Named presets of constructor arguments (`--preset` on the command line).
PRESETS = ("none", "paper")


class InvariantAutoencoder:
    """Learn invariant instruments hW = f_W(Z) across environments.

    Parameters are stored as given; they are validated in `fit`. `batch_size`
    is the number of rows drawn from *each* environment per step. `warm_start`
    "linear" initialises the linear path of the encoder's hW block with the
    closed-form invariant directions (`invariant_linear`).

    Arguments beyond this project's recipe, used by `paper_recipe()`:
    `encoder` ("linear+mlp" or "layernorm-mlp"), `decoder` ("mlp", "poly" =
    linear in the monomials of the codes up to `decoder_degree`, or
    "layernorm-mlp"), `raw_input` (feed Z as it is; excludes `whiten`),
    `standardize_codes` (penalties on standardised codes),
    `unbiased_penalties` (U- rather than V-statistics),
    `pooled_independence_weight` (weight of the pooled HSIC term) and
    `patience=None` (no early stopping).
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
        encoder: str = "linear+mlp",
        decoder: str = "mlp",
        decoder_degree: int = 3,
        raw_input: bool = False,
        standardize_codes: bool = True,
        unbiased_penalties: bool = True,
        pooled_independence_weight: float = 1.0,
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
        self.encoder = encoder
        self.decoder = decoder
        self.decoder_degree = decoder_degree
        self.raw_input = raw_input
        self.standardize_codes = standardize_codes
        self.unbiased_penalties = unbiased_penalties
        self.pooled_independence_weight = pooled_independence_weight

    @classmethod
    def paper_recipe(cls, decoder_degree: int = 3, decoder: str = "poly", **overrides) -> "InvariantAutoencoder":
        """The authors' recipe (`paper_recipe_params`), with any constructor argument overridden."""
        params = paper_recipe_params(decoder_degree, decoder)
        unknown = set(overrides) - set(cls._PARAMS)
        if unknown:
            raise InputError(f"InvariantAutoencoder has no parameter(s) {', '.join(sorted(unknown))}")
        return cls(**{**params, **overrides})

    # -------------------------------------------------------------- sklearn plumbing

    _PARAMS = (
        "dim_v", "dim_w", "hidden", "n_layers", "encoder_layers", "whiten", "linear_w", "lam_inv", "lam_ind", "lam_ent", "lam_rel", "mmd_kernel",
        "independence", "within_env_independence", "adaptive_balancer", "epochs", "batch_size", "lr",
        "weight_decay", "val_fraction", "patience", "warmup_epochs", "warm_start", "device", "seed", "progress",
        "encoder", "decoder", "decoder_degree", "raw_input", "standardize_codes", "unbiased_penalties",
        "pooled_independence_weight",
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
            unbiased=bool(self.unbiased_penalties),
            standardize_codes=bool(self.standardize_codes),
            pooled_independence_weight=float(self.pooled_independence_weight),
        )

    def _config(self) -> TrainingConfig:
        return TrainingConfig(
            epochs=int(self.epochs),
            batch_per_env=int(self.batch_size),
            lr=float(self.lr),
            weight_decay=float(self.weight_decay),
            val_fraction=float(self.val_fraction),
            patience=None if self.patience is None else int(self.patience),
            warmup_epochs=int(self.warmup_epochs),
        )

    def _build_net(self, d_in: int) -> InvariantAutoencoderNet:
        # float32 whatever torch's global default dtype is: training feeds float32 tensors.
        return InvariantAutoencoderNet(
            d_in, int(self.dim_v), int(self.dim_w), int(self.hidden), int(self.n_layers),
            relevance=float(self.lam_rel) > 0, linear_w=bool(self.linear_w),
            encoder_layers=None if self.encoder_layers is None else int(self.encoder_layers),
            encoder=self.encoder, decoder=self.decoder, decoder_degree=int(self.decoder_degree),
        ).float()  # fmt: skip

    # -------------------------------------------------------------- fit / transform

    def fit(self, Z, env, exposure=None, validation=None) -> "InvariantAutoencoder":
        """Learn the encoder from Z (n, p): an array, or a `minibatches.RowSource` (e.g. an int8
        memory-mapped genotype cache) whose rows are gathered batch by batch and never held whole.

        `validation` = (Z_val, env_val) or (Z_val, env_val, exposure_val) is a separate
        validation set (for the stopping rule and the kept weights); by default 20% of the
        rows of each environment (`val_fraction`) are held out instead.
        """
        if is_row_source(Z):
            if validation is not None:
                raise InputError("an explicit validation set needs Z in memory; streamed rows hold out val_fraction")
            return self._fit_rows(Z, env, exposure)
        Z = np.asarray(Z, dtype=float)
        if Z.ndim != 2 or Z.shape[0] < 8:
            raise InputError(f"Z must be a 2-D array with at least 8 rows, got shape {Z.shape}")
        if not np.isfinite(Z).all():
            raise InputError("Z (instruments) contains NaN or infinite values")
        env = np.asarray(env)
        if env.shape != (Z.shape[0],):
            raise InputError(f"env must have one label per row of Z ({Z.shape[0]}), got shape {env.shape}")
        levels, codes, exposure = self._check_inputs(Z.shape[0], env, exposure)
        weights, config = self._weights(), self._config()
        device = resolve_device(self.device)

        if self.raw_input:
            self.z_mean_, self.z_map_ = np.zeros(Z.shape[1]), np.eye(Z.shape[1])
        else:
            self.z_mean_ = Z.mean(0)
            self.z_map_ = input_map(Z - self.z_mean_, bool(self.whiten))
        Zs = (Z - self.z_mean_) @ self.z_map_
        val_set = None if validation is None else self._validation_set(validation, levels, Z.shape[1])
        return self._train(Zs, Zs.shape[1], codes, levels, exposure, weights, config, device, Z.shape[1], env, val_set)

    def _fit_rows(self, source, env, exposure) -> "InvariantAutoencoder":
        """`fit` on a RowSource: the input map from one streamed moment pass, then streamed minibatches."""
        n, p = int(source.n), int(source.p)
        if n < 8:
            raise InputError(f"Z must have at least 8 rows, got {n}")
        levels, codes, exposure = self._check_inputs(n, env, exposure)
        if self.warm_start == "linear":
            raise InputError("--warm-start linear needs Z in memory; use --warm-start none with streamed rows")
        weights, config = self._weights(), self._config()
        device = resolve_device(self.device)
        mean, cov = input_moments(source)
        if not np.isfinite(mean).all() or not np.isfinite(cov).all():
            raise InputError("Z (instruments) contains NaN or infinite values")
        if self.raw_input:
            self.z_mean_, self.z_map_ = np.zeros(p), np.eye(p)
        else:
            self.z_mean_ = mean
            self.z_map_ = input_map_from_covariance(cov, bool(self.whiten))
        rows = AffineRows(source, self.z_mean_, self.z_map_)
        return self._train(rows, rows.p, codes, levels, exposure, weights, config, device, p, env)

    def _check_inputs(self, n: int, env, exposure):
        env = np.asarray(env)
        if env.shape != (n,):
            raise InputError(f"env must have one label per row of Z ({n}), got shape {env.shape}")
        levels, codes = np.unique(env, return_inverse=True)
        if levels.size < 2:
            raise InputError("the invariant autoencoder needs at least 2 environments")
        for name in ("dim_v", "dim_w", "hidden"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warm_start not in WARM_STARTS:
            raise InputError(f"--warm-start must be one of {', '.join(WARM_STARTS)}, got {self.warm_start!r}")
        if self.encoder not in ENCODER_KINDS:
            raise InputError(f"--encoder must be one of {', '.join(ENCODER_KINDS)}, got {self.encoder!r}")
        if self.decoder not in DECODER_KINDS:
            raise InputError(f"--decoder must be one of {', '.join(DECODER_KINDS)}, got {self.decoder!r}")
        if self.decoder == "poly" and int(self.decoder_degree) < 1:
            raise InputError(f"--decoder-degree must be at least 1, got {self.decoder_degree}")
        if self.warm_start == "linear" and self.encoder != "linear+mlp":
            raise InputError("--warm-start linear needs the linear+mlp encoder (it loads the linear path)")
        if self.raw_input and self.whiten:
            raise InputError("raw_input and whiten exclude each other: set whiten=False to feed raw Z")
        if exposure is not None:
            exposure = np.asarray(exposure, dtype=float).reshape(-1)
            if exposure.shape[0] != n or not np.isfinite(exposure).all():
                raise InputError("exposure must be finite with one value per row of Z")
        self._weights().validate()
        self._config().validate()
        return levels, codes, exposure

    def _train(self, Zs, d_in, codes, levels, exposure, weights, config, device, p, env, val_set=None):
        ds = None
        if exposure is not None and float(self.lam_rel) > 0:
            # Within-environment variation only: 2SLS uses environment fixed effects, and the
            # between-environment shift of the exposure would otherwise swamp the relevance signal.
            centred = exposure - (np.bincount(codes, weights=exposure) / np.bincount(codes))[codes]
            ds = centred / (centred.std() + 1e-12)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            net = self._build_net(d_in)
        if self.warm_start == "linear":
            self._load_linear_warm_start(net, Zs, env, exposure)
        net.to(device)
        rows_used: dict = {}
        self.history_ = train(
            net, Zs, codes, ds, weights, config, seed=int(self.seed), device=device, progress=bool(self.progress),
            validation=val_set, rows_used=rows_used,
        )  # fmt: skip
        self.net_ = net.cpu().eval()
        self.env_levels_ = levels
        self.n_features_in_ = p
        # How many rows the encoder learned from (gradient steps) and was selected on (validation).
        self.training_summary_ = {**training_summary(self.history_), **rows_used}
        return self

    def _validation_set(self, validation, levels: np.ndarray, p: int):
        """(mapped Z, environment codes, centred and scaled exposure or None) of an explicit validation set."""
        if not isinstance(validation, (tuple, list)) or len(validation) not in (2, 3):
            raise InputError("validation must be (Z_val, env_val) or (Z_val, env_val, exposure_val)")
        Zv = np.asarray(validation[0], dtype=float)
        if Zv.ndim != 2 or Zv.shape[1] != p or not np.isfinite(Zv).all():
            raise InputError(f"validation Z must be a finite 2-D array with {p} columns, got shape {Zv.shape}")
        ev = np.asarray(validation[1])
        if ev.shape != (Zv.shape[0],):
            raise InputError("validation env must have one label per row of the validation Z")
        codes = np.searchsorted(levels, ev)
        codes = np.minimum(codes, levels.size - 1)
        if not (levels[codes] == ev).all() or np.unique(codes).size < 2:
            raise InputError("validation environments must be labels of the training environments (at least 2)")
        dv = None
        if float(self.lam_rel) > 0:
            if len(validation) < 3 or validation[2] is None:
                raise InputError("the relevance head (lam_rel > 0) needs the validation exposure: (Z, env, exposure)")
            dv = np.asarray(validation[2], dtype=float).reshape(-1)
            if dv.shape[0] != Zv.shape[0] or not np.isfinite(dv).all():
                raise InputError("validation exposure must be finite with one value per row")
            centred = dv - (np.bincount(codes, weights=dv) / np.bincount(codes))[codes]
            dv = centred / (centred.std() + 1e-12)
        return (Zv - self.z_mean_) @ self.z_map_, codes, dv

    def _load_linear_warm_start(self, net: InvariantAutoencoderNet, Zs: np.ndarray, env, exposure) -> None:
        """Set the hW rows of the encoder's linear path to the closed-form invariant directions."""
        try:
            from invariant_mr.instruments.linear import LinearInvariantInstruments
        except ImportError as exc:  # pragma: no cover - depends on the closed-form module
            raise InputError("--warm-start linear needs invariant_mr.instruments.linear") from exc
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
        """(hV, hW) for the rows of Z: an array, or a `minibatches.RowSource`, encoded block by block
        (one streamed pass; only the n x (dim_v + dim_w) codes are held)."""
        self._check_fitted()
        if is_row_source(Z):
            return self._transform_rows(Z)
        Z = np.asarray(Z, dtype=float)
        if Z.ndim != 2 or Z.shape[1] != self.n_features_in_:
            raise InputError(f"Z must have {self.n_features_in_} columns, got shape {Z.shape}")
        zs = torch.as_tensor((Z - self.z_mean_) @ self.z_map_, dtype=torch.float32)
        with torch.no_grad():
            hv, hw = self.net_.encoder(zs)
        return hv.double().numpy(), hw.double().numpy()

    def _transform_rows(self, source) -> tuple[np.ndarray, np.ndarray]:
        if int(source.p) != self.n_features_in_:
            raise InputError(f"Z must have {self.n_features_in_} columns, got {source.p}")
        hv, hw = np.empty((source.n, int(self.dim_v))), np.empty((source.n, int(self.dim_w)))
        rows = AffineRows(source, self.z_mean_, self.z_map_)
        for part, block in iter_row_blocks(rows, pass_block_rows(source.p)):
            if not np.isfinite(block).all():
                raise InputError("Z (instruments) contains NaN or infinite values")
            with torch.no_grad():
                v, w = self.net_.encoder(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)))
            hv[part], hw[part] = v.double().numpy(), w.double().numpy()
        return hv, hw

    def transform(self, Z) -> np.ndarray:
        """The learned instruments hW."""
        return self.transform_all(Z)[1]

    def fit_transform(self, Z, env, exposure=None, validation=None) -> np.ndarray:
        return self.fit(Z, env, exposure, validation).transform(Z)

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
            publish_directory(stage, target)
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


__all__ = ["InvariantAutoencoder", "PRESETS", "WARM_STARTS", "input_map", "paper_recipe_params"]
