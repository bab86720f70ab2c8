"""Penalties of the invariant-autoencoder objective, as pure functions of tensors.

Every function takes (n, d) tensors and returns a scalar tensor that is
differentiable in its inputs. All statistics are the biased (V-statistic)
versions: they are exactly zero for identical samples, never negative for the
kernel ones, and invariant to permuting rows.

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


def standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Columns to mean 0, SD 1, so that shrinking a code cannot fake invariance or independence."""
    return (x - x.mean(0)) / (x.std(0, unbiased=False) + eps)


def poly2_features(x: torch.Tensor) -> torch.Tensor:
    """Feature map of k(x, y) = (x'y + 1)^2: [1, sqrt(2) x, vec(x x')]."""
    n = x.shape[0]
    outer = (x[:, :, None] * x[:, None, :]).reshape(n, -1)
    return torch.cat([x.new_ones(n, 1), (2.0**0.5) * x, outer], dim=1)


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return d.clamp_min(0.0)


def median_bandwidth(x: torch.Tensor) -> torch.Tensor:
    """Median pairwise distance (detached: the bandwidth is a data summary, not a parameter)."""
    with torch.no_grad():
        d = _sq_dists(x, x)
        n = x.shape[0]
        off = d[~torch.eye(n, dtype=torch.bool, device=x.device)]
        med = off.median().sqrt() if off.numel() else x.new_tensor(1.0)
        return med.clamp_min(1e-6)


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: torch.Tensor, scales: Sequence[float] = RBF_SCALES) -> torch.Tensor:
    """Sum over scales s of exp(-||x - y||^2 / (2 (s * bandwidth)^2))."""
    d = _sq_dists(x, y)
    return sum(torch.exp(-d / (2.0 * (s * bandwidth) ** 2)) for s in scales)


# ---------------------------------------------------------------- MMD^2 (invariance)


def mmd_poly(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MMD^2 with (x'y + 1)^2: squared distance between the mean feature vectors."""
    diff = poly2_features(x).mean(0) - poly2_features(y).mean(0)
    return (diff * diff).sum()


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, scales: Sequence[float] = RBF_SCALES) -> torch.Tensor:
    """Multi-scale RBF MMD^2, bandwidth = median heuristic on the pooled sample."""
    bw = median_bandwidth(torch.cat([x, y]))
    kxx = rbf_kernel(x, x, bw, scales).mean()
    kyy = rbf_kernel(y, y, bw, scales).mean()
    kxy = rbf_kernel(x, y, bw, scales).mean()
    return kxx + kyy - 2.0 * kxy


def mmd_moments(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean and covariance matching: ||mean_x - mean_y||^2 + ||Cov_x - Cov_y||_F^2."""
    dm = x.mean(0) - y.mean(0)
    xc, yc = x - x.mean(0), y - y.mean(0)
    dc = xc.T @ xc / x.shape[0] - yc.T @ yc / y.shape[0]
    return (dm * dm).sum() + (dc * dc).sum()


_MMD = {"poly": mmd_poly, "rbf": mmd_rbf, "moments": mmd_moments}


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str = "poly") -> torch.Tensor:
    return _MMD[kernel](x, y)


def pairwise_mmd(h: torch.Tensor, env: torch.Tensor, kernel: str = "poly") -> torch.Tensor:
    """Mean MMD^2 over all pairs of environments present in `env` (integer codes)."""
    levels = torch.unique(env)
    groups = [h[env == lv] for lv in levels]
    terms = [mmd(a, b, kernel) for a, b in combinations(groups, 2)]
    return torch.stack(terms).mean() if terms else h.new_zeros(())


# ---------------------------------------------------------------- independence


def _centered_cross_cov(fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    fx = fx - fx.mean(0)
    fy = fy - fy.mean(0)
    return fx.T @ fy / fx.shape[0]


def hsic_poly(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """HSIC with (x'y + 1)^2 kernels: (1/n^2) tr(K H L H) = ||Cov(phi(x), phi(y))||_F^2."""
    c = _centered_cross_cov(poly2_features(x), poly2_features(y))
    return (c * c).sum()


def _center(k: torch.Tensor) -> torch.Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic_rbf(x: torch.Tensor, y: torch.Tensor, scales: Sequence[float] = RBF_SCALES) -> torch.Tensor:
    """Multi-scale RBF HSIC (1/n^2) tr(K H L H), median-heuristic bandwidths per block."""
    k = rbf_kernel(x, x, median_bandwidth(x), scales)
    l_ = rbf_kernel(y, y, median_bandwidth(y), scales)
    return (_center(k) * l_).sum() / x.shape[0] ** 2


def cross_covariance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of the cross-covariance ("orthogonality")."""
    c = _centered_cross_cov(x, y)
    return (c * c).sum()


def distance_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Squared distance correlation dCor^2 (Szekely et al. 2007), V-statistic version."""
    a = _center(torch.sqrt(_sq_dists(x, x) + eps))
    b = _center(torch.sqrt(_sq_dists(y, y) + eps))
    dcov_xy = (a * b).mean()
    dcov_xx = (a * a).mean()
    dcov_yy = (b * b).mean()
    return dcov_xy / torch.sqrt(dcov_xx * dcov_yy + eps)


_INDEP = {"poly": hsic_poly, "rbf": hsic_rbf, "crosscov": cross_covariance, "dcor": distance_correlation}


def independence(x: torch.Tensor, y: torch.Tensor, measure: str = "poly") -> torch.Tensor:
    return _INDEP[measure](x, y)


def pooled_and_within_independence(
    x: torch.Tensor, y: torch.Tensor, env: torch.Tensor, measure: str = "poly", within: bool = True
) -> torch.Tensor:
    """Dependence pooled plus the sum over environments of the within-environment dependence.

    The within-environment terms matter because pooled independence can hold
    by cancellation while hW still tracks hV inside each environment.
    """
    total = independence(x, y, measure)
    if within:
        for lv in torch.unique(env):
            m = env == lv
            total = total + independence(x[m], y[m], measure)
    return total


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
