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
        if np.linalg.matrix_rank(gram, hermitian=True) < p:
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
        tn = float(np.sqrt(np.log(n))) if self.threshold is None else float(self.threshold)
        relevant, valid, votes, ratios = _vote(Gamma, g, V_G, V_g, C_Gg, tn)

        controls = [np.asarray(exog, dtype=float).reshape(n, -1)] if exog is not None else []
        if (~valid).any():
            controls.append(Z[:, ~valid])
        fit: KClassFit = fit_kclass(
            y, d, Z[:, valid], np.hstack(controls) if controls else None, kappa="tsls", cov_type=self.cov_type
        )
        return self._store(relevant, valid, votes, ratios, tn, fit)

    def fit_statistics(
        self,
        stats,
        *,
        env=None,
        env_fixed_effects: bool = True,
        covariates: bool = True,
        passes=None,
        also=None,
    ) -> "TwoStageHardThresholding":
        """TSHT from per-environment sufficient statistics, with no n x p array.

        `stats` is a `sufficient_stats.EnvironmentCrossProducts`; the controls
        are those of `sufficient_stats.partial_out(stats, env=env, ...)`. The
        reduced forms, their classical covariances, the vote and the final
        2SLS point estimate come from the statistics. `cov_type="robust"` needs
        `passes` (a `passes.RowPasses`) for two streamed passes: the
        reduced-form HC0 meats (three p x p matrices in one accumulator) and
        the final fit's SE and first-stage F. Same results as `fit` on the rows.
        `fit_` is then a `kclass_from_stats.StatsKClassFit`. `also(final_design)` may name more
        `MeatRequest`s of the final design (its robust AR set, its J test) to accumulate in the same
        pass as the final fit's; their meats are `also_meats_` (empty unless robust).
        """
        from invariant_mr.estimators.kclass_from_stats import (
            first_stage_request,
            kclass_from_stats,
            kclass_requests,
        )
        from invariant_mr.estimators.sufficient_stats import MeatRequest, accumulate_meats, partial_out

        if self.cov_type not in ("robust", "unadjusted"):
            raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {self.cov_type!r}")
        design = partial_out(stats, env=env, env_fixed_effects=env_fixed_effects, covariates=covariates)
        p, n = design.k, design.n
        if p < 2:
            raise InputError("TSHT needs at least 2 instruments to vote on validity")
        G = design.gram
        gram = G[:p, :p]
        # The Gram matrix is symmetric: its singular values are the moduli of its eigenvalues, which
        # cost a third of an SVD (the same rank rule, S.max() * p * eps).
        if np.linalg.matrix_rank(gram, hermitian=True) < p:
            raise InputError("TSHT: the instruments are collinear (after the controls)")
        G_inv = np.linalg.inv(gram)
        G_inv = (G_inv + G_inv.T) / 2
        a, c = G[:p, p + 1], G[:p, p]
        Gamma, g = G_inv @ a, G_inv @ c
        tn = float(np.sqrt(np.log(n))) if self.threshold is None else float(self.threshold)
        if self.cov_type == "robust":
            if passes is None:
                raise InputError("robust TSHT from statistics needs a second pass over the rows (passes=)")
            # Relevance needs only the diagonal of V_g, from the first stage's HC0 meat: the request
            # 2SLS and LIML make for their robust F (a pass that shares it computes it once).
            meat_DD = accumulate_meats(passes, [first_stage_request(design)])[0]
            relevant = _relevant(g, np.diag(G_inv @ meat_DD @ G_inv), tn)
            S = np.flatnonzero(relevant)
            # The vote reads V_G, V_g and C_Gg on the relevant instruments only: one pass with the rows
            # projected on G^-1[:, S] gives those |S| x |S| blocks at 2 |S|^2 per row instead of the
            # 2 p^2 of the full reduced-form meats.
            directions = np.zeros((p + 2, S.size))
            directions[:p] = G_inv[:, S]
            U = np.column_stack([np.concatenate([-Gamma, [0.0, 1.0]]), np.concatenate([-g, [1.0, 0.0]])])
            M = accumulate_meats(passes, [MeatRequest(design, directions, U)])[0]
            s = S.size
            relevant, valid, votes, ratios = _vote_relevant(Gamma, g, relevant, M[:s, :s], M[s:, s:], M[:s, s:], tn)
        else:
            df = n - p - design.n_controls
            eYY = G[p + 1, p + 1] - Gamma @ a
            eDD = G[p, p] - g @ c
            eYD = G[p, p + 1] - Gamma @ c
            V_G, V_g, C_Gg = G_inv * eYY / df, G_inv * eDD / df, G_inv * eYD / df
            relevant, valid, votes, ratios = _vote(Gamma, g, V_G, V_g, C_Gg, tn)
        final = partial_out(
            stats, env=env, env_fixed_effects=env_fixed_effects, covariates=covariates,
            instruments=np.flatnonzero(valid), z_controls=np.flatnonzero(~valid),
        )  # fmt: skip
        self.also_meats_ = ()
        if self.cov_type == "robust":
            # One pass for the final fit's SE and F and whatever the caller adds (AR set, J test).
            own = kclass_requests(final, "tsls")
            extra = list(also(final)) if also is not None else []
            meats = accumulate_meats(passes, own + extra)
            fit = kclass_from_stats(final, kappa="tsls", cov_type="robust", meats=meats[: len(own)])
            self.also_meats_ = tuple(meats[len(own) :])
        else:
            fit = kclass_from_stats(final, kappa="tsls", cov_type=self.cov_type, passes=passes)
        self.design_ = final
        return self._store(relevant, valid, votes, ratios, tn, fit)

    def _store(self, relevant, valid, votes, ratios, threshold, fit) -> "TwoStageHardThresholding":
        """The fitted state, the same from rows (`fit`) and from statistics (`fit_statistics`)."""
        self.relevant_ = relevant
        self.valid_ = valid
        self.votes_ = votes
        self.ratio_estimates_ = ratios
        self.threshold_ = threshold
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


