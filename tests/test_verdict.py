"""The verdict (report/verdict.py, docs/verdict.md): each principle of the rule, and the verdict as data.

Every test builds the reported numbers a run would produce and checks the one
decision the principle dictates, so a rule that broke the principle fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from invariant_mr.cli import main
from invariant_mr.data import MRData
from invariant_mr.methods.registry import MethodContext
from invariant_mr.pipeline import run_analysis
from invariant_mr.report.verdict import verdict, verdicts
from invariant_mr.results import AnalysisResult, Diagnostic, Estimate
from invariant_mr.simulation.paper import simulate_paper

LIPIDS = Path(__file__).parent / "data" / "lipids_chd_mendelianrandomization.tsv"


def _est(method, value, se=0.02, f=80.0, k=4, exposure=None, extra=None):
    return Estimate(method, "pooled", value, se, value - 1.96 * se, value + 1.96 * se, 6000, k, f,
                    extra=extra or {}, exposure=exposure)


def _checks(method, mmd=0.5, hsic=0.5, j=0.5, n_perm=1000):
    out = [Diagnostic(f"{method}/overidentification_j", "pooled", 1.0, j, "x", {"df": 3})]
    if mmd is not None:
        out.append(Diagnostic(f"{method}/invariance_mmd", "pooled", 1.0, mmd, "x", {"n_permutations": n_perm}))
    if hsic is not None:
        out.append(Diagnostic(f"{method}/independence_hsic", "pooled", 1.0, hsic, "x", {"n_permutations": n_perm}))
    return out


def _result(estimates, diagnostics=(), truth=None, data=None):
    prov = {"parameters": {"alpha": 0.05}, "data": data or {"n": 6000}}
    return AnalysisResult(tuple(estimates), prov, tuple(diagnostics), truth)


NAIVE = [_est("tsls_all_env", 1.22, se=0.01), _est("ivw", 1.20, se=0.03), _est("mr_egger", 1.19, se=0.05)]
NAIVE_DIAGS = [Diagnostic("cochran_q", "pooled", 10.0, 0.6, "x", {}), Diagnostic("egger_intercept", "pooled", 0.1, 0.7, "x", {}),
               Diagnostic("i_squared_gx", "pooled", 0.99, None, "x", {})]


def test_an_invariant_method_whose_checks_pass_beats_unadjusted_methods_whose_checks_pass():
    r = _result([*NAIVE, _est("invariant_polynomial", 1.00, se=0.03)], [*NAIVE_DIAGS, *_checks("invariant_polynomial")])
    v = verdict(r)
    assert v.recommended == "invariant_polynomial"
    assert v.estimate == pytest.approx(1.0) and v.interval == pytest.approx((1 - 1.96 * 0.03, 1 + 1.96 * 0.03))
    assert v.standing("ivw").standing == "unadjusted" and v.standing("invariant_polynomial").standing == "verified"


def test_unadjusted_methods_are_never_the_answer_on_individual_data():
    v = verdict(_result(NAIVE, NAIVE_DIAGS))
    assert v.recommended is None and v.statement.startswith("no estimate can be trusted")
    assert v.advice  # says what data would help


def test_one_marginal_pvalue_among_many_does_not_sink_an_estimate():
    # Three invariant methods, nine checks: HSIC p = 0.008 is above Holm's first threshold 0.05/9 = 0.0056.
    diags = [*_checks("invariant_polynomial", hsic=0.008), *_checks("invariant_linear"), *_checks("invariant_linear_crossfit")]
    ests = [_est("invariant_polynomial", 1.0, se=0.02), _est("invariant_linear", 1.01, se=0.03),
            _est("invariant_linear_crossfit", 0.99, se=0.04)]
    v = verdict(_result([*NAIVE, *ests], diags))
    assert v.standing("invariant_polynomial").standing == "verified"
    assert v.recommended == "invariant_polynomial"
    # Alone with its three checks the same p-value is below 0.05/3 = 0.0167 and fails.
    alone = verdict(_result([*NAIVE, ests[0]], _checks("invariant_polynomial", hsic=0.008)))
    assert alone.standing("invariant_polynomial").standing == "failed" and alone.recommended is None


def test_a_permutation_pvalue_at_its_floor_always_fails():
    # Thirteen checks: Holm's first threshold is 0.05/13 = 0.0038. With B = 99 permutations the smallest
    # attainable p-value is 0.01, above it: the floor, not Holm, makes the check fail.
    diags = [*_checks("invariant_polynomial", mmd=1 / 100, n_perm=99)]
    ests = [_est("invariant_polynomial", 1.0)]
    for name in ("invariant_linear", "invariant_linear_crossfit", "tsls_external"):
        diags += _checks(name)
        ests.append(_est(name, 1.0, se=0.05))
    diags.append(Diagnostic("tsls_pcs/overidentification_j", "pooled", 1.0, 0.5, "x", {}))
    ests.append(_est("tsls_pcs", 1.0, se=0.05))
    v = verdict(_result(ests, diags))
    assert v.standing("invariant_polynomial").standing == "failed"
    assert v.recommended != "invariant_polynomial"


def test_verified_methods_that_disagree_give_no_answer():
    diags = [*_checks("invariant_polynomial"), *_checks("invariant_linear")]
    v = verdict(_result([*NAIVE, _est("invariant_polynomial", 1.0), _est("invariant_linear", 1.2)], diags))
    assert v.recommended is None and "disagree" in v.statement


def test_a_skipped_check_is_not_a_passed_check():
    # PCs without a J test: addresses confounding, but nothing checked it.
    v = verdict(_result([*NAIVE, _est("tsls_pcs", 1.02)], NAIVE_DIAGS))
    assert v.standing("tsls_pcs").standing == "unchecked" and v.recommended is None


def test_adjusted_designs_need_a_second_design_that_agrees():
    j = lambda m, p=0.4: Diagnostic(f"{m}/overidentification_j", "pooled", 1.0, p, "x", {})
    one = verdict(_result([*NAIVE, _est("tsls_pcs", 1.02)], [j("tsls_pcs")]))
    assert one.standing("tsls_pcs").standing == "supported" and one.recommended is None
    two = verdict(_result([*NAIVE, _est("tsls_pcs", 1.02, se=0.02), _est("within_family_egger", 1.03, se=0.01)],
                          [j("tsls_pcs"), j("within_family_egger")]))
    assert two.recommended == "within_family_egger"  # both agree; the more precise
    apart = verdict(_result([*NAIVE, _est("tsls_pcs", 1.02, se=0.01), _est("within_family_egger", 1.10, se=0.01)],
                            [j("tsls_pcs"), j("within_family_egger")]))
    assert apart.recommended is None and any("disagree" in r for r in apart.reasons)
    failing = verdict(_result([*NAIVE, _est("tsls_pcs", 1.02), _est("within_family_egger", 1.03)],
                              [j("tsls_pcs", 1e-6), j("within_family_egger")]))
    assert failing.standing("tsls_pcs").standing == "failed" and failing.recommended is None


def test_tsht_passing_its_own_j_test_is_no_evidence_but_failing_it_is():
    """TSHT keeps the instruments that agree, so its J test passes by construction."""
    j = lambda p: Diagnostic("tsht/overidentification_j", "pooled", 1.0, p, "x", {})
    passing = verdict(_result([*NAIVE, _est("tsht", 1.02, extra={"ar_set_kind": "interval"})], [j(0.4)]))
    assert passing.standing("tsht").standing == "unchecked"
    assert verdict(_result([*NAIVE, _est("tsht", 1.02)], [j(1e-8)])).standing("tsht").standing == "failed"


def test_weak_instruments_are_not_trusted_even_when_checks_pass():
    v = verdict(_result([*NAIVE, _est("invariant_linear", 1.0, f=4.0)], _checks("invariant_linear")))
    assert v.standing("invariant_linear").standing == "weak" and v.recommended is None


def test_empty_anderson_rubin_set_fails_an_invariant_method():
    e = _est("invariant_linear", 1.0, extra={"ar_set": [], "ar_set_kind": "empty"})
    v = verdict(_result([e], _checks("invariant_linear")))
    assert v.standing("invariant_linear").standing == "failed"


def test_the_verdict_never_reads_the_truth():
    ests = [*NAIVE, _est("invariant_polynomial", 1.0)]
    diags = [*NAIVE_DIAGS, *_checks("invariant_polynomial")]
    assert verdict(_result(ests, diags, truth={"theta": 1.2})).to_dict() == verdict(_result(ests, diags)).to_dict()


def test_one_verdict_per_exposure_comparing_like_with_like():
    ests = [_est("invariant_linear", 1.0, exposure="a"), _est("invariant_linear", 3.0, exposure="b"),
            _est("tsls_all_env", 1.3, exposure="a"), _est("tsls_all_env", 3.2, exposure="b")]
    vs = verdicts(_result(ests, _checks("invariant_linear")))
    assert [v.exposure for v in vs] == ["a", "b"]
    # The diagnostics name the method, not the exposure: both rows are verified, and never compared across exposures.
    assert [v.recommended for v in vs] == ["invariant_linear", "invariant_linear"]
    assert [v.estimate for v in vs] == [1.0, 3.0]


def test_summary_statistics_rule_reads_pleiotropy_checks():
    summary = {"n_variants": 80}
    base = [_est("ivw", 0.50, se=0.05), _est("weighted_median", 0.48, se=0.07), _est("weighted_mode", 0.47, se=0.09),
            _est("mr_egger", 0.45, se=0.12)]
    ok = verdict(_result(base, NAIVE_DIAGS, data=summary))
    assert ok.kind == "summary" and ok.recommended == "ivw" and "stratification" in " ".join(ok.reasons)
    het = [Diagnostic("cochran_q", "pooled", 300.0, 1e-9, "x", {}), *NAIVE_DIAGS[1:]]
    robust = verdict(_result(base, het, data=summary))
    assert robust.recommended == "weighted_median"  # IVW's heterogeneity check fails; the robust ones agree
    split = [_est("ivw", 0.50, se=0.05), _est("weighted_median", 0.10, se=0.03), _est("weighted_mode", 0.60, se=0.03)]
    assert verdict(_result(split, het, data=summary)).recommended is None


def test_results_json_and_the_result_carry_the_verdict():
    sim = simulate_paper("linear", n_envs=2, n_per_env=800, seed=3)
    result = run_analysis(sim.data, ["tsls_all_env", "invariant_linear"],
                          MethodContext(seed=3, per_env=False, progress=False, options={"diagnostic_permutations": 99}))
    payload = json.loads(result.to_json())["verdict"]
    assert len(payload) == 1 and set(payload[0]) >= {"recommended", "estimate", "ci", "statement", "methods", "reasons"}
    assert payload[0]["recommended"] in (None, "invariant_linear")
    assert {m["method"]: m["standing"] for m in payload[0]["methods"]}["tsls_all_env"] == "unadjusted"
    # The stored result reads back and gives the same verdict.
    again = AnalysisResult.from_dict(json.loads(result.to_json()))
    assert verdict(again).to_dict() == payload[0]


def test_mr_prints_and_writes_the_verdict(tmp_path, capsys):
    out = tmp_path / "mr"
    assert main(["mr", "--sumstats", str(LIPIDS), "--exposure", "ldlc", "--methods", "ivw,weighted_median,mr_egger",
                 "--out", str(out), "--n-bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert "Verdict for exposure ldlc:" in printed
    saved = json.loads((out / "results.json").read_text())["verdict"]
    assert saved[0]["exposure"] == "ldlc" and saved[0]["kind"] == "summary"
    assert saved[0]["statement"].split(":")[0] in printed


def test_one_method_failing_never_takes_the_others_down(monkeypatch):
    """An unexpected error in one method becomes its 'failed: ...' row; the rest of the run and the verdict go on."""
    from invariant_mr.methods import registry
    from invariant_mr.methods.spec import MethodSpec

    def broken(data, ctx):
        raise ValueError("attempt to get argmax of an empty sequence")

    registry.registered_methods()  # load the built-ins first
    monkeypatch.setitem(registry._REGISTRY, "broken_method", MethodSpec("broken_method", broken, "raises", default=False))
    sim = simulate_paper("linear", n_envs=2, n_per_env=500, seed=1)
    result = run_analysis(sim.data, ["tsls_all_env", "broken_method", "ols"],
                          MethodContext(seed=1, per_env=False, progress=False))
    broken_row = result.select(method="broken_method")[0]
    assert not broken_row.available and broken_row.reason == "failed: ValueError: attempt to get argmax of an empty sequence"
    assert result.select(method="tsls_all_env")[0].available and result.select(method="ols")[0].available
    assert ("broken_method", broken_row.reason) in verdict(result).abstained


# ----------------------------------------------------------------------------- the leak-shift check
def _leaky_data(leak_confounded: bool, n=6000, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal(n)                      # confounder
    w = rng.standard_normal(n)                      # valid instrument
    v = 0.8 * h + 0.6 * rng.standard_normal(n)       # environment-varying latent, confounded
    other = rng.standard_normal(n)                   # varying but unconfounded
    leak = v if leak_confounded else other
    instrument = w + 0.3 * leak
    d = w + v + h + rng.standard_normal(n)
    y = 1.0 * d + h + rng.standard_normal(n)
    return y, d, instrument[:, None], np.column_stack([v, other])


def test_leak_shift_measures_the_bias_a_confounded_leak_causes():
    from invariant_mr.inference.diagnostics import leak_shift_test

    y, d, z, complement = _leaky_data(True)
    shift, se, p, f = leak_shift_test(y, d, z, complement)
    # theta(z) - theta(purged): the leak through v biases 2SLS upwards; purged of v the estimate is valid.
    assert shift > 6 * se and p < 1e-6 and f > 100
    y, d, z, complement = _leaky_data(False)
    shift, se, p, f = leak_shift_test(y, d, z, complement)
    assert abs(shift) < 3 * se and p > 0.003


def test_leak_shift_is_zero_when_the_features_predict_nothing_of_the_instruments():
    from invariant_mr.inference.diagnostics import leak_shift_test

    y, d, z, _ = _leaky_data(True)
    # A feature orthogonal to the instrument (and to the intercept): the purge changes nothing.
    f = np.where(np.arange(z.shape[0]) % 2 == 0, 1.0, -1.0)
    f = f - z[:, 0] * (f @ z[:, 0]) / (z[:, 0] @ z[:, 0])
    f = f - f.mean()
    zc = z - z.mean()
    f = f - zc[:, 0] * (f @ zc[:, 0]) / (zc[:, 0] @ zc[:, 0])
    shift, se, p, _ = leak_shift_test(y, d, z, f[:, None])
    assert shift == pytest.approx(0.0, abs=1e-10)


def _leak_diag(method, shift, se, p, f_purged=150.0):
    return Diagnostic(f"{method}/leak_shift", "pooled", shift, p, "x",
                      {"shift": shift, "se": se, "purged_first_stage_f": f_purged})


def test_an_immaterial_leak_does_not_fail_an_invariant_method():
    diags = [*_checks("invariant_polynomial", mmd=1 / 1001, hsic=1 / 1001), _leak_diag("invariant_polynomial", -0.0006, 0.002, 0.77)]
    v = verdict(_result([*NAIVE, _est("invariant_polynomial", 0.99, se=0.018)], diags))
    assert v.standing("invariant_polynomial").standing == "verified" and v.recommended == "invariant_polynomial"
    assert "immaterial" in " ".join(v.standing("invariant_polynomial").passed)


@pytest.mark.parametrize("shift, se, p, f_purged", [
    (0.05, 0.005, 1e-20, 150.0),   # the leak moves the estimate: it biases it
    (0.0, 0.03, 0.99, 150.0),       # less precise than the estimate itself (SE 0.018)
    (0.0, 0.002, 0.99, 4.0),        # purged instruments weak: the check is powerless
])
def test_a_material_or_unmeasurable_leak_still_fails(shift, se, p, f_purged):
    diags = [*_checks("invariant_polynomial", mmd=1 / 1001), _leak_diag("invariant_polynomial", shift, se, p, f_purged)]
    v = verdict(_result([*NAIVE, _est("invariant_polynomial", 0.99, se=0.018)], diags))
    assert v.standing("invariant_polynomial").standing == "failed" and v.recommended is None


def test_multivariable_summary_verdict_reads_its_own_heterogeneity_checks():
    summary = {"n_variants": 145}
    ests = [_est(m, v, exposure=x) for x, (a, b) in {"ldl": (0.5, 0.6), "hdl": (-0.2, -0.25)}.items()
            for m, v in (("mv_ivw", a), ("mv_egger", b))]
    clean = [Diagnostic("mv_ivw_heterogeneity", "pooled", 30.0, 0.4, "x", {}),
             Diagnostic("mv_egger_intercept", "pooled", 0.5, 0.6, "x", {}),
             Diagnostic("mv_egger_heterogeneity", "pooled", 29.0, 0.45, "x", {})]
    assert [v.recommended for v in verdicts(_result(ests, clean, data=summary))] == ["mv_ivw", "mv_ivw"]
    pleiotropic = [Diagnostic("mv_ivw_heterogeneity", "pooled", 51.0, 0.0014, "x", {}), clean[1],
                   Diagnostic("mv_egger_heterogeneity", "pooled", 39.0, 0.3, "x", {})]
    vs = verdicts(_result(ests, pleiotropic, data=summary))
    assert [v.recommended for v in vs] == ["mv_egger", "mv_egger"] and [v.estimate for v in vs] == [0.6, -0.25]
    both = [pleiotropic[0], clean[1], Diagnostic("mv_egger_heterogeneity", "pooled", 39.0, 0.02, "x", {})]
    assert [v.recommended for v in verdicts(_result(ests, both, data=summary))] == [None, None]


def test_leak_shift_test_has_its_nominal_size_and_power():
    """Over 300 seeds: with a leak that is not confounded the test rejects about 5% of the time (two-sided
    binomial bounds), and with a confounded leak nearly always."""
    from scipy import stats as st

    from invariant_mr.inference.diagnostics import _leak_features, leak_shift_test

    reps, n = 300, 800
    null_rejections = power_rejections = 0
    for seed in range(reps):
        for confounded in (False, True):
            y, d, z, complement = _leaky_data(confounded, n=n, seed=seed)
            env = (np.arange(n) % 2).astype(int)
            _, _, p, _ = leak_shift_test(y, d, z, _leak_features(complement, env))
            if confounded:
                power_rejections += p < 0.05
            else:
                null_rejections += p < 0.05
    lo, hi = st.binom.ppf([0.0005, 0.9995], reps, 0.05)
    assert lo <= null_rejections <= hi, null_rejections
    assert power_rejections >= 0.9 * reps


def test_within_family_mr_is_trusted_by_design_and_outranks_population_level_designs():
    base = [*NAIVE, _est("tsls_pcs", 1.22), _est("within_family", 1.01, se=0.08)]
    v = verdict(_result(base, NAIVE_DIAGS))
    assert v.standing("within_family").standing == "verified" and v.recommended == "within_family"
    weak = verdict(_result([*NAIVE, _est("within_family", 1.01, se=0.08, f=3.0)], NAIVE_DIAGS))
    assert weak.recommended is None
    # A verified invariant method that disagrees: invariance tests cannot see confounding shared by every
    # environment (dynastic effects), which cannot reach the within-family contrast.
    clash = verdict(_result([*base, _est("invariant_linear", 1.5, se=0.03)], [*NAIVE_DIAGS, *_checks("invariant_linear")]))
    assert clash.standing("invariant_linear").standing == "verified"
    assert clash.recommended == "within_family"
    assert any(r.startswith("disagreeing population-level designs") and "invariant_linear (1.500, verified)" in r
               for r in clash.reasons)
    agree = verdict(_result([*base, _est("invariant_linear", 1.03, se=0.03)], [*NAIVE_DIAGS, *_checks("invariant_linear")]))
    assert agree.recommended == "within_family" and any(r.startswith("agrees with invariant_linear") for r in agree.reasons)
    failing = verdict(_result(base, [*NAIVE_DIAGS, Diagnostic("within_family/overidentification_j", "pooled", 90.0,
                                                               1e-12, "x", {})]))
    assert failing.standing("within_family").standing == "failed" and failing.recommended is None


def test_summary_rule_counts_heterogeneity_against_every_ivw_variant_and_picks_a_method_with_an_se():
    summary = {"n_variants": 80}
    het = [Diagnostic("cochran_q", "pooled", 300.0, 1e-9, "x", {}), *NAIVE_DIAGS[1:],
           Diagnostic("mr_presso_global", "pooled", 300.0, 1e-9, "x", {})]
    conmix = Estimate("mr_conmix", "pooled", 0.49, None, 0.47, 0.51, 80, 80, 50.0)
    ests = [_est("ivw", 0.50, se=0.05), _est("ivw_fixed", 0.50, se=0.03), _est("ivw_radial_exact_re", 0.5, se=0.05),
            _est("weighted_median", 0.48, se=0.07), _est("mr_presso", 0.47, se=0.04), conmix]
    v = verdict(_result(ests, het, data=summary))
    assert {s.method: s.standing for s in v.standings}["ivw_fixed"] == "failed"
    assert v.standing("ivw_radial_exact_re").standing == "failed"
    assert v.standing("mr_presso").standing == "consistent"  # its correction is the answer to a failed global test
    assert v.recommended == "mr_presso"  # ConMix's set is narrower but it has no SE


def test_a_verified_method_that_disagrees_with_a_supported_design_gives_no_answer():
    j = Diagnostic("tsls_pcs/overidentification_j", "pooled", 1.0, 0.4, "x", {})
    v = verdict(_result([*NAIVE, _est("invariant_linear", 1.5, se=0.09), _est("tsls_pcs", 1.21, se=0.02)],
                        [*_checks("invariant_linear"), j]))
    assert v.standing("invariant_linear").standing == "verified" and v.standing("tsls_pcs").standing == "supported"
    assert v.recommended is None and "disagree" in v.statement
    agree = verdict(_result([*NAIVE, _est("invariant_linear", 1.2, se=0.09), _est("tsls_pcs", 1.21, se=0.02)],
                            [*_checks("invariant_linear"), j]))
    assert agree.recommended == "invariant_linear"


def _many_instrument_leak(seed, n=1500, k=60):
    """k instruments of modest strength (F about 4) that leak an environment-varying latent v. v is not
    confounded but moves the exposure, so purging it lowers F and, with it, 2SLS's pull towards OLS."""
    rng = np.random.default_rng(seed)
    h, v = rng.standard_normal(n), rng.standard_normal(n)
    Z = rng.standard_normal((n, k))
    leaked = Z + 0.15 * np.outer(v, rng.standard_normal(k))
    d = Z @ np.full(k, 0.055) + 0.5 * v + h + rng.standard_normal(n)
    y = d + h + rng.standard_normal(n)
    return y, d, leaked, v[:, None]


