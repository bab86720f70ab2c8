"""MR-RAPS, contamination mixture, MR-PRESSO distortion test, clumping and independent-GWAS selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from invariant_mr.errors import InputError
from invariant_mr.estimators.summary.clumping import ld_clump, select_by_independent_gwas
from invariant_mr.estimators.summary.mr_conmix import mr_conmix
from invariant_mr.estimators.summary.mr_raps import loss_constants, mr_raps, rho
from invariant_mr.estimators.summary.two_sample import summary_statistics_from_table
from invariant_mr.io.gwas_sumstats import GWASTable, read_mr_sumstats
from invariant_mr.estimators.summary.summary_mr import ivw, mr_presso, presso_distortion_test
from invariant_mr.estimators.summary.sumstats import SummaryStatistics
from statistical_bounds import assert_rate, assert_se_calibrated, assert_unbiased

LIPIDS = Path(__file__).parent / "data" / "lipids_chd_mendelianrandomization.tsv"


def _ss(bx, sx, by, sy):
    return SummaryStatistics(tuple(f"v{i}" for i in range(len(bx))), bx, sx, by, sy, 10_000)


def _two_sample(seed, L=60, theta=0.4, f_mean=30.0, n_outliers=0, tau=0.0):
    rng = np.random.default_rng(seed)
    sx = np.full(L, 0.01)
    sy = np.full(L, 0.01)
    bx_true = rng.choice([-1, 1], L) * np.sqrt(rng.exponential(f_mean, L)) * sx
    alpha = rng.normal(0, tau, L)
    alpha[:n_outliers] += 0.05
    by = theta * bx_true + alpha + rng.normal(0, sy)
    return _ss(bx_true + rng.normal(0, sx), sx, by, sy)


# ----------------------------------------------------------------------------- RAPS
def test_huber_constants_have_closed_forms():
    k = 1.345
    Phi, phi = stats.norm.cdf(k), stats.norm.pdf(k)
    inner = 2 * Phi - 1 - 2 * k * phi  # E[Z^2; |Z| <= k]
    delta, c1, c2, c3 = loss_constants("huber", k)
    assert delta == pytest.approx(2 * Phi - 1, rel=1e-9)
    assert c1 == pytest.approx(inner + 2 * k**2 * (1 - Phi), rel=1e-9)
    assert c3 == pytest.approx(inner, rel=1e-9)
    # E[Z^2 psi^2] = E[Z^4; |Z|<=k] + k^2 E[Z^2; |Z|>k]
    z4 = 3 * (2 * Phi - 1) - 2 * phi * (k**3 + 3 * k)
    assert c2 == pytest.approx(z4 + k**2 * (1 - inner) - delta**2, rel=1e-8)
    np.testing.assert_allclose(rho(np.array([-3.0, 0.5]), "huber", k, 1), [-k, 0.5])
    assert rho(np.array([5.0]), "tukey", 4.685)[0] == 1.0


def test_raps_l2_without_overdispersion_maximises_the_profile_likelihood():
    """mr.raps.simple: beta maximises -1/2 sum (by - b bx)^2 / (sy^2 + b^2 sx^2); SE = sqrt(V / I^2)."""
    ss = _two_sample(0)
    fit = mr_raps(ss, over_dispersion=False, loss="l2", version="mle")
    # The profile-weight equations of current mr.raps are the same score here (l2, no overdispersion).
    assert mr_raps(ss, over_dispersion=False, loss="l2").estimate == pytest.approx(fit.estimate, abs=1e-8)
    bx, sx, by, sy = ss.beta_exposure, ss.se_exposure, ss.beta_outcome, ss.se_outcome
    grid = np.linspace(fit.estimate - 0.05, fit.estimate + 0.05, 200_001)
    prof = -0.5 * (((by[None] - grid[:, None] * bx[None]) ** 2) / (sy**2 + grid[:, None] ** 2 * sx**2)).sum(1)
    assert fit.estimate == pytest.approx(grid[np.argmax(prof)], abs=1e-6)
    b = fit.estimate
    den = (sy**2 + b**2 * sx**2) ** 2
    V = np.sum(((bx**2 - sx**2) * sy**2 + (by**2 - sy**2) * sx**2 + sx**2 * sy**2) / den)
    info = np.sum(((bx**2 - sx**2) * sy**2 + (by**2 - sy**2) * sx**2) / den)
    assert fit.se == pytest.approx(np.sqrt(V) / info, rel=1e-10)


@pytest.mark.parametrize("loss", ["l2", "huber", "tukey"])
def test_raps_overdispersed_solves_its_estimating_equations(loss):
    """At the solution: d/dbeta sum rho(t) = 0 and sum sx^2 (t psi(t) - delta) / v = 0 (Zhao et al. 2020, eq. 4.3)."""
    ss = _two_sample(1, tau=0.01)
    fit = mr_raps(ss, over_dispersion=True, loss=loss, version="mle")
    b, t2 = fit.estimate, fit.extra["tau2"]
    assert fit.extra["converged"] and t2 > 0
    bx, sx, by, sy = ss.beta_exposure, ss.se_exposure, ss.beta_outcome, ss.se_outcome
    delta = 1.0 if loss == "l2" else loss_constants(loss, fit.extra["k"])[0]

    def total_loss(beta):
        v = t2 + sy**2 + beta**2 * sx**2
        return np.sum(rho((by - beta * bx) / np.sqrt(v), loss, fit.extra["k"]))

    h = 1e-6
    grad = (total_loss(b + h) - total_loss(b - h)) / (2 * h)
    scale = (total_loss(b + 1e-2) - total_loss(b)) / 1e-2
    assert abs(grad) < 1e-4 * max(1.0, abs(scale))
    if loss != "l2":  # the l2 tau2 step maximises the adjusted profile likelihood instead
        v = t2 + sy**2 + b**2 * sx**2
        t = (by - b * bx) / np.sqrt(v)
        eq = np.sum(sx**2 * (t * rho(t, loss, fit.extra["k"], 1) - delta) / v)
        assert abs(eq) < 1e-8 * np.sum(sx**2 / v)


def test_raps_corrects_weak_instrument_bias_of_ivw():
    """Many weak variants (mean F = 4): IVW is diluted towards 0, RAPS is not (20 seeds)."""
    raps, ivws = [], []
    for s in range(20):
        ss = _two_sample(100 + s, L=150, theta=0.4, f_mean=4.0)
        raps.append(mr_raps(ss, over_dispersion=False, loss="l2").estimate)
        ivws.append(ivw(ss).estimate)
    assert abs(np.mean(raps) - 0.4) < 0.03
    assert np.mean(ivws) < 0.4 - 0.05


def test_robust_raps_resists_outliers():
    ss = _two_sample(7, L=60, theta=0.4, n_outliers=4)
    l2 = mr_raps(ss, over_dispersion=True, loss="l2", version="mle")
    for loss in ("huber", "tukey"):
        fit = mr_raps(ss, over_dispersion=True, loss=loss, version="mle")
        assert abs(fit.estimate - 0.4) < abs(l2.estimate - 0.4)
        assert np.isfinite(fit.se) and fit.se > 0 and fit.extra["tau2_se"] > 0
        profile = mr_raps(ss, over_dispersion=True, loss=loss)
        assert abs(profile.estimate - 0.4) < abs(l2.estimate - 0.4)
        assert np.isfinite(profile.se) and profile.se > 0
    with pytest.raises(InputError, match="raps-loss"):
        mr_raps(ss, loss="cauchy")
    with pytest.raises(InputError, match="tuning constant"):
        mr_raps(ss, loss="l2", k=2.0)


def test_raps_coverage_with_weak_instruments():
    """RAPS (overdispersed, Huber) over 300 two-sample replicates with weak instruments: unbiased, SE
    calibrated, 95% CI covers within the two-sided binomial band of 0.95 (0.89-0.99 at level 1e-3)."""
    fits = [mr_raps(_two_sample(1000 + s, L=80, f_mean=8.0, tau=0.005)) for s in range(300)]
    est = np.array([f.estimate for f in fits])
    assert_unbiased(est, 0.4)
    assert_se_calibrated(est, [f.se for f in fits], tolerance=0.05)
    assert_rate([f.ci_low <= 0.4 <= f.ci_high for f in fits], 0.95, what="RAPS coverage")


# ----------------------------------------------------------------------------- ConMix
def test_conmix_reproduces_the_printed_vignette_output():
    # MendelianRandomization vignette "Contamination mixture method", mr_conmix(ldlc -> chdlodds):
    # psi = 66.17905, Estimate 2.73, 95% CI 2.00, 3.43, p-value 4.79e-15 (single range).
    # https://sb452.github.io/MendelianRandomizationVignette/articles/Univariable_MR_Methods.html
    res = mr_conmix(summary_statistics_from_table(read_mr_sumstats(LIPIDS), "ldlc"))
    assert res.psi == pytest.approx(66.17905, abs=5e-6)
    assert res.fit.estimate == pytest.approx(2.73, abs=5e-3)
    assert res.intervals == ((pytest.approx(2.00, abs=5e-3), pytest.approx(3.43, abs=5e-3)),)
    assert res.fit.pvalue == pytest.approx(4.79e-15, rel=1e-3)
    assert np.isnan(res.fit.se) and "psi" in res.summary()


@pytest.mark.parametrize("seed", [0, 8, 23])
def test_conmix_matches_pytwosamplemr_including_disjoint_intervals(seed):
    """pytwosamplemr ports mr_conmix bit for bit; seeds 8 and 23 give a union of two intervals."""
    import pytwosamplemr as pt
    rng = np.random.default_rng(seed)
    L = 20
    bx = rng.uniform(0.1, 0.3, L)
    sx = np.full(L, 0.01)
    sy = np.full(L, 0.02)
    # Two groups of variants supporting different effects (0 and 0.6): the confidence set can split.
    by = np.where(np.arange(L) < 10, 0.0, 0.6) * bx + rng.normal(0, sy)
    ours = mr_conmix(_ss(bx, sx, by, sy), ci_step=0.001)
    ref = pt.mr_conmix(pt.mr_input(bx, sx, by, sy), ci_step=0.001)
    assert ours.fit.estimate == pytest.approx(ref.estimate, abs=1e-9)
    assert ours.psi == pytest.approx(ref.psi, rel=1e-12)
    assert ours.fit.pvalue == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
    assert len(ours.intervals) == len(ref.ci_ranges)
    np.testing.assert_allclose(np.array(ours.intervals), np.array(ref.ci_ranges), atol=1e-9)
    assert set(ours.valid_variants) == {f"v{i}" for i in ref.valid}
    assert ours.fit.extra["ci_is_union"] is (seed != 0)


# ----------------------------------------------------------------------------- PRESSO distortion
def _with_outliers(seed=4, shift=0.5):
    """Variants 2 and 11 pleiotropic (+shift on the outcome); with seed 4 both have bx > 0 (they bias
    IVW the same way), with seed 0 their bx have opposite signs (their biases cancel)."""
    rng = np.random.default_rng(seed)
    L = 30
    bx = rng.uniform(0.05, 0.3, L) * rng.choice([-1, 1], L)
    sx = rng.uniform(0.01, 0.02, L)
    sy = rng.uniform(0.01, 0.03, L)
    by = 0.3 * bx + rng.normal(0, sy)
    by[[2, 11]] += shift
    return _ss(bx + rng.normal(0, sx), sx, by, sy)


def test_presso_distortion_matches_refitting_each_draw():
    """MRPRESSO's getRandomBias, refitted draw by draw with statsmodels WLS on the same index draws."""
    ss = _with_outliers()
    out = np.zeros(30, dtype=bool)
    out[[2, 11]] = True
    coef, p = presso_distortion_test(ss, out, 200, np.random.default_rng(9))
    w = ss.se_outcome**-2
    fit = lambda idx: sm.WLS(ss.beta_outcome[idx], ss.beta_exposure[idx], weights=w[idx]).fit().params[0]
    all_, kept = fit(np.arange(30)), fit(np.flatnonzero(~out))
    assert coef == pytest.approx(100 * (all_ - kept) / abs(kept), rel=1e-10)
    rng = np.random.default_rng(9)
    keep_idx = np.flatnonzero(~out)
    draws = keep_idx[rng.integers(0, keep_idx.size, size=(200, keep_idx.size))]
    exp = np.array([fit(np.concatenate([np.flatnonzero(out), d])) for d in draws])
    assert p == pytest.approx(np.mean(np.abs((all_ - exp) / np.abs(exp)) > abs((all_ - kept) / kept)), abs=1e-12)


