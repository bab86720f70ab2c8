"""The polynomial decoder of stage 1: monomials of the codes, their derivatives, and the variable-projection loss.

Shared by the linear encoder (`polynomial.py`: h = X L, only L optimised) and
the denoising projection encoder (`manifold_projection.py`: every row's code
free, then each new row projected onto the decoder's surface). For fixed codes
the best decoder C is a ridge least-squares solution, solved inside the loss
(variable projection), so only the codes' parameters take gradient steps.
"""

from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
import scipy.linalg


def monomial_index(k: int, degree: int) -> list[tuple[int, ...]]:
    """Index tuples of all monomials of k variables up to `degree`, the constant (empty tuple) first."""
    out: list[tuple[int, ...]] = [()]
    for deg in range(1, degree + 1):
        out.extend(combinations_with_replacement(range(k), deg))
    return out


def n_monomials(k: int, degree: int) -> int:
    return len(monomial_index(k, degree))


def _monomial_rows(h: np.ndarray, index: list[tuple[int, ...]]) -> np.ndarray:
    """(len(index), n): the monomials of the columns of h as contiguous rows.

    `index` lists every monomial after its lower-degree prefix (as `monomial_index` does), so each
    is one product of an earlier row and one variable."""
    ht = np.ascontiguousarray(h.T)
    out = np.empty((len(index), h.shape[0]))
    position = {combo: j for j, combo in enumerate(index)}
    out[0] = 1.0
    for j, combo in enumerate(index[1:], 1):
        if len(combo) == 1:
            out[j] = ht[combo[0]]
        else:
            np.multiply(out[position[combo[:-1]]], ht[combo[-1]], out=out[j])
    return out


def _monomials_np(h: np.ndarray, index: list[tuple[int, ...]]) -> np.ndarray:
    return _monomial_rows(h, index).T


def _derivative_terms(index: list[tuple[int, ...]]) -> list[tuple[int, int, float, int]]:
    """(monomial j, variable i, multiplicity a, position of monomial j / h_i) for every h_i in monomial j:
    d monomial_j / d h_i = a * monomial_(j / h_i)."""
    position = {combo: j for j, combo in enumerate(index)}
    terms = []
    for j, combo in enumerate(index):
        for i in sorted(set(combo)):
            reduced = list(combo)
            reduced.remove(i)
            terms.append((j, i, float(combo.count(i)), position[tuple(reduced)]))
    return terms


class _Stage1Problem:
    """The variable-projection loss of one (degree, latent dimension) on fixed rows, with its gradient.

    X: encoder input (n, r), the signal coordinates scaled to unit variance
    (conditioning only; the loss does not depend on it). T: reconstruction
    target (n, r), the same coordinates in the noise-aware metric.

    The codes are whitened inside the loss (centred, Cholesky-whitened): the
    loss is invariant to affine maps of h, so this removes that gauge and keeps
    the monomials well conditioned. The decoder C is the ridge solution for the
    current codes; by the envelope theorem the gradient in L with C held fixed
    is the gradient of the projected loss. The gradient is analytic (a small
    autograd graph costs more in per-operation overhead than the arithmetic);
    a test checks it against finite differences.

    Whitening backward: with u = hc R^-T, R R' = hc'hc / n and du0 = dhc R^-T,
    du = du0 - u Phi(E)' where E = (u'du0 + du0'u) / n and Phi keeps the lower
    triangle with the diagonal halved; so the gradient in du0 is
    G_u - u (Q + Q') / n with Q = Phi(G_u' u).
    """

    def __init__(self, X: np.ndarray, T: np.ndarray, k: int, degree: int, ridge: float):
        self.X, self.T = X, T
        self.k, self.degree, self.ridge = k, degree, ridge
        self.index = monomial_index(k, degree)
        self.terms = _derivative_terms(self.index)
        self.n = X.shape[0]
        self.tss = float((T * T).sum())
        self.penalty = ridge * self.n * np.eye(len(self.index))

    def value_and_grad(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        loss, G_h = self.codes_loss_and_grad(self.X @ flat.reshape(-1, self.k))
        return loss, (self.X.T @ G_h).ravel()

    def codes_loss_and_grad(self, h: np.ndarray) -> tuple[float, np.ndarray]:
        """The projected loss of codes h (n, k) and its gradient in h."""
        n, k = self.n, self.k
        hc = h - h.mean(0)
        try:
            R = np.linalg.cholesky(hc.T @ hc / n)
            u = scipy.linalg.solve_triangular(R, hc.T, lower=True).T  # hc R^-T
            Pt = _monomial_rows(u, self.index)  # (m, n): one contiguous row per monomial
            C = np.linalg.solve(Pt @ Pt.T + self.penalty, Pt @ self.T)
        except np.linalg.LinAlgError:  # codes numerically rank-deficient: steer the line search away
            return 1e3, np.zeros_like(h)
        resid = self.T - Pt.T @ C
        loss = ((resid * resid).sum() + self.ridge * n * (C * C).sum()) / self.tss
        G_Pt = (-2.0 / self.tss) * (C @ resid.T)  # d loss / d P, transposed
        G_ut = np.zeros((k, n))
        for j, i, a, low in self.terms:
            G_ut[i] += a * G_Pt[j] * Pt[low]
        G_u = G_ut.T
        Q = np.tril(G_u.T @ u)
        Q[np.diag_indices(k)] /= 2
        G_0 = G_u - u @ (Q + Q.T) / n
        G_hc = scipy.linalg.solve_triangular(R, G_0.T, lower=True, trans=1).T  # G_0 R^-1
        return float(loss), G_hc - G_hc.mean(0)