def test_liml_leak_shift_keeps_its_size_where_2sls_would_see_a_leak_in_the_many_instrument_bias():
    """A method estimating by LIML is checked with LIML: under an unconfounded leak the LIML shift rejects
    within binomial bounds of 5% over 150 seeds, while the 2SLS shift, pulled by the changing
    many-instrument bias, rejects far more often (so the LIML check is not the 2SLS one relabelled)."""
    from scipy import stats as st

    from invariant_mr.inference.diagnostics import _leak_features, leak_shift_test

    reps = 150
    rejections = {"tsls": 0, "liml": 0}
    for seed in range(reps):
        y, d, Z, v = _many_instrument_leak(seed)
        features = _leak_features(v, (np.arange(y.size) % 2).astype(int))
        for kappa in rejections:
            rejections[kappa] += leak_shift_test(y, d, Z, features, kappa=kappa)[2] < 0.05
    lo, hi = st.binom.ppf([0.0005, 0.9995], reps, 0.05)
    assert lo <= rejections["liml"] <= hi, rejections
    assert rejections["tsls"] > hi, rejections


def test_liml_leak_shift_takes_the_features_as_controls_so_right_genotype_answers_pass():
    """Balding-Nichols genotypes with 500 variants (the README's example), where `invariant_genotype` is
    unbiased: LIML on instruments purged of the leak features, next to y and d that keep the features'
    confounded variation, moves the estimate by about -0.05 and the check used to reject nearly every run.
    With the features as controls the shift is small and not significant; the purge-only LIML fit is
    computed here too, so the test fails if the check goes back to it."""
    import warnings

    from invariant_mr.estimators.iv import fit_kclass
    from invariant_mr.inference.diagnostics import _leak_features, _purge_fit, leak_shift_test
    from invariant_mr.instruments.genotype_invariant import GenotypeInvariantInstruments
    from invariant_mr.simulation.genetic_dataset import simulate_genetic

    shifts, pvalues, purge_only = [], [], []
    for seed in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = simulate_genetic("balding-nichols", seed=seed, n_envs=3, n_per_env=2000, n_variants=500,
                                    fst=0.1).to_mrdata()
        learner = GenotypeInvariantInstruments(random_state=0).fit(data.Z, data.env)
        X = learner.transform(data.Z, data.env)
        features = _leak_features(learner.removed_scores(data.Z, data.env), data.env_codes)
        env = data.env_dummies(drop_first=True)
        shift, se, p, _ = leak_shift_test(data.outcome, data.exposure, X, features, env, kappa="liml")
        shifts.append(shift)
        pvalues.append(p)
        full = fit_kclass(data.outcome, data.exposure, X, env, kappa="liml").estimate
        purged = X - _purge_fit(X, features, None)[0]
        purge_only.append(full - fit_kclass(data.outcome, data.exposure, purged, env, kappa="liml").estimate)
    assert np.mean(purge_only) > 0.03, purge_only  # the misfiring form: a shift where there is no leak
    assert abs(np.mean(shifts)) < 0.5 * np.mean(purge_only), (shifts, purge_only)
    assert sum(p < 0.05 for p in pvalues) <= 1, pvalues  # the purge-only form rejected 18 of 20 such runs