def test_mr_presso_reports_distortion_when_outliers_are_removed():
    res = mr_presso(_with_outliers(), n_distribution=1000, rng=0)
    assert set(res.outliers) == {"v2", "v11"}
    # Outliers pulling the same way distort the estimate far beyond random removal ...
    assert res.distortion_coefficient > 10 and res.distortion_pvalue < 0.01
    assert "distortion" in res.summary()
    # ... outliers pulling opposite ways are detected and removed but barely move it.
    cancel = mr_presso(_with_outliers(seed=0), n_distribution=1000, rng=0)
    assert set(cancel.outliers) == {"v2", "v11"}
    assert abs(cancel.distortion_coefficient) < 2 and cancel.distortion_pvalue > 0.5
    again = mr_presso(_with_outliers(), n_distribution=1000, rng=0)
    assert again.distortion_pvalue == res.distortion_pvalue
    clean = mr_presso(_with_outliers(shift=0.0), n_distribution=1000, rng=0)
    assert clean.distortion_pvalue is None and clean.corrected is None
    off = mr_presso(_with_outliers(), n_distribution=1000, rng=0, distortion=False)
    assert off.distortion_pvalue is None and off.global_pvalue == res.global_pvalue


# ----------------------------------------------------------------------------- clumping
def _ld_blocks(seed=0, n=2000, blocks=(4, 3, 5), rho_within=0.9):
    """Dosage-like genotypes in blocks of correlated variants; blocks are independent."""
    rng = np.random.default_rng(seed)
    cols = []
    for size in blocks:
        base = rng.normal(size=n)
        for _ in range(size):
            cols.append(rho_within * base + np.sqrt(1 - rho_within**2) * rng.normal(size=n))
    return np.column_stack(cols)


