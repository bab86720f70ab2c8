"""The simulation protocol of Huang, Robinson & Locatello (ICML 2026), section 4 of METHOD.md.

Latent blocks per environment e = 1..K (dim V = dim W = d, default 2):

    H_e ~ N(2 (e-1) 1, I)                  hidden confounder, shifts across environments
    V0 ~ N(0, S), W ~ N(0, S)              S Toeplitz (d, d-1, ..., 1) / d
    V = V0 + eta_e H                       confounded block (distribution shifts)
    D = beta'[V, W] + alpha1'H + e_D       exposure
    Y = theta D + alpha2'H + e_Y           outcome

W is the exogenous block: same distribution in every environment and
independent of H and V. The genotype is an injective mixture Z = g(V, W).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations_with_replacement

import numpy as np

from invariant_mr.data import MRData
from invariant_mr.errors import InputError

#: name -> (mixing family, polynomial weight kind or None)
PAPER_SETTINGS: dict[str, tuple[str, str | None]] = {
    "linear": ("linear", None),
    "poly2": ("poly", "orthogonal"),
    "poly3": ("poly", "orthogonal"),
    "poly2-normal": ("poly", "normal"),
    "poly3-normal": ("poly", "normal"),
    "mlp": ("mlp", None),
    "discrete": ("discrete", None),
}

#: eta_e per number of environments (paper: scalar shift for K=2, non-scalar for K=3).
_ETA = {
    2: [np.eye(2), 2 * np.eye(2)],
    3: [np.eye(2), np.diag([2.0, 1.0]), np.diag([1.0, 2.0])],
}


@dataclass(frozen=True)
class SimulatedData:
    """A simulated data set and the truth behind it."""

    data: MRData
    V: np.ndarray
    W: np.ndarray
    H: np.ndarray
    theta: float
    params: dict = field(default_factory=dict)

    def truth_dict(self) -> dict:
        """JSON-ready description of the truth (the latent arrays are not included)."""
        return {"theta": self.theta, **self.params}


def toeplitz_cov(d: int) -> np.ndarray:
    idx = np.arange(d)
    return (d - np.abs(idx[:, None] - idx[None, :])) / d


def monomials(X: np.ndarray, degree: int) -> np.ndarray:
    """All monomials of the columns of X up to `degree`, the constant included."""
    n, d = X.shape
    cols = [np.ones(n)]
    for deg in range(1, degree + 1):
        for combo in combinations_with_replacement(range(d), deg):
            cols.append(np.prod(X[:, list(combo)], axis=1))
    return np.column_stack(cols)


def _eta(n_envs: int, d: int) -> list[np.ndarray]:
    if d == 2 and n_envs in _ETA:
        return _ETA[n_envs]
    # Beyond the paper's dimensions: alternate scalar and axis-aligned shifts.
    mats = [np.eye(d)]
    for e in range(1, n_envs):
        diag = np.ones(d)
        diag[(e - 1) % d] = 2.0
        mats.append(np.diag(diag) if e > 1 or n_envs > 2 else 2 * np.eye(d))
    return mats


def _invertible_mlp(X: np.ndarray, rng: np.random.Generator, slope: float = 0.2) -> np.ndarray:
    """Two leaky-ReLU layers with well-conditioned square weights: injective by construction."""
    d = X.shape[1]
    out = X
    for _ in range(2):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        scale = rng.uniform(0.5, 1.5, size=d)
        out = out @ (q * scale)
        out = np.where(out > 0, out, slope * out)
    return out


def simulate_paper(
    setting: str = "linear",
    *,
    n_envs: int = 2,
    n_per_env: int = 3000,
    dim_v: int = 2,
    dim_w: int = 2,
    theta: float = 1.0,
    n_variants_discrete: int = 30,
    seed: int | np.random.Generator = 0,
) -> SimulatedData:
    """Simulate one data set of the paper's protocol.

    `setting` is one of `PAPER_SETTINGS`. The mixing `g` is drawn from the same
    seed as the samples, so a seed fixes everything.
    """
    if setting not in PAPER_SETTINGS:
        raise InputError(f"unknown paper setting {setting!r}; choose from {', '.join(PAPER_SETTINGS)}")
    if n_envs < 2:
        raise InputError(f"--envs must be at least 2, got {n_envs}")
    if n_per_env < 2:
        raise InputError(f"--n-per-env must be at least 2, got {n_per_env}")
    if dim_v != dim_w and n_envs in _ETA:
        raise InputError("the paper's protocol uses dim V = dim W")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    family, weights = PAPER_SETTINGS[setting]
    d = dim_v
    eta = _eta(n_envs, d)
    Sv, Sw = toeplitz_cov(dim_v), toeplitz_cov(dim_w)
    Lv, Lw = np.linalg.cholesky(Sv), np.linalg.cholesky(Sw)

    n = n_envs * n_per_env
    env = np.repeat(np.arange(1, n_envs + 1), n_per_env)
    H = rng.standard_normal((n, d)) + 2.0 * (env[:, None] - 1)
    V0 = rng.standard_normal((n, dim_v)) @ Lv.T
    W = rng.standard_normal((n, dim_w)) @ Lw.T
    V = V0 + np.einsum("nij,nj->ni", np.stack([eta[e - 1] for e in env]), H)
    latents = np.column_stack([V, W])

    beta = np.ones(dim_v + dim_w)
    D = latents @ beta + H.sum(axis=1) + rng.standard_normal(n)
    Y = theta * D + H.sum(axis=1) + rng.standard_normal(n)

    if family == "linear":
        Z = latents @ rng.standard_normal((latents.shape[1], latents.shape[1]))
    elif family == "poly":
        degree = int(setting[4])
        M = monomials(latents, degree)
        if weights == "orthogonal":
            A, _ = np.linalg.qr(rng.standard_normal((M.shape[1], M.shape[1])))
        else:
            A = rng.standard_normal((M.shape[1], M.shape[1])) / np.sqrt(M.shape[1])
        Z = M @ A
    elif family == "mlp":
        Z = _invertible_mlp(latents, rng)
    else:  # discrete: each variant is the argmax of three linear logits, values 0/1/2
        B = rng.standard_normal((latents.shape[1], n_variants_discrete, 3))
        bias = rng.standard_normal((n_variants_discrete, 3))
        logits = np.einsum("nk,kjc->njc", latents, B) + bias
        Z = logits.argmax(axis=2).astype(float)

    ids = np.array([f"s{i:06d}" for i in range(n)], dtype=object)
    data = MRData(
        Z=Z,
        exposure=D,
        outcome=Y,
        env=np.array([f"env{e}" for e in env], dtype=object),
        sample_ids=ids,
    )
    params = {
        "model": "paper",
        "setting": setting,
        "n_envs": n_envs,
        "n_per_env": n_per_env,
        "dim_v": dim_v,
        "dim_w": dim_w,
        "n_instruments": int(data.p),
    }
    return SimulatedData(data=data, V=V, W=W, H=H, theta=float(theta), params=params)
