"""Every 2SLS-type method reports its Anderson-Rubin set and first-stage F; learned-instrument
methods report the four assumption diagnostics; `run --sumstats-out` writes the per-variant table.

The AR sets are recomputed here from the method's own instruments and controls, so a method
that attached a set for the wrong instruments or controls fails.
"""

import csv
import json
import math

import numpy as np
import pytest
import torch

from invariant_mr.cli import main
from invariant_mr.inference.crossfit import fold_dummies, fold_interacted
from invariant_mr.inference.estimates import exogenous_controls, iv_estimates
from invariant_mr.pipeline import run_analysis
from invariant_mr.inference.settings import InferenceSettings
from invariant_mr.methods.registry import MethodContext
from invariant_mr.results import AnalysisResult
from invariant_mr.simulation.paper import simulate_paper
from invariant_mr.estimators.summary.sumstats import SUMSTATS_COLUMNS, read_summary_statistics, summary_statistics
from invariant_mr.inference.weak_iv import anderson_rubin_confidence_set

IV_METHODS = (
    "tsls_all",
    "tsls_all_env",
    "liml_all_env",
    "tsls_pcs",
    "tsht",
    "invariant_linear",
    "invariant_linear_crossfit",
    "invariant_autoencoder",
    "invariant_autoencoder_insample",
)
LEARNED = ("invariant_linear", "invariant_linear_crossfit", "invariant_autoencoder", "invariant_autoencoder_insample")
CHECKS = ("invariance_mmd", "independence_hsic", "leak_shift", "overidentification_j", "first_stage_f")
N_PERM = 49


@pytest.fixture(scope="module")
def sim():
    return simulate_paper("linear", n_per_env=400, seed=11)


@pytest.fixture(scope="module")
def ctx():
    # Tiny autoencoder training: this checks the wiring, not the method.
    options = {"epochs": 2, "warmup_epochs": 1, "hidden": 8, "n_pcs": 2, "diagnostic_permutations": N_PERM,
               "invariance_permutations": 0, "n_bootstrap": 50, "device": "cpu"}
    return MethodContext(seed=5, progress=False, options=options)


@pytest.fixture(scope="module")
def result(sim, ctx) -> AnalysisResult:
    torch.set_num_threads(1)
    return run_analysis(sim.data, ",".join(IV_METHODS), ctx)


def _hull_fields(cs):
    lo, hi = cs.hull
    return (None if not math.isfinite(lo) else lo), (None if not math.isfinite(hi) else hi)


@pytest.mark.parametrize("method", IV_METHODS)
def test_every_iv_method_reports_ar_set_and_first_stage_f_in_every_scope(result, sim, method):
    rows = result.select(method)
    assert {r.scope for r in rows} == {"pooled", *(f"env:{lv}" for lv in sim.data.env_levels)}
    for row in rows:
        d = row.to_dict()
        assert d["first_stage_f"] is not None and d["first_stage_f"] > 0
        kind = row.extra["ar_set_kind"]
        assert kind in ("interval", "empty", "two_rays", "whole_line", "ray", "union"), row.extra.get("ar_error")
        intervals = row.extra["ar_set"]
        if kind == "empty":
            assert intervals == [] and d["ar_ci_low"] is None and d["ar_ci_high"] is None
        else:  # the hull, None exactly on an unbounded side
            assert d["ar_ci_low"] == intervals[0][0] and d["ar_ci_high"] == intervals[-1][1]
        assert row.extra["ar_cov_type"] == "robust"
    # JSON keeps both fields (null when unbounded or empty).
    pooled = json.loads(result.to_json())["estimates"]
    assert all("ar_ci_low" in e and "ar_ci_high" in e for e in pooled)


def test_ar_sets_use_each_methods_own_instruments_and_controls(result, sim, ctx):
    data = sim.data
    fe = exogenous_controls(data, True)
    in_sample = {
        "tsls_all": (data.Z, None),
        "tsls_all_env": (data.Z, fe),
        "invariant_linear": (result.artifacts["invariant_linear"]["instruments"], fe),
        "invariant_autoencoder_insample": (result.artifacts["invariant_autoencoder_insample"]["instruments"], fe),
    }
    for name in ("invariant_linear_crossfit", "invariant_autoencoder"):
        art = result.artifacts[name]
        folds = art["folds"]
        in_sample[name] = (
            fold_interacted(art["instruments"], folds),
            np.hstack([fe, fold_dummies(folds, data.env_codes)]),
        )
    for name, (Z, controls) in in_sample.items():
        (pooled,) = result.select(name, "pooled")
        cs = anderson_rubin_confidence_set(data.outcome, data.exposure, Z, controls, alpha=ctx.alpha)
        assert pooled.extra["ar_set_kind"] == cs.kind, name
        lo, hi = _hull_fields(cs)
        for got, want in ((pooled.ar_ci_low, lo), (pooled.ar_ci_high, hi)):
            assert (got is None and want is None) or got == pytest.approx(want, rel=1e-9), name