def _naive_clump(p, chrom, pos, G, r2, kb, p1):
    """PLINK --clump as written in its documentation, one pair at a time."""
    R2 = np.corrcoef(G, rowvar=False) ** 2
    remaining = set(range(len(p)))
    index = []
    for i in sorted(range(len(p)), key=lambda j: (p[j], j)):
        if i not in remaining or p[i] > p1:
            continue
        remaining.discard(i)
        index.append(i)
        for j in list(remaining):
            if chrom[j] == chrom[i] and abs(pos[j] - pos[i]) <= kb * 1000 and p[j] <= p1 and R2[i, j] > r2:
                remaining.discard(j)
    return index


def test_ld_clump_keeps_the_strongest_variant_per_block():
    G = _ld_blocks()
    p = np.array([1e-9, 1e-12, 1e-3, 0.2, 1e-20, 1e-5, 1e-6, 1e-30, 1e-8, 1e-8, 0.5, 1e-10])
    chrom = ["1"] * 7 + ["2"] * 5
    pos = np.arange(12) * 1000.0
    res = ld_clump(p, chrom, pos, G, r2=0.1, kb=500, p=1e-4)
    assert res.index.tolist() == [7, 4, 1]  # one per block, in p-value order
    assert res.clump_of[0] == 1 and res.clump_of[5] == 4 and res.clump_of[11] == 7
    reasons = {d.variant: d.reason for d in res.dropped}  # names are 1-based: v1 is column 0
    assert reasons["v1"] == "clumped" and reasons["v4"] == "clump_p_threshold" and reasons["v11"] == "clump_p_threshold"
    assert len(reasons) == 12 - 3
    assert res.keep.sum() == 3 and "3 index variants" in res.summary()


