"""The simulation protocol of Huang, Robinson & Locatello (ICML 2026), section 4 of METHOD.md.

Latent blocks per environment e = 1..K (dim V = dim W = d, default 2):

    H_e ~ N(2 (e-1) 1, I)                  hidden confounder, shifts across environments
    V0 ~ N(0, S), W ~ N(0, S)              S Toeplitz (d, d-1, ..., 1) / d
    V = V0 + eta_e H                       confounded block (distribution shifts)
    D = beta'[V, W] + alpha1'H + e_D       exposure
    Y = theta D + alpha2'H + e_Y           outcome

W is the exogenous block: same distribution in every environment and
independent of H and V. The genotype is an injective mixture Z = g(V, W).

Mixing recipes. The defaults are this project's: orthogonal or scaled
Gaussian polynomial weights, a two-layer invertible MLP with leaky-ReLU after
both layers, 30 discrete variants from linear logits, all drawn from the data
seed. The authors' published code differs, and `mixing_recipe="paper-code"`
reproduces it (issue 11, finding 1):

* linear / poly: a Gaussian weight matrix whose singular values are clipped
  below at s_max / 5 (`weights="clipped-normal"`, also selectable alone);
* mlp: two square layers with U(-1, 1) weights whose columns are scaled to
  unit l2 norm, leaky-ReLU(0.2) only *between* the layers (the output is
  linear in the hidden layer);
* discrete: an MLP (dim V + dim W) -> 2x -> 3x of the same kind (U(-1, 1),
  l2-normalised columns, leaky-ReLU(0.2) between), read as 3 logits per
  variable; each variable is the argmax, so Z has dim V + dim W columns with
  values 0/1/2. (No biases: the published description names none.)

`mix_seed` draws the mixing from its own seed (the authors use 100 for every
data seed), so all data seeds share one mixing; by default the mixing comes
from the data seed. `noise` adds Gaussian measurement error to Z with SD
`noise` times each column's SD of the noise-free Z (real genotypes are never
an exact polynomial of their latents).
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


#: Recipes for the mixing g (see the module docstring).
MIXING_RECIPES = ("default", "paper-code")
#: Polynomial / linear weight kinds; "default" keeps the setting's own kind.
WEIGHT_KINDS = ("default", "clipped-normal")


def clipped_normal_matrix(m: int, rng: np.random.Generator, floor: float = 0.2) -> np.ndarray:
    """Gaussian (m, m) matrix with singular values clipped below at `floor` x the largest (the authors' recipe)."""
    U, s, Vt = np.linalg.svd(rng.standard_normal((m, m)))
    return (U * np.maximum(s, floor * s[0])) @ Vt


def _unit_columns_uniform(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    A = rng.uniform(-1.0, 1.0, size=(rows, cols))
    return A / np.linalg.norm(A, axis=0, keepdims=True)


def _leaky(x: np.ndarray, slope: float = 0.2) -> np.ndarray:
    return np.where(x > 0, x, slope * x)


def paper_code_mlp(X: np.ndarray, rng: np.random.Generator, widths: tuple[int, int]) -> np.ndarray:
    """The authors' mixing MLP: U(-1,1) weights, l2-normalised columns, leaky-ReLU(0.2) between the two layers only."""
    W1 = _unit_columns_uniform(X.shape[1], widths[0], rng)
    W2 = _unit_columns_uniform(widths[0], widths[1], rng)
    return _leaky(X @ W1) @ W2


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
    noise: float = 0.0,
    weights: str = "default",
    mix_seed: int | None = None,
    mixing_recipe: str = "default",
) -> SimulatedData:
    """Simulate one data set of the paper's protocol.

    `setting` is one of `PAPER_SETTINGS`. The mixing `g` is drawn from the same
    seed as the samples, so a seed fixes everything, unless `mix_seed` is given
    (then every data seed shares the mixing drawn from it). `weights`,
    `mixing_recipe` and `noise` are described in the module docstring; their
    defaults give this project's original protocol, draw for draw.
    """
    if setting not in PAPER_SETTINGS:
        raise InputError(f"unknown paper setting {setting!r}; choose from {', '.join(PAPER_SETTINGS)}")
    if n_envs < 2:
        raise InputError(f"--envs must be at least 2, got {n_envs}")
    if n_per_env < 2:
        raise InputError(f"--n-per-env must be at least 2, got {n_per_env}")
    if dim_v != dim_w and n_envs in _ETA:
        raise InputError("the paper's protocol uses dim V = dim W")
    if mixing_recipe not in MIXING_RECIPES:
        raise InputError(f"unknown mixing recipe {mixing_recipe!r}; choose from {', '.join(MIXING_RECIPES)}")
    if weights not in WEIGHT_KINDS:
        raise InputError(f"unknown weights {weights!r}; choose from {', '.join(WEIGHT_KINDS)}")
    if not (np.isfinite(noise) and noise >= 0):
        raise InputError(f"noise must be a non-negative number, got {noise}")
    if mix_seed is not None and (isinstance(mix_seed, bool) or not isinstance(mix_seed, (int, np.integer))):
        raise InputError(f"mix_seed must be an integer or None, got {mix_seed!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # The mixing's own generator: the data stream by default (the original protocol, draw for draw).
    mix_rng = rng if mix_seed is None else np.random.default_rng(int(mix_seed))
    family, weight_kind = PAPER_SETTINGS[setting]
    if weights == "clipped-normal" or (mixing_recipe == "paper-code" and weights == "default"):
        weight_kind = "clipped-normal"
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

    m = latents.shape[1]
    if family == "linear":
        A = clipped_normal_matrix(m, mix_rng) if weight_kind == "clipped-normal" else mix_rng.standard_normal((m, m))
        Z = latents @ A
    elif family == "poly":
        degree = int(setting[4])
        M = monomials(latents, degree)
        if weight_kind == "clipped-normal":
            A = clipped_normal_matrix(M.shape[1], mix_rng)
        elif weight_kind == "orthogonal":
            A, _ = np.linalg.qr(mix_rng.standard_normal((M.shape[1], M.shape[1])))
        else:
            A = mix_rng.standard_normal((M.shape[1], M.shape[1])) / np.sqrt(M.shape[1])
        Z = M @ A
    elif family == "mlp":
        Z = paper_code_mlp(latents, mix_rng, (m, m)) if mixing_recipe == "paper-code" else _invertible_mlp(latents, mix_rng)
    elif mixing_recipe == "paper-code":  # discrete: m variables, each the argmax of 3 MLP logits
        logits = paper_code_mlp(latents, mix_rng, (2 * m, 3 * m)).reshape(n, m, 3)
        Z = logits.argmax(axis=2).astype(float)
    else:  # discrete: each variant is the argmax of three linear logits, values 0/1/2
        B = mix_rng.standard_normal((m, n_variants_discrete, 3))
        bias = mix_rng.standard_normal((n_variants_discrete, 3))
        logits = np.einsum("nk,kjc->njc", latents, B) + bias
        Z = logits.argmax(axis=2).astype(float)
    if noise > 0:  # drawn last, so the noise-free part of Z is the same for every noise level
        Z = Z + noise * Z.std(axis=0) * rng.standard_normal(Z.shape)

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
        "noise": float(noise),
        "weights": (weight_kind or "normal") if family in ("linear", "poly") else None,
        "mix_seed": None if mix_seed is None else int(mix_seed),
        "mixing_recipe": mixing_recipe,
    }
    return SimulatedData(data=data, V=V, W=W, H=H, theta=float(theta), params=params)