def test_liml_rows_are_held_to_stock_yogos_liml_threshold_and_2sls_rows_to_f_10():
    from invariant_mr.inference.instrument_strength import LIML_SIZE10, weak_f_threshold

    assert weak_f_threshold("liml", 1) == (16.38, "Stock-Yogo LIML 10% size, 1 instruments")
    assert weak_f_threshold("liml", 19)[0] == 3.18 and weak_f_threshold("liml", 100)[0] == 3.83
    assert weak_f_threshold("liml", 194)[0] == 3.90 == max(LIML_SIZE10[32:])  # beyond the table: its tail's largest
    assert weak_f_threshold("tsls", 194)[0] == weak_f_threshold(None, 5)[0] == weak_f_threshold("fuller", 50)[0] == 10.0
    diags = [*NAIVE_DIAGS, *_checks("invariant_genotype")]
    liml = _est("invariant_genotype", 1.01, f=6.0, k=194, extra={"estimator": "liml"})
    assert verdict(_result([*NAIVE, liml], diags)).recommended == "invariant_genotype"
    weak_liml = _est("invariant_genotype", 1.01, f=3.5, k=194, extra={"estimator": "liml"})
    v = verdict(_result([*NAIVE, weak_liml], diags))
    assert v.recommended is None and "3.9, Stock-Yogo LIML 10% size, 194 instruments" in " ".join(
        v.standing("invariant_genotype").failed)
    tsls = _est("invariant_genotype", 1.01, f=6.0, k=194, extra={"estimator": "tsls"})
    assert verdict(_result([*NAIVE, tsls], diags)).standing("invariant_genotype").standing == "weak"


