"""A denoising stage-1 encoder: project each row onto the polynomial decoder's surface.

Why. Under measurement noise a *linear* encoder h = L z cannot read the latents:
under polynomial mixing they are the smallest-variance directions of Z, where
a little noise swamps them (poly3 with 2% noise: R² 0.5-0.8 of the latents on
the best linear codes). The information is still there: the higher monomials
(V³, V²W, ...) carry the latents with a high signal-to-noise ratio, but only
through a nonlinear map. Given a decoder r(h) = monomials(h) C, the best code
of a noisy row t is its projection onto the decoder's surface,

    h(t) = argmin_h ||t - monomials(h) C||²,

the maximum-likelihood latent under Gaussian noise in the reconstruction
metric (an errors-in-variables decoder). This is a nonlinear encoder with no
weights of its own: it is determined by the decoder, so it cannot overfit
beyond what the decoder does.

Fitting (joint maximum likelihood of codes and decoder). Every training row's
code is a free parameter, warm-started from the linear encoder's codes; the
decoder is solved inside the loss (variable projection, the same loss and
analytic gradient as the linear encoder's, `polynomial_decoder._Stage1Problem`,
taken in the codes instead of in L), and L-BFGS moves the codes. Held-out rows
are projected onto the fitted decoder (a per-row Levenberg-Marquardt, started
from their linear codes mapped into the fitted code coordinates), and the
held-out reconstruction error judges the result against the linear encoder:
no ground truth is used anywhere.

Measured (poly3, K = 2, 2% noise, 3,000 rows, seed 0; docs/polynomial_method.md): linear codes
reach R² 0.69 / 0.80 / 0.51 / 0.55 of (V1, V2, W1, W2), the projected codes 0.99 / 0.98 / 0.85 / 0.86,
and the instruments stage 2 finds on them R² 0.85 of W with 0.005 of V. The joint
optimum is not always the best one (from the true latents the same loss reaches
R² 0.97 of W): the codes can drift along a nearly flat valley of smooth
reparametrisations that the decoder nearly absorbs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from invariant_mr.instruments.polynomial_decoder import (
    _derivative_terms,
    _monomial_rows,
    _Stage1Problem,
    monomial_index,
)


def _residual_and_jacobian(u: np.ndarray, T: np.ndarray, C: np.ndarray, index, terms):
    """Per-row residuals (n, r) of t - monomials(u) C and their Jacobians d(monomials(u) C)/du (n, r, k)."""
    n, k = u.shape
    Pt = _monomial_rows(u, index)
    dP = np.zeros((len(index), k, n))
    for j, i, a, low in terms:
        dP[j, i] += a * Pt[low]
    return T - Pt.T @ C, np.einsum("mkn,mr->nrk", dP, C)


def project_onto_decoder(
    T: np.ndarray, C: np.ndarray, degree: int, u0: np.ndarray, n_iter: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n, k), squared residual per row): each row of T projected onto the surface monomials(u) C.

    A Levenberg-Marquardt step per row, all rows at once (k unknowns against r residuals each); a
    step is kept only where it lowers that row's residual, so no row ends worse than its start u0.
    """
    n, k = u0.shape
    index = monomial_index(k, degree)
    terms = _derivative_terms(index)
    u = np.array(u0, dtype=float, copy=True)
    res, J = _residual_and_jacobian(u, T, C, index, terms)
    cost = (res * res).sum(1)
    damping = np.full(n, 1e-3)
    eye = np.eye(k)
    for _ in range(int(n_iter)):
        g = np.einsum("nrk,nr->nk", J, res)
        H = np.einsum("nrk,nrl->nkl", J, J)
        # Marquardt's scaling (damping times the diagonal), plus a floor for a row whose Jacobian vanishes.
        scaled = H + damping[:, None, None] * (np.einsum("nkk->nk", H)[:, :, None] * eye + 1e-12 * eye)
        step = np.linalg.solve(scaled, g[:, :, None])[:, :, 0]
        trial = u + step
        res_t, J_t = _residual_and_jacobian(trial, T, C, index, terms)
        cost_t = (res_t * res_t).sum(1)
        better = cost_t < cost
        u[better], res[better], J[better], cost[better] = trial[better], res_t[better], J_t[better], cost_t[better]
        damping = np.where(better, damping / 3.0, damping * 4.0)
    return u, cost