def test_ld_clump_window_chromosome_and_threshold_rules():
    G = _ld_blocks(blocks=(6,))
    p = np.array([1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5])
    # Same LD block, but variants 3-5 sit on another chromosome or beyond the window.
    chrom = ["1", "1", "1", "2", "1", "1"]
    pos = np.array([0, 5_000, 50_000, 1_000, 2_000_000, 10_000.0])
    res = ld_clump(p, chrom, pos, G, r2=0.5, kb=20)
    assert res.index.tolist() == [0, 2, 3, 4]  # 1 and 5 are within 20 kb of variant 0
    loose = ld_clump(p, chrom, pos, G, r2=0.99, kb=20)
    assert loose.index.tolist() == [0, 1, 2, 3, 4, 5]  # no pair is that correlated


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ld_clump_equals_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    G = _ld_blocks(seed, n=500, blocks=(5, 5, 5, 5), rho_within=0.7)
    L = G.shape[1]
    p = 10.0 ** -rng.uniform(2, 12, L)
    chrom = rng.choice(["1", "2"], L)
    pos = rng.uniform(0, 3e6, L)
    ours = ld_clump(p, chrom, pos, G, r2=0.2, kb=1000, p=1e-4)
    assert ours.index.tolist() == _naive_clump(p, chrom, pos, G, 0.2, 1000, 1e-4)


