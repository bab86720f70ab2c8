"""Penalties of the invariant-autoencoder objective, as pure functions of tensors.

Every function takes (n, d) tensors and returns a scalar tensor that is
differentiable in its inputs. Kernel MMD^2 and HSIC come in two versions, both invariant to permuting rows:

* unbiased U-statistics (the default in training): their expectation is the
  population value, 0 when the distributions agree (resp. under independence);
  they can be slightly negative;
* biased V-statistics (`unbiased=False`): exactly zero for identical samples
  and never negative, but their bias grows with E k(x, x), i.e. with the
  fourth moments of the codes. Minimising them rewards light-tailed,
  sign-like codes (e.g. sign(V1 - V2)) for no reason other than the bias;
  with batches of a few hundred rows this bias is larger than the
  reconstruction loss. That is why training uses the U-statistics.

The polynomial kernel `(x'y + 1)^2` has a finite feature map, so its MMD and
HSIC are computed from explicit features in O(n d^2) time instead of from
O(n^2) kernel matrices; the values are identical to the kernel-matrix formulas
(the tests check this against a direct numpy implementation).
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch

MMD_KERNELS = ("poly", "rbf", "moments")
INDEPENDENCE_MEASURES = ("poly", "rbf", "crosscov", "dcor")
RBF_SCALES = (0.1, 1.0, 5.0)


def standardize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Columns to mean 0, SD 1, so that shrinking a code cannot fake invariance or independence."""
    xc = x - x.mean(0)
    return xc / torch.sqrt((xc * xc).mean(0) + eps)


def poly2_features(x: torch.Tensor) -> torch.Tensor:
    """Feature map of k(x, y) = (x'y + 1)^2: [1, sqrt(2) x, vec(x x')]."""
    n = x.shape[0]
    outer = (x[:, :, None] * x[:, None, :]).reshape(n, -1)
    return torch.cat([x.new_ones(n, 1), (2.0**0.5) * x, outer], dim=1)


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return d.clamp_min(0.0)


_UPPER_CACHE: dict[tuple[int, torch.device], torch.Tensor] = {}


def _upper_flat_index(n: int, device: torch.device) -> torch.Tensor:
    """Flat indices of the strict upper triangle of an (n, n) matrix, cached: training asks for the same n every step."""
    key = (n, device)
    if key not in _UPPER_CACHE:
        if len(_UPPER_CACHE) > 64:
            _UPPER_CACHE.clear()
        iu = torch.triu_indices(n, n, 1, device=device)
        _UPPER_CACHE[key] = iu[0] * n + iu[1]
    return _UPPER_CACHE[key]


def _median_from_sq_dists(d: torch.Tensor) -> torch.Tensor:
    """Median pairwise distance from a symmetric squared-distance matrix (detached).

    The off-diagonal entries are the strict upper triangle twice over, so
    their (lower) median is the median of the upper triangle: half the
    elements to gather and select from.
    """
    with torch.no_grad():
        n = d.shape[0]
        if n < 2:
            return d.new_tensor(1.0)
        upper = d.reshape(-1)[_upper_flat_index(n, d.device)]
        return upper.median().sqrt().clamp_min(1e-6)


def median_bandwidth(x: torch.Tensor) -> torch.Tensor:
    """Median pairwise distance (detached: the bandwidth is a data summary, not a parameter)."""
    with torch.no_grad():
        return _median_from_sq_dists(_sq_dists(x, x))


def _rbf_from_sq_dists(d: torch.Tensor, bandwidth: torch.Tensor, scales: Sequence[float] = RBF_SCALES) -> torch.Tensor:
    return sum(torch.exp(-d / (2.0 * (s * bandwidth) ** 2)) for s in scales)


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: torch.Tensor, scales: Sequence[float] = RBF_SCALES) -> torch.Tensor:
    """Sum over scales s of exp(-||x - y||^2 / (2 (s * bandwidth)^2))."""
    return _rbf_from_sq_dists(_sq_dists(x, y), bandwidth, scales)


