"""Inference robust to some invalid instruments: Two-Stage Hard Thresholding (TSHT).

Reference: Z. Guo, H. Kang, T. T. Cai and D. S. Small (2018), "Confidence
intervals for causal effects with invalid instruments by using two-stage
hard thresholding with voting", J. R. Stat. Soc. B 80(4):793-815,
doi:10.1111/rssb.12275. Thresholds and voting follow the authors' R package
RobustIV (low-dimensional "OLS" reduced forms).

Model: y = theta d + Z'pi + C'gamma + e, d = Z'g + C'delta + v, where an
instrument j is *valid* when pi_j = 0. The reduced-form coefficients are
Gamma = theta g + pi (outcome on Z) and g (exposure on Z).

1. Reduced forms by OLS of y and d on [Z, C], with a joint (robust HC0 or
   homoskedastic) covariance of (Gamma_hat, g_hat).
2. First thresholding: instrument j is *relevant* when
   |g_j| > sqrt(log n) * SE(g_j).
3. Second thresholding with voting: each relevant j proposes
   theta_j = Gamma_j / g_j and votes for every relevant k whose implied
   pleiotropy pi_k = Gamma_k - theta_j g_k is within sqrt(log n) standard
   errors of zero (the SE accounts for the estimation of theta_j). Votes are
   made symmetric (both must agree).
4. The valid set is the union of the majority winners (voted for by more
   than half of the relevant instruments) and the plurality winners (most
   votes), RobustIV's "MP" rule. Consistent under the plurality rule: the
   valid instruments form the largest group with a common ratio.
5. Estimate: 2SLS with the selected valid instruments as instruments and
   every other instrument as an exogenous control (so their direct effects
   pi are estimated out). Under homoskedasticity this is the efficient
   member of Guo et al.'s weighted estimators. The SE and Wald CI treat the
   selected set as known, which is asymptotically valid when selection is
   consistent (Guo et al., Theorem 2); with weak or nearly-equal ratio
   groups it is not, and the selection is reported so that users can see it.
"""

from __future__ import annotations

import numpy as np

from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import KClassFit, fit_kclass, independent_basis, residualize


class TwoStageHardThresholding:
    """TSHT of Guo, Kang, Cai & Small (2018): select valid instruments by voting, then 2SLS.

    Parameters
    ----------
    threshold : float or None
        Multiplier of the SE in both thresholding steps; None uses
        sqrt(log n), the RobustIV default for OLS reduced forms.
    cov_type : "robust" (HC0) or "unadjusted".

    Learned attributes: `relevant_`, `valid_` (boolean masks over instrument
    columns), `votes_` (symmetric vote matrix over the relevant ones),
    `ratio_estimates_`, `fit_` (the final `KClassFit`), `estimate_`, `se_`.
    """

    def __init__(self, threshold: float | None = None, cov_type: str = "robust"):
        self.threshold = threshold
        self.cov_type = cov_type

    def fit(self, outcome, exposure, instruments, exog=None) -> "TwoStageHardThresholding":
        y = np.asarray(outcome, dtype=float).ravel()
        d = np.asarray(exposure, dtype=float).ravel()
        n = y.shape[0]
        Z = np.asarray(instruments, dtype=float).reshape(n, -1)
        p = Z.shape[1]
        if self.cov_type not in ("robust", "unadjusted"):
            raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {self.cov_type!r}")
        if p < 2:
            raise InputError("TSHT needs at least 2 instruments to vote on validity")
        cols = [np.ones((n, 1))]
        if exog is not None:
            cols.append(np.asarray(exog, dtype=float).reshape(n, -1))
        _, basis = independent_basis(np.hstack(cols))
        Zt = residualize(Z, basis)
        yt = residualize(y[:, None], basis)[:, 0]
        dt = residualize(d[:, None], basis)[:, 0]
        gram = Zt.T @ Zt
        if np.linalg.matrix_rank(gram) < p:
            raise InputError("TSHT: the instruments are collinear (after the controls)")
        # Reduced-form coefficients and their sandwich covariances, written with the p x p inverse
        # Gram matrix so that no extra n x p arrays are formed: the influence matrix
        # Q = Zt G^-1 and its weighted copies took 1.2 GB at 30,000 x 1,000.
        G_inv = np.linalg.inv(gram)
        G_inv = (G_inv + G_inv.T) / 2
        Gamma, g = G_inv @ (Zt.T @ yt), G_inv @ (Zt.T @ dt)
        eY, eD = yt - Zt @ Gamma, dt - Zt @ g
        if self.cov_type == "robust":
            ZY = Zt * eY[:, None]
            meat_YY = ZY.T @ ZY
            ZD = Zt * eD[:, None]
            meat_DD, meat_YD = ZD.T @ ZD, ZY.T @ ZD
            del ZY, ZD
            V_G, V_g, C_Gg = G_inv @ meat_YY @ G_inv, G_inv @ meat_DD @ G_inv, G_inv @ meat_YD @ G_inv
        else:
            df = n - p - basis.shape[1]
            V_G = G_inv * (eY @ eY) / df
            V_g = G_inv * (eD @ eD) / df
            C_Gg = G_inv * (eY @ eD) / df
        C_sym = (C_Gg + C_Gg.T) / 2
        tn = float(np.sqrt(np.log(n))) if self.threshold is None else float(self.threshold)

        relevant = np.abs(g) > tn * np.sqrt(np.diag(V_g))
        if not relevant.any():
            raise InputError(
                "TSHT: no instrument is individually strong (first thresholding selected none); "
                "use a weak-instrument-robust method"
            )
        S = np.flatnonzero(relevant)
        ratios = Gamma / g
        votes = np.zeros((S.size, S.size), dtype=bool)
        for col, j in enumerate(S):
            b = ratios[j]
            pi = Gamma - b * g
            T = V_G + b * b * V_g - 2 * b * C_sym  # Var(Gamma - b g)
            r = g / g[j]
            se2 = np.diag(T) + r * r * T[j, j] - 2 * r * T[:, j]
            ok = np.abs(pi) <= np.sqrt(np.maximum(se2, 0)) * tn
            votes[:, col] = ok[S]
        votes = votes & votes.T
        np.fill_diagonal(votes, True)
        counts = votes.sum(axis=1)
        winners = (counts > S.size / 2) | (counts == counts.max())
        valid = np.zeros(p, dtype=bool)
        valid[S[winners]] = True

        controls = [np.asarray(exog, dtype=float).reshape(n, -1)] if exog is not None else []
        if (~valid).any():
            controls.append(Z[:, ~valid])
        fit: KClassFit = fit_kclass(
            y, d, Z[:, valid], np.hstack(controls) if controls else None, kappa="tsls", cov_type=self.cov_type
        )
        self.relevant_ = relevant
        self.valid_ = valid
        self.votes_ = votes
        self.ratio_estimates_ = ratios
        self.threshold_ = tn
        self.fit_ = fit
        self.estimate_ = fit.estimate
        self.se_ = fit.se
        return self

    def exogenous_controls(self, Z, exog=None) -> np.ndarray | None:
        """Controls of the final 2SLS (exog plus the instruments judged invalid), e.g. for AR sets."""
        Z = np.asarray(Z, dtype=float)
        parts = [] if exog is None else [np.asarray(exog, dtype=float).reshape(Z.shape[0], -1)]
        if (~self.valid_).any():
            parts.append(Z[:, ~self.valid_])
        return np.hstack(parts) if parts else None


__all__ = ["TwoStageHardThresholding"]