def test_within_environment_structure_gives_each_environment_its_own_top_pcs():
    from invariant_mr.inference.diagnostics import within_environment_structure

    rng = np.random.default_rng(0)
    env = np.repeat([0, 1], [300, 200])
    Z = rng.binomial(2, 0.3, size=(500, 40)).astype(float)
    F = within_environment_structure(Z, env, n_pcs=4)
    assert F.shape == (500, 8)
    assert np.all(F[env == 0][:, 4:] == 0) and np.all(F[env == 1][:, :4] == 0)
    for e, cols in ((0, slice(0, 4)), (1, slice(4, 8))):
        block = F[env == e][:, cols]
        assert np.allclose(block.T @ block, np.eye(4), atol=1e-8)  # orthonormal scores
        Ze = Z[env == e] - Z[env == e].mean(0)
        Ze /= Ze.std(0)
        top = np.linalg.svd(Ze, full_matrices=False)[0][:, :4]
        assert np.allclose(np.abs(top.T @ block).sum(axis=0), 1.0, atol=1e-6)  # the same subspace, up to sign


def _structure_diag(method, shift, se, p, f_purged):
    return Diagnostic(f"{method}/structure_shift", "pooled", shift, p, "x",
                      {"shift": shift, "se": se, "purged_first_stage_f": f_purged})