def test_ld_clump_drops_variants_missing_from_the_reference_and_validates():
    G = _ld_blocks(blocks=(3,))
    G[:, 1] = np.nan
    G[::7, 2] = np.nan  # sporadic missing calls are imputed, not fatal
    res = ld_clump([1e-9, 1e-12, 1e-8], ["1"] * 3, [0, 1, 2], G, r2=0.5)
    assert {d.variant: d.reason for d in res.dropped}["v2"] == "not_in_ld_reference"
    assert res.index.tolist() == [0]
    with pytest.raises(InputError, match="samples x 3 variants"):
        ld_clump([0.1] * 3, ["1"] * 3, [0, 1, 2], G[:, :2])
    with pytest.raises(InputError, match="clump-r2"):
        ld_clump([0.1] * 3, ["1"] * 3, [0, 1, 2], G, r2=1.5)


def test_select_by_independent_gwas():
    sel = GWASTable(
        variant=("a", "b", "c", "d"),
        effect_allele=("A",) * 4,
        other_allele=("G",) * 4,
        beta=np.array([0.1, 0.01, 0.2, np.nan]),
        se=np.array([0.01, 0.01, 0.01, 0.01]),
    )
    res = select_by_independent_gwas(["a", "b", "c", "d", "e"], sel, p_threshold=5e-8)
    assert res.keep.tolist() == [True, False, True, False, False]
    assert res.selection_pvalue[0] == pytest.approx(2 * stats.norm.sf(10))
    assert {d.variant: d.reason for d in res.dropped} == {
        "b": "selection_p_threshold",
        "d": "missing_selection_value",
        "e": "not_in_selection_gwas",
    }


# ----------------------------------------------------------------------------- RAPS, current mr.raps
BMI_CHD = Path(__file__).parent / "data"


def bmi_chd_sumstats():
    """TwoSampleMR's vignette data, BMI (ieu-a-2) -> CHD (ieu-a-7), 79 variants (tests/data/README.md)."""
    from invariant_mr.estimators.summary.two_sample import summary_statistics_from_table
    from invariant_mr.io.gwas_sumstats import harmonise, read_gwas

    exposure = read_gwas(BMI_CHD / "bmi_chd_twosamplemr_exposure.tsv")
    outcome = read_gwas(BMI_CHD / "bmi_chd_twosamplemr_outcome.tsv")
    return summary_statistics_from_table(harmonise(exposure, outcome).table)


def test_raps_default_reproduces_current_twosamplemr_on_bmi_chd():
    # TwoSampleMR `mr(dat, method_list = "mr_raps")` (mr.raps 0.4.x, shrinkage = FALSE), printed
    # b = 0.4646893, se = 0.0542478 (issue #21); the first generation (mr.raps.mle) gave 0.4621984 / 0.0594301.
    ss = bmi_chd_sumstats()
    fit = mr_raps(ss)
    assert fit.extra["version"] == "profile" and "TwoSampleMR" in fit.extra["convention"]
    assert fit.estimate == pytest.approx(0.4646893, abs=5e-7)
    assert fit.se == pytest.approx(0.0542478, abs=5e-7)
    old = mr_raps(ss, version="mle")
    assert old.estimate == pytest.approx(0.4621984, abs=5e-7)
    assert old.se == pytest.approx(0.0594301, abs=5e-7)


@pytest.mark.parametrize("loss", ["l2", "huber", "tukey"])
def test_raps_profile_solves_its_estimating_equations(loss):
    """sum gamma_i psi(t_i) / sqrt(v_i) = 0 and sum (t_i psi(t_i) - delta) / v_i = 0, gamma the profile MLE."""
    ss = _two_sample(1, tau=0.01)
    fit = mr_raps(ss, loss=loss)
    b, t2 = fit.estimate, fit.extra["tau2"]
    assert t2 > 0 and fit.extra["over_dispersion_used"]
    bx, sx, by, sy = ss.beta_exposure, ss.se_exposure, ss.beta_outcome, ss.se_outcome
    delta = 1.0 if loss == "l2" else loss_constants(loss, fit.extra["k"])[0]
    v = t2 + sy**2 + b**2 * sx**2
    t = (by - b * bx) / np.sqrt(v)
    psi = rho(t, loss, fit.extra["k"], 1)
    gamma = (bx / sx**2 + b * by / (sy**2 + t2)) / (1 / sx**2 + b**2 / (sy**2 + t2))
    assert abs(np.sum(gamma * psi / np.sqrt(v))) < 1e-8 * np.sum(np.abs(gamma * psi / np.sqrt(v)))
    assert abs(np.sum((t * psi - delta) / v)) < 1e-8 * np.sum(np.abs((t * psi - delta) / v))
    with pytest.raises(InputError, match="raps-version"):
        mr_raps(ss, version="shrinkage")