def rbf_gram(x: torch.Tensor, scales: Sequence[float] = RBF_SCALES) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, bandwidth): multi-scale RBF Gram matrix of x with its median-heuristic bandwidth.

    One squared-distance matrix serves both the bandwidth and the kernel
    (the separate calls computed it twice).
    """
    d = _sq_dists(x, x)
    bw = _median_from_sq_dists(d)
    return _rbf_from_sq_dists(d, bw, scales), bw


# ---------------------------------------------------------------- MMD^2 (invariance)


def _within_mean(total_sq: torch.Tensor, diag_sum: torch.Tensor, n: int, unbiased: bool) -> torch.Tensor:
    """Mean of k(x_i, x_j) over i != j (unbiased) or over all i, j, from the full sum and the diagonal."""
    if unbiased:
        return (total_sq - diag_sum) / (n * (n - 1))
    return total_sq / (n * n)


def mmd_poly(x: torch.Tensor, y: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """MMD^2 with (x'y + 1)^2 from explicit features: sum_ij k(x_i, x_j) = ||sum_i phi(x_i)||^2."""
    fx, fy = poly2_features(x), poly2_features(y)
    sx, sy = fx.sum(0), fy.sum(0)
    n, m = x.shape[0], y.shape[0]
    kxx = _within_mean((sx * sx).sum(), (fx * fx).sum(), n, unbiased)
    kyy = _within_mean((sy * sy).sum(), (fy * fy).sum(), m, unbiased)
    return kxx + kyy - 2.0 * (sx * sy).sum() / (n * m)


def mmd_rbf(
    x: torch.Tensor, y: torch.Tensor, unbiased: bool = True, scales: Sequence[float] = RBF_SCALES
) -> torch.Tensor:
    """Multi-scale RBF MMD^2, bandwidth = median heuristic on the pooled sample."""
    # The pair's own bandwidth, as in the paper; training with RBF independence too uses the
    # fused `rbf_invariance_and_independence` (one bandwidth per batch, shared Gram matrices).
    bw = median_bandwidth(torch.cat([x, y]))
    n, m = x.shape[0], y.shape[0]
    k_self = float(len(scales))  # k(x, x) for every x
    kxx = _within_mean(rbf_kernel(x, x, bw, scales).sum(), x.new_tensor(k_self * n), n, unbiased)
    kyy = _within_mean(rbf_kernel(y, y, bw, scales).sum(), y.new_tensor(k_self * m), m, unbiased)
    kxy = rbf_kernel(x, y, bw, scales).mean()
    return kxx + kyy - 2.0 * kxy


def mmd_moments(x: torch.Tensor, y: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Mean and covariance matching: ||mean_x - mean_y||^2 + ||Cov_x - Cov_y||_F^2 (plug-in; `unbiased` unused)."""
    dm = x.mean(0) - y.mean(0)
    xc, yc = x - x.mean(0), y - y.mean(0)
    dc = xc.T @ xc / x.shape[0] - yc.T @ yc / y.shape[0]
    return (dm * dm).sum() + (dc * dc).sum()


_MMD = {"poly": mmd_poly, "rbf": mmd_rbf, "moments": mmd_moments}


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str = "poly", unbiased: bool = True) -> torch.Tensor:
    return _MMD[kernel](x, y, unbiased=unbiased)


def pairwise_mmd(h: torch.Tensor, env: torch.Tensor, kernel: str = "poly", unbiased: bool = True) -> torch.Tensor:
    """Mean MMD^2 over all pairs of environments present in `env` (integer codes)."""
    levels = torch.unique(env)
    groups = [h[env == lv] for lv in levels]
    terms = [mmd(a, b, kernel, unbiased) for a, b in combinations(groups, 2)]
    return torch.stack(terms).mean() if terms else h.new_zeros(())


# ---------------------------------------------------------------- independence


def _centered_cross_cov(fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    fx = fx - fx.mean(0)
    fy = fy - fy.mean(0)
    return fx.T @ fy / fx.shape[0]


def _center(k: torch.Tensor) -> torch.Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic_from_kernels(k: torch.Tensor, l_: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """HSIC from two kernel matrices: Song et al. (2012) U-statistic, or (1/n^2) tr(K H L H)."""
    n = k.shape[0]
    if not unbiased:
        return (_center(k) * l_).sum() / n**2
    if n < 4:
        raise ValueError("the unbiased HSIC needs at least 4 rows")
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    kt, lt = k.masked_fill(eye, 0.0), l_.masked_fill(eye, 0.0)
    k1, l1 = kt.sum(1), lt.sum(1)
    value = (kt * lt).sum() + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 * (k1 * l1).sum() / (n - 2)
    return value / (n * (n - 3))


def hsic_poly(x: torch.Tensor, y: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """HSIC with (x'y + 1)^2 kernels. The V-statistic equals ||Cov(phi(x), phi(y))||_F^2."""
    if not unbiased:
        c = _centered_cross_cov(poly2_features(x), poly2_features(y))
        return (c * c).sum()
    return hsic_from_kernels((x @ x.T + 1.0) ** 2, (y @ y.T + 1.0) ** 2, unbiased=True)


def hsic_rbf(x: torch.Tensor, y: torch.Tensor, unbiased: bool = True, scales: Sequence[float] = RBF_SCALES) -> torch.Tensor:
    """Multi-scale RBF HSIC, median-heuristic bandwidths per block."""
    k, _ = rbf_gram(x, scales)
    l_, _ = rbf_gram(y, scales)
    return hsic_from_kernels(k, l_, unbiased)


def cross_covariance(x: torch.Tensor, y: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Squared Frobenius norm of the cross-covariance ("orthogonality"): HSIC with linear kernels."""
    if not unbiased:
        c = _centered_cross_cov(x, y)
        return (c * c).sum()
    return hsic_from_kernels(x @ x.T, y @ y.T, unbiased=True)


def _distances(x: torch.Tensor) -> torch.Tensor:
    # sqrt has an infinite gradient at 0 (the diagonal): take it only where the distance is positive.
    d = _sq_dists(x, x)
    pos = d > 1e-12
    return torch.where(pos, torch.sqrt(torch.where(pos, d, torch.ones_like(d))), torch.zeros_like(d))


def distance_correlation(x: torch.Tensor, y: torch.Tensor, unbiased: bool = True, eps: float = 1e-12) -> torch.Tensor:
    """Squared distance correlation dCor^2 (Szekely et al. 2007), V-statistic version (`unbiased` unused).

    It is normalised by the marginal distance variances, so its bias does not
    reward any particular shape of the codes the way raw kernel statistics do.
    """
    a = _center(_distances(x))
    b = _center(_distances(y))
    dcov_xy = (a * b).mean()
    dcov_xx = (a * a).mean()
    dcov_yy = (b * b).mean()
    return dcov_xy / torch.sqrt(dcov_xx * dcov_yy + eps)


_INDEP = {"poly": hsic_poly, "rbf": hsic_rbf, "crosscov": cross_covariance, "dcor": distance_correlation}


def independence(x: torch.Tensor, y: torch.Tensor, measure: str = "poly", unbiased: bool = True) -> torch.Tensor:
    return _INDEP[measure](x, y, unbiased=unbiased)


def pooled_and_within_independence(
    x: torch.Tensor,
    y: torch.Tensor,
    env: torch.Tensor,
    measure: str = "poly",
    within: bool = True,
    unbiased: bool = True,
    pooled_weight: float = 1.0,
) -> torch.Tensor:
    """`pooled_weight` x the pooled dependence plus the sum over environments of the within-environment dependence.

    The within-environment terms matter because pooled independence can hold
    by cancellation while hW still tracks hV inside each environment. The
    authors' objective counts the pooled term twice (`pooled_weight=2`).
    """
    total = independence(x, y, measure, unbiased)
    if pooled_weight != 1.0:
        total = pooled_weight * total
    if within:
        for lv in torch.unique(env):
            m = env == lv
            total = total + independence(x[m], y[m], measure, unbiased)
    return total


def rbf_invariance_and_independence(
    w: torch.Tensor,
    v: torch.Tensor,
    env: torch.Tensor,
    within: bool = True,
    unbiased: bool = True,
    pooled_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pairwise RBF MMD^2 of w across environments, pooled + within RBF HSIC of w and v), from two Gram matrices.

    The training default, fused: with one median-heuristic bandwidth per code
    over the whole batch, every kernel the two penalties need is a block of
    the batch's Gram matrix of w or of v. Separately they computed about four
    times the exponentials and seven medians per step, and `exp`, `median` and
    their gradients took most of a CPU fit. The differences from the
    separate functions: the MMD bandwidth comes from all environments in the
    batch rather than from each pair (the same when K = 2), and the
    within-environment HSIC uses the batch bandwidths rather than its own.
    """
    kw, _ = rbf_gram(w)
    kv, _ = rbf_gram(v)
    k_self = float(len(RBF_SCALES))
    groups = [torch.nonzero(env == lv).squeeze(1) for lv in torch.unique(env)]
    blocks = [kw.index_select(0, g) for g in groups]  # rows of each environment
    within_means = [
        _within_mean(b.index_select(1, g).sum(), w.new_tensor(k_self * g.numel()), g.numel(), unbiased)
        for b, g in zip(blocks, groups)
    ]
    pairs = [
        within_means[a] + within_means[b] - 2.0 * blocks[a].index_select(1, groups[b]).mean()
        for a, b in combinations(range(len(groups)), 2)
    ]
    inv = torch.stack(pairs).mean() if pairs else w.new_zeros(())
    ind = hsic_from_kernels(kw, kv, unbiased)
    if pooled_weight != 1.0:
        ind = pooled_weight * ind
    if within:
        for b, g in zip(blocks, groups):
            ind = ind + hsic_from_kernels(b.index_select(1, g), kv.index_select(0, g).index_select(1, g), unbiased)
    return inv, ind


# ---------------------------------------------------------------- entropy


def gaussian_logdet(h: torch.Tensor, env: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """Mean over environments of log det Cov(h | e): the Gaussian entropy proxy (up to constants).

    The objective subtracts lam_ent times this, so codes are pushed to spread
    out in all directions instead of collapsing onto a low-dimensional set.
    """
    eye = torch.eye(h.shape[1], dtype=h.dtype, device=h.device)
    terms = []
    for lv in torch.unique(env):
        g = h[env == lv]
        gc = g - g.mean(0)
        cov = gc.T @ gc / max(g.shape[0] - 1, 1) + ridge * eye
        terms.append(torch.linalg.slogdet(cov)[1])
    return torch.stack(terms).mean()