@pytest.mark.parametrize("shift, se, p, f_purged, standing", [
    (0.002, 0.01, 0.84, 40.0, "verified"),   # purged of within-environment PCs: strong, unmoved
    (0.4, 0.05, 1e-15, 40.0, "failed"),      # the estimate moves: stratification within environments
    (0.0, 0.05, 0.99, 40.0, "failed"),       # less precise than the estimate (SE 0.02): cannot tell
    (0.0, 0.01, 0.99, 0.6, "failed"),        # the instruments are within-environment structure
])
def test_the_structure_check_passes_only_when_it_could_have_seen_a_bias(shift, se, p, f_purged, standing):
    diags = [*NAIVE_DIAGS, *_checks("invariant_linear"), _structure_diag("invariant_linear", shift, se, p, f_purged)]
    v = verdict(_result([*NAIVE, _est("invariant_linear", 1.0, se=0.02)], diags))
    assert v.standing("invariant_linear").standing == standing
    assert (v.recommended == "invariant_linear") == (standing == "verified")


def test_fine_scale_structure_inside_environments_fails_an_invariant_method_that_uses_it():
    """Demes within regions: the deme structure is alike in every region, so the invariance tests pass,
    yet the deme-level confounder biases `invariant_linear` (it uses that structure as instruments). The
    structure check sees it; on continuous (non-genotype) data it is not computed."""
    from invariant_mr.simulation.structured import simulate_demes

    sim = simulate_demes(n_envs=3, n_per_env=2000, n_variants=200, seed=1)
    data = MRData(Z=sim.genotypes.astype(float), exposure=sim.exposure, outcome=sim.outcome, env=sim.env)
    result = run_analysis(data, ["invariant_linear"], MethodContext(seed=1, progress=False, per_env=False))
    est = result.select(method="invariant_linear", scope="pooled")[0]
    assert est.estimate > 1.5  # biased by the deme confounder (truth 1.0)
    v = verdict(result)
    assert v.standing("invariant_linear").standing == "failed" and v.recommended is None
    assert any("within-environment" in t for t in v.standing("invariant_linear").failed)
    for setting in ("linear", "discrete"):  # continuous Z; 30 three-level columns (too few variants for structure)
        sim = simulate_paper(setting, n_envs=2, n_per_env=500, seed=1)
        other = run_analysis(sim.data, ["invariant_linear"], MethodContext(seed=1, progress=False, per_env=False))
        assert not [d for d in other.diagnostics if d.name.endswith("structure_shift")]