def _relevant(g, var_g, tn: float) -> np.ndarray:
    """Step 2, the first thresholding: |g_j| > tn SE(g_j)."""
    relevant = np.abs(g) > tn * np.sqrt(var_g)
    if not relevant.any():
        raise InputError(
            "TSHT: no instrument is individually strong (first thresholding selected none); "
            "use a weak-instrument-robust method"
        )
    return relevant


def _vote(Gamma, g, V_G, V_g, C_Gg, tn: float):
    """Steps 2-4: (relevant mask, valid mask, symmetric votes, ratio estimates)."""
    relevant = _relevant(g, np.diag(V_g), tn)
    S = np.flatnonzero(relevant)
    return _vote_relevant(Gamma, g, relevant, *(M[np.ix_(S, S)] for M in (V_G, V_g, C_Gg)), tn)


def _vote_relevant(Gamma, g, relevant, VG, Vg, C_S, tn: float):
    """Steps 3-4 given the relevant set S and the covariances' |S| x |S| blocks on it."""
    p = g.shape[0]
    S = np.flatnonzero(relevant)
    ratios = Gamma / g
    # Instrument j (column) votes for k (row) when k's implied pleiotropy Gamma_k - b_j g_k,
    # b_j = Gamma_j / g_j, is within tn SEs of zero, with T = Var(Gamma - b_j g). All pairs of
    # relevant instruments at once, over the |S| x |S| blocks only (a loop over j formed a
    # p x p matrix per voter); the operations are those of the per-voter formula, in its order.
    b = ratios[S][None, :]
    bb, tb = b * b, 2 * b
    C = (C_S + C_S.T) / 2
    dVG, dVg, dC = (np.diag(M)[:, None] for M in (VG, Vg, C))
    diag_T = dVG + bb * dVg - tb * dC  # T_kk for voter j
    T_kj = VG + bb * Vg - tb * C
    T_jj = np.diag(T_kj)[None, :]
    gS = g[S]
    r = gS[:, None] / gS[None, :]
    se2 = diag_T + r * r * T_jj - 2 * r * T_kj
    pi = Gamma[S][:, None] - b * gS[:, None]
    votes = np.abs(pi) <= np.sqrt(np.maximum(se2, 0)) * tn
    votes = votes & votes.T
    np.fill_diagonal(votes, True)
    counts = votes.sum(axis=1)
    winners = (counts > S.size / 2) | (counts == counts.max())
    valid = np.zeros(p, dtype=bool)
    valid[S[winners]] = True
    return relevant, valid, votes, ratios


__all__ = ["TwoStageHardThresholding"]