@pytest.mark.parametrize("method", LEARNED)
def test_learned_methods_report_the_five_diagnostics(result, sim, method):
    diags = [d for d in result.diagnostics if d.name.startswith(method + "/")]
    by_name = {}
    for d in diags:
        by_name.setdefault(d.name.split("/", 1)[1], []).append(d)
    assert set(by_name) == set(CHECKS)
    assert {d.scope for d in by_name["first_stage_f"]} == {"pooled", *(f"env:{lv}" for lv in sim.data.env_levels)}
    for check in CHECKS:
        for d in by_name[check]:
            if d.statistic is None:  # e.g. J with a single instrument: said, not raised
                assert d.flag.startswith("not computed")
                continue
            assert 0 < d.pvalue <= 1 and d.flag and not d.flag.startswith("not computed")
    for check in ("invariance_mmd", "independence_hsic"):
        (d,) = by_name[check]
        assert d.detail["n_permutations"] == N_PERM
        # a permutation p-value is (1 + #exceed) / (1 + B)
        assert d.pvalue * (N_PERM + 1) == pytest.approx(round(d.pvalue * (N_PERM + 1)))
    crossfit = method in ("invariant_linear_crossfit", "invariant_autoencoder")
    assert by_name["invariance_mmd"][0].detail["permuted_within_folds"] is crossfit
    # The strength diagnostic is the F of the pooled estimate.
    (f_pooled,) = [d for d in by_name["first_stage_f"] if d.scope == "pooled"]
    (est,) = result.select(method, "pooled")
    assert f_pooled.statistic == pytest.approx(est.first_stage_f, rel=1e-8)
    text = result.summary()
    assert f"{method}/invariance_mmd" in text and "AR 95% set" in text


def test_diagnostics_are_seeded(sim, ctx):
    a = run_analysis(sim.data, "invariant_linear_crossfit", ctx).diagnostics
    b = run_analysis(sim.data, "invariant_linear_crossfit", ctx).diagnostics
    c = run_analysis(sim.data, "invariant_linear_crossfit", MethodContext(seed=6, options=ctx.options)).diagnostics
    assert [d.to_dict() for d in a] == [d.to_dict() for d in b]
    assert [d.pvalue for d in a if "hsic" in d.name] != [d.pvalue for d in c if "hsic" in d.name]


def test_unbounded_and_empty_sets_are_reported_honestly(sim, ctx):
    data = sim.data
    noise = np.random.default_rng(0).standard_normal((data.n, 1))
    (row,) = iv_estimates(data, noise, InferenceSettings(per_env=False), method="noise")
    assert row.extra["ar_set_kind"] in ("whole_line", "two_rays")  # irrelevant instrument: unbounded
    assert row.to_dict()["ar_ci_low"] is None and row.to_dict()["ar_ci_high"] is None
    # All of Z is confounded and the instruments disagree: no theta passes the AR test.
    (row,) = iv_estimates(data, data.Z, InferenceSettings(per_env=False), method="all")
    assert row.extra["ar_set_kind"] == "empty" and row.extra["ar_set"] == []
    # Skipped (too many instruments for the robust inversion) is said, never shown as unbounded.
    (row,) = iv_estimates(data, data.Z, InferenceSettings(per_env=False, ar_max_instruments=3), method="all")
    assert row.extra["ar_set_kind"] == "not computed" and "--ar-max-instruments" in row.extra["ar_error"]
    (row,) = iv_estimates(data, None, InferenceSettings(per_env=False), method="ols", kappa="ols")
    assert "ar_set_kind" not in row.extra and row.ar_ci_low is None


def test_run_writes_sumstats_and_diagnostics(sim, tmp_path):
    table = tmp_path / "data.tsv"
    data = sim.data
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["iid", "environment", "exposure", "outcome", *data.instrument_names])
        for i in range(data.n):
            w.writerow([f"s{i}", data.env[i], repr(float(data.exposure[i])), repr(float(data.outcome[i])),
                        *(repr(float(v)) for v in data.Z[i])])
    out, ss_path = tmp_path / "res", tmp_path / "sumstats.tsv"
    base = ["run", "--table", str(table), "--env", "environment", "--exposure", "exposure", "--outcome", "outcome",
            "--instruments", "z*", "--out", str(out), "--quiet", "--no-report", "--sumstats-out", str(ss_path)]
    assert main(base + ["--methods", "tsls_all_env,invariant_linear", "--diagnostic-permutations", "29"]) == 0
    header = ss_path.read_text().splitlines()[0].split("\t")
    assert tuple(header) == SUMSTATS_COLUMNS == (
        "variant", "beta_exposure", "se_exposure", "beta_outcome", "se_outcome", "n"
    )
    back, ref = read_summary_statistics(ss_path), summary_statistics(data)
    assert tuple(back.variant) == tuple(data.instrument_names) and back.n == data.n
    np.testing.assert_allclose(back.beta_exposure, ref.beta_exposure, rtol=1e-12)
    np.testing.assert_allclose(back.se_outcome, ref.se_outcome, rtol=1e-12)
    res = json.loads((out / "results.json").read_text())
    mmd = [d for d in res["diagnostics"] if d["name"] == "invariant_linear/invariance_mmd"]
    assert mmd and mmd[0]["detail"]["n_permutations"] == 29 and mmd[0]["flag"]
    assert all(e["ar_ci_low"] is not None for e in res["estimates"] if e["method"] == "invariant_linear")
    # --no-sumstats-env-adjust changes the written associations as it changes the methods' inputs.
    assert main(base + ["--methods", "ivw", "--overwrite", "--no-sumstats-env-adjust"]) == 0
    unadjusted = read_summary_statistics(ss_path)
    np.testing.assert_allclose(
        unadjusted.beta_exposure, summary_statistics(data, env_fixed_effects=False).beta_exposure, rtol=1e-12
    )
    assert not np.allclose(unadjusted.beta_exposure, ref.beta_exposure)