def test_a_costly_default_method_is_left_out_above_its_size_and_says_so(monkeypatch):
    """`invariant_genotype` (cost ~ n x variants^2) runs by default only up to `default_max_work`; above,
    the run reports it as not run, with how to ask for it, and naming it still runs it."""
    import dataclasses

    from invariant_mr.methods import registry
    from invariant_mr.pipeline import methods_for

    registry.registered_methods()
    spec = registry._REGISTRY["invariant_genotype"]
    assert spec.default and spec.default_max_work == 10**10
    monkeypatch.setitem(registry._REGISTRY, "invariant_genotype", dataclasses.replace(spec, default_max_work=100))
    sim = simulate_paper("linear", n_envs=2, n_per_env=100, seed=0)
    assert "invariant_genotype" not in [s.name for s in methods_for(sim.data, None)]
    assert "invariant_genotype" in [s.name for s in methods_for(sim.data, "invariant_genotype,ols")]
    result = run_analysis(sim.data, None, MethodContext(seed=0, progress=False, per_env=False))
    row = result.select(method="invariant_genotype")[0]
    assert not row.available and "name it in --methods" in row.reason
    monkeypatch.setitem(registry._REGISTRY, "invariant_genotype", spec)
    assert "invariant_genotype" in [s.name for s in methods_for(sim.data, None)]


def test_a_cross_fitted_method_fails_with_its_full_sample_twins_overidentification_check():
    """Under assortative mating (no family data) `invariant_linear` fails its J test decisively while its
    cross-fitted twin, with the same directions and less power, passed and was recommended at 1.41."""
    twin = [Diagnostic("invariant_linear/overidentification_j", "pooled", 90.0, 1e-13, "x", {"df": 3})]
    ests = [*NAIVE, _est("invariant_linear", 1.68, se=0.03), _est("invariant_linear_crossfit", 1.41, se=0.12)]
    v = verdict(_result(ests, [*NAIVE_DIAGS, *_checks("invariant_linear_crossfit"), *twin]))
    cf = v.standing("invariant_linear_crossfit")
    assert cf.standing == "failed" and v.recommended is None
    assert any("full-sample fit of the same directions (invariant_linear) fails" in t for t in cf.failed)
    passing = [Diagnostic("invariant_linear/overidentification_j", "pooled", 3.0, 0.4, "x", {"df": 3})]
    ok = verdict(_result(ests, [*NAIVE_DIAGS, *_checks("invariant_linear_crossfit"), *passing]))
    assert ok.standing("invariant_linear_crossfit").standing == "verified"