class _FreeCodesProblem(_Stage1Problem):
    """The variable-projection loss with every row's code free (the gradient in h, not in L)."""

    def __init__(self, T: np.ndarray, k: int, degree: int, ridge: float):
        super().__init__(np.empty((T.shape[0], 0)), T, k, degree, ridge)

    def value_and_grad(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        loss, G_h = self.codes_loss_and_grad(flat.reshape(self.n, self.k))
        return loss, G_h.ravel()


def _whitening(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = h.mean(0)
    hc = h - mean
    return mean, np.linalg.cholesky(hc.T @ hc / h.shape[0])


@dataclass(frozen=True)
class DecoderProjection:
    """A fitted projection encoder: codes(h_lin, T) = projection of T onto the decoder, from aligned h_lin.

    `align` ((k + 1, k)) maps [1, linear codes] to a start in the decoder's code coordinates (the
    least-squares fit of the fitted training codes on the linear ones); `decoder` is C on
    monomials of those codes.
    """

    degree: int
    align: np.ndarray
    decoder: np.ndarray
    n_iter: int

    def codes(self, h_lin: np.ndarray, T: np.ndarray) -> np.ndarray:
        start = np.column_stack([np.ones(h_lin.shape[0]), h_lin]) @ self.align
        return project_onto_decoder(T, self.decoder, self.degree, start, self.n_iter)[0]

    def row_errors(self, h_lin: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Squared reconstruction error of each projected row, relative to the mean squared norm of T's rows."""
        start = np.column_stack([np.ones(h_lin.shape[0]), h_lin]) @ self.align
        cost = project_onto_decoder(T, self.decoder, self.degree, start, self.n_iter)[1]
        return cost / (T * T).sum(1).mean()

    def reconstruction_error(self, h_lin: np.ndarray, T: np.ndarray) -> float:
        """Relative squared error of the projected rows (held-out rows: a check on new data)."""
        return float(self.row_errors(h_lin, T).mean())


def fit_decoder_projection(
    h_lin: np.ndarray,
    T: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    degree: int,
    *,
    ridge: float,
    max_iter: int,
    n_iter: int = 30,
) -> tuple[DecoderProjection, float, np.ndarray]:
    """(fitted projection, training error, held-out errors per row) from the linear codes h_lin of every row.

    The held-out error is the mean of the per-row errors (kept per row for paired comparisons of models).

    Codes of the training rows are optimised jointly with the decoder (L-BFGS on the projected loss);
    held-out rows are projected onto the result and scored, as new rows would be.
    """
    k = h_lin.shape[1]
    mean, R = _whitening(h_lin[train])
    u_lin = np.linalg.solve(R, (h_lin - mean).T).T
    problem = _FreeCodesProblem(T[train], k, degree, ridge)
    res = optimize.minimize(
        problem.value_and_grad, u_lin[train].ravel(), jac=True, method="L-BFGS-B",
        options={"maxiter": int(max_iter), "ftol": 1e-15, "gtol": 1e-10},
    )  # fmt: skip
    h_fit = res.x.reshape(-1, k)
    fit_mean, fit_R = _whitening(h_fit)
    u_fit = np.linalg.solve(fit_R, (h_fit - fit_mean).T).T  # the loss's own gauge: centred, whitened
    index = monomial_index(k, degree)
    Pt = _monomial_rows(u_fit, index)
    C = np.linalg.solve(Pt @ Pt.T + ridge * u_fit.shape[0] * np.eye(len(index)), Pt @ T[train])
    # Start map from the raw linear codes (not their whitened version) to the fitted codes.
    design = np.column_stack([np.ones(train.size), h_lin[train]])
    align, *_ = np.linalg.lstsq(design, u_fit, rcond=None)
    fitted = DecoderProjection(degree=degree, align=align, decoder=C, n_iter=int(n_iter))
    train_error = float(((T[train] - Pt.T @ C) ** 2).sum() / (T[train] ** 2).sum())
    return fitted, train_error, fitted.row_errors(h_lin[val], T[val])


__all__ = ["DecoderProjection", "fit_decoder_projection", "project_onto_decoder"]
