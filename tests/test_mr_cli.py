"""`invariant-mr mr` end to end, the summary-statistic methods behind it, and multivariable 2SLS.

Published reference values: the printed outputs of the MendelianRandomization vignettes
(version 0.9.0) on the package's lipid/CHD data (tests/data/README.md):
  https://sb452.github.io/MendelianRandomizationVignette/articles/Univariable_MR_Methods.html
  https://sb452.github.io/MendelianRandomizationVignette/articles/Multivariable_MR_Methods.html
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from invariant_mr.cli import main
from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.estimators.multivariable_iv import fit_multivariable_tsls
from invariant_mr.estimators.summary.steiger import steiger_test
from invariant_mr.estimators.summary.summary_mr import ivw
from invariant_mr.estimators.summary.sumstats import SummaryStatistics
from invariant_mr.estimators.summary.two_sample import select_instruments, steiger_from_table
from invariant_mr.io.gwas_sumstats import read_mr_sumstats
from invariant_mr.methods.registry import MethodContext
from invariant_mr.pipeline import run_analysis

LIPIDS = Path(__file__).parent / "data" / "lipids_chd_mendelianrandomization.tsv"
PRINTED = 5e-4 + 1e-12  # printed to 3 decimals: within half a unit of the last digit
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _estimates(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "estimates.tsv", sep="\t")


def _row(df: pd.DataFrame, method: str, exposure: str | None = None) -> pd.Series:
    rows = df[(df["method"] == method) & (df["scope"] == "pooled")]
    if exposure is not None:
        rows = rows[rows["exposure"] == exposure]
    assert len(rows) == 1, rows
    return rows.iloc[0]


@pytest.fixture(scope="module")
def ldlc_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mr") / "ldlc"
    code = main(["mr", "--sumstats", str(LIPIDS), "--exposure", "ldlc", "--out", str(out), "--quiet", "--seed", "1",
                 "--presso-n-distribution", "300", "--n-bootstrap", "300",
                 # the vignette's package conventions: first-order median weights, normal p-values
                 "--median-weights", "first_order", "--summary-pvalues", "normal"])
    assert code == 0
    return out


# ----------------------------------------------------------------------------- published numbers
def test_mr_reproduces_the_published_univariable_estimates(ldlc_run):
    df = _estimates(ldlc_run)
    ivw_row, egger, median = _row(df, "ivw", "ldlc"), _row(df, "mr_egger", "ldlc"), _row(df, "weighted_median", "ldlc")
    # mr_ivw: 2.834 (0.530), CI 1.796, 3.873
    assert (ivw_row.estimate, ivw_row.se) == (pytest.approx(2.834, abs=PRINTED), pytest.approx(0.530, abs=PRINTED))
    assert (ivw_row.ci_low, ivw_row.ci_high) == (pytest.approx(1.796, abs=PRINTED), pytest.approx(3.873, abs=PRINTED))
    # mr_egger: 3.253 (0.770), CI 1.743, 4.762
    assert (egger.estimate, egger.se) == (pytest.approx(3.253, abs=PRINTED), pytest.approx(0.770, abs=PRINTED))
    assert (egger.ci_low, egger.ci_high) == (pytest.approx(1.743, abs=PRINTED), pytest.approx(4.762, abs=PRINTED))
    # mr_median (weighted): 2.683; its SE is a bootstrap SE (0.419 printed), Monte Carlo error only
    assert median.estimate == pytest.approx(2.683, abs=PRINTED)
    assert median.se == pytest.approx(0.419, rel=0.15)
    # mr_conmix: 2.730, CI 2.000, 3.430 (grid step 0.01)
    conmix = _row(df, "mr_conmix", "ldlc")
    assert conmix.estimate == pytest.approx(2.730, abs=PRINTED) and np.isnan(conmix.se)
    assert (conmix.ci_low, conmix.ci_high) == (pytest.approx(2.000, abs=PRINTED), pytest.approx(3.430, abs=PRINTED))
    assert set(df["method"]) == {"ivw", "ivw_fixed", "mr_egger", "weighted_median", "simple_median", "penalised_weighted_median",
                                 "simple_mode", "weighted_mode", "mr_presso", "mr_raps", "mr_conmix", "mr_lasso",
                                 "ivw_radial", "ivw_radial_iterative", "ivw_radial_exact_fe", "ivw_radial_exact_re"}


def test_mr_reproduces_the_published_multivariable_ivw(tmp_path):
    out = tmp_path / "mv"
    assert main(["mr", "--sumstats", str(LIPIDS), "--methods", "mv_ivw", "--out", str(out), "--quiet"]) == 0
    df = _estimates(out)
    # mr_mvivw(ldlc, hdlc, trig): 1.925 (0.439), -0.590 (0.555), 0.723 (0.230)
    for name, est, se, lo, hi in (("ldlc", 1.925, 0.439, 1.064, 2.786), ("hdlc", -0.590, 0.555, -1.677, 0.498),
                                  ("trig", 0.723, 0.230, 0.272, 1.174)):
        row = _row(df, "mv_ivw", name)
        assert (row.estimate, row.se) == (pytest.approx(est, abs=PRINTED), pytest.approx(se, abs=PRINTED))
        assert (row.ci_low, row.ci_high) == (pytest.approx(lo, abs=PRINTED), pytest.approx(hi, abs=PRINTED))
    res = json.loads((out / "results.json").read_text())
    assert [e["exposure"] for e in res["estimates"]] == ["ldlc", "hdlc", "trig"]
    assert res["provenance"]["parameters"]["methods"] == ["mv_ivw"]
    # A multivariable table without --methods runs the multivariable methods, with the Egger intercept.
    out2 = tmp_path / "mv_default"
    assert main(["mr", "--sumstats", str(LIPIDS), "--out", str(out2), "--quiet"]) == 0
    df2 = _estimates(out2)
    assert set(df2["method"]) == {"mv_ivw", "mv_egger"}
    assert _row(df2, "mv_egger", "ldlc").estimate == pytest.approx(2.829, abs=PRINTED)


# ----------------------------------------------------------------------------- outputs
def test_mr_outputs_provenance_plots_and_report(ldlc_run):
    names = sorted(p.name for p in ldlc_run.iterdir())
    assert names == sorted(["results.json", "estimates.tsv", "report.html", "dropped_variants.tsv", "scatter.png",
                            "funnel.png", "leave_one_out.png", "single_variant_forest.png", "mr_results.tsv",
                            "single_variant.tsv", "leave_one_out.tsv"])
    for png in ("scatter.png", "funnel.png", "leave_one_out.png", "single_variant_forest.png"):
        data = (ldlc_run / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    written = json.loads((ldlc_run / "results.json").read_text())
    prov = written["provenance"]
    assert prov["seed"] == 1 and prov["version"] and written["volatile"]["command"].startswith("invariant-mr mr")
    assert prov["inputs"][0]["sha256"] and prov["inputs"][0]["path"] == str(LIPIDS)
    assert prov["data"]["n_variants"] == 28 and prov["data"]["exposures"] == ["ldlc"]
    report = (ldlc_run / "report.html").read_text()
    for title in ("Variant associations with the exposure and the outcome", "Funnel plot", "Leave-one-out IVW",
                  "Single-variant estimates"):
        assert f'alt="{title}" src="data:image/png;base64,' in report
    # Nothing dropped from an already harmonised table without selection: a header only.
    assert (ldlc_run / "dropped_variants.tsv").read_text() == "variant\tstep\treason\tdetail\n"


def test_mr_presso_distortion_and_steiger_diagnostics(ldlc_run, tmp_path):
    res = json.loads((ldlc_run / "results.json").read_text())
    presso = next(e for e in res["estimates"] if e["method"] == "mr_presso")
    diag = {d["name"]: d for d in res["diagnostics"]}
    assert presso["extra"]["outlier_corrected"] and presso["extra"]["distortion_pvalue"] is not None
    assert diag["mr_presso_distortion"]["pvalue"] == presso["extra"]["distortion_pvalue"]
    assert diag["mr_presso_distortion"]["statistic"] == pytest.approx(presso["extra"]["distortion_coefficient_percent"])
    assert diag["steiger_direction"]["statistic"] is None and "n_exposure" in diag["steiger_direction"]["flag"]
    # With sample sizes the Steiger test runs on the table's columns (TwoSampleMR mr_steiger).
    frame = pd.read_csv(LIPIDS, sep="\t")
    frame["n_exposure"], frame["n_outcome"] = 100_000, 60_000
    path = tmp_path / "with_n.tsv"
    frame.to_csv(path, sep="\t", index=False)
    out = tmp_path / "steiger"
    assert main(["mr", "--sumstats", str(path), "--exposure", "ldlc", "--methods", "ivw", "--out", str(out), "--quiet"]) == 0
    got = next(d for d in json.loads((out / "results.json").read_text())["diagnostics"] if d["name"] == "steiger_direction")
    expected = steiger_from_table(read_mr_sumstats(path).with_exposures(["ldlc"]))
    assert got["pvalue"] == pytest.approx(expected.pvalue) and got["detail"]["r2_exposure"] == pytest.approx(expected.r2_exposure)


# ----------------------------------------------------------------------------- harmonisation and selection
def _two_gwas(tmp_path: Path):
    """The ldlc/CHD associations as two GWAS files with every harmonisation case in them."""
    frame = pd.read_csv(LIPIDS, sep="\t")
    L = len(frame)
    ea = np.array(["A", "C", "G", "T"] * 7)[:L]
    oa = np.array(["G", "T", "A", "C"] * 7)[:L]
    eaf = np.full(L, 0.3)
    exposure = pd.DataFrame({"SNP": frame["variant"], "effect_allele": ea, "other_allele": oa,
                             "beta": frame["beta_exposure_ldlc"], "se": frame["se_exposure_ldlc"], "eaf": eaf})
    outcome = pd.DataFrame({"variant": frame["variant"], "effect_allele": ea, "other_allele": oa,
                            "beta": frame["beta_outcome"], "se": frame["se_outcome"], "eaf": eaf})
    truth = frame["beta_outcome"].to_numpy().copy()
    # snp_2: alleles swapped in the outcome GWAS (beta negated there)
    outcome.loc[1, ["effect_allele", "other_allele"]] = [oa[1], ea[1]]
    outcome.loc[1, "beta"] = -outcome.loc[1, "beta"]
    outcome.loc[1, "eaf"] = 0.7
    # snp_3: reported on the other strand (G/A -> C/T)
    outcome.loc[2, ["effect_allele", "other_allele"]] = ["C", "T"]
    # snp_4: incompatible alleles
    outcome.loc[3, ["effect_allele", "other_allele"]] = ["A", "C"]
    # snp_5: palindromic A/T with EAF near 0.5 (ambiguous); snp_6: palindromic, EAF 0.1 in both (kept)
    for i, f in ((4, 0.48), (5, 0.1)):
        for table in (exposure, outcome):
            table.loc[i, ["effect_allele", "other_allele", "eaf"]] = ["A", "T", f]
    # snp_7: absent from the outcome GWAS; snp_8: missing exposure SE
    outcome = outcome.drop(index=6)
    exposure.loc[7, "se"] = np.nan
    exp_path, out_path = tmp_path / "exposure.tsv", tmp_path / "outcome.csv"
    exposure.to_csv(exp_path, sep="\t", index=False, na_rep="NA")
    outcome.to_csv(out_path, index=False)
    return exp_path, out_path, frame, truth


def test_two_file_form_harmonises_and_lists_every_dropped_variant(tmp_path):
    exp_path, out_path, frame, truth = _two_gwas(tmp_path)
    out = tmp_path / "res"
    code = main(["mr", "--exposure-gwas", str(exp_path), "--outcome-gwas", str(out_path), "--col", "exposure:variant=SNP",
                 "--exposure", "ldl", "--methods", "ivw", "--out", str(out), "--quiet"])
    assert code == 0
    dropped = pd.read_csv(out / "dropped_variants.tsv", sep="\t", keep_default_na=False)
    assert list(dropped.columns) == ["variant", "step", "reason", "detail"]
    assert dict(zip(dropped["variant"], dropped["reason"])) == {
        "snp_8": "missing_exposure_value", "snp_7": "not_in_outcome", "snp_4": "incompatible_alleles",
        "snp_5": "palindromic_ambiguous",
    }
    assert set(dropped["step"]) == {"harmonise"}
    # The kept variants, aligned back to the original signs, give the IVW of the original table.
    keep = ~frame["variant"].isin(dropped["variant"]).to_numpy()
    ss = SummaryStatistics(tuple(frame["variant"][keep]), frame["beta_exposure_ldlc"][keep], frame["se_exposure_ldlc"][keep],
                           truth[keep], frame["se_outcome"][keep], 0)
    row = _row(_estimates(out), "ivw", "ldl")
    assert row.estimate == pytest.approx(ivw(ss).estimate, rel=1e-12)
    # --palindromes drop also removes snp_6 (palindromic but not ambiguous).
    out2 = tmp_path / "drop"
    assert main(["mr", "--exposure-gwas", str(exp_path), "--outcome-gwas", str(out_path), "--col", "exposure:variant=SNP",
                 "--palindromes", "drop", "--methods", "ivw", "--out", str(out2), "--quiet"]) == 0
    dropped2 = pd.read_csv(out2 / "dropped_variants.tsv", sep="\t", keep_default_na=False)
    assert dict(zip(dropped2["variant"], dropped2["reason"]))["snp_6"] == "palindromic"
    assert json.loads((out2 / "results.json").read_text())["provenance"]["two_sample"]["dropped"]["palindromic"] == 2


def test_selection_in_an_independent_gwas_and_in_sample(tmp_path):
    frame = pd.read_csv(LIPIDS, sep="\t")
    rng = np.random.default_rng(0)
    select = pd.DataFrame({"variant": frame["variant"][:20], "effect_allele": "A", "other_allele": "G",
                           "beta": frame["beta_exposure_ldlc"][:20], "se": 0.004,
                           "pval": np.where(np.arange(20) < 12, 1e-10, 1e-3) * rng.uniform(0.5, 1, 20)})
    path = tmp_path / "select.tsv"
    select.to_csv(path, sep="\t", index=False)
    out = tmp_path / "sel"
    assert main(["mr", "--sumstats", str(LIPIDS), "--exposure", "ldlc", "--select-from", str(path),
                 "--methods", "ivw", "--out", str(out), "--quiet"]) == 0
    dropped = pd.read_csv(out / "dropped_variants.tsv", sep="\t")
    reasons = dropped.groupby("reason")["variant"].apply(set).to_dict()
    assert reasons == {"selection_p_threshold": {f"snp_{i}" for i in range(13, 21)},
                       "not_in_selection_gwas": {f"snp_{i}" for i in range(21, 29)}}
    assert _row(_estimates(out), "ivw").n_instruments == 12
    # In-sample selection on the table's own exposure p-values (beta/SE, normal).
    table = read_mr_sumstats(LIPIDS).with_exposures(["ldlc"])
    chosen = select_instruments(table, select_p=1e-8)
    z = np.abs(table.beta_exposure[:, 0] / table.se_exposure[:, 0])
    assert chosen.table.n_variants == int((z > 5.730729).sum())  # qnorm(1 - 5e-9)
    assert {d.reason for _, d in chosen.dropped} == {"exposure_p_threshold"}


def test_clumping_on_a_reference_panel(tmp_path):
    from tests.genotype_writers import Fileset, write_bed

    rng = np.random.default_rng(3)
    n = 300
    base = rng.binomial(2, 0.4, size=(n, 4)).astype(float)
    G = np.column_stack([base[:, 0], base[:, 0], base[:, 1], base[:, 2], base[:, 3]])  # snp_1 and snp_2 in full LD
    variants = pd.DataFrame({"variant_id": [f"snp_{j}" for j in (1, 2, 3, 4, 5)], "chrom": "1",
                             "pos": [1000, 2000, 3000, 4000, 5000], "ref": "A", "alt": "G"})
    prefix = write_bed(Fileset(G, np.array([f"F{i}" for i in range(n)], dtype=object),
                               np.array([f"S{i}" for i in range(n)], dtype=object), variants), tmp_path / "panel")
    frame = pd.read_csv(LIPIDS, sep="\t")[["variant", "beta_exposure_ldlc", "se_exposure_ldlc", "beta_outcome",
                                           "se_outcome"]].iloc[:6]
    path = tmp_path / "six.tsv"
    frame.to_csv(path, sep="\t", index=False)
    out = tmp_path / "clumped"
    assert main(["mr", "--sumstats", str(path), "--col", "beta_exposure=beta_exposure_ldlc",
                 "--col", "se_exposure=se_exposure_ldlc", "--clump-bfile", str(prefix), "--clump-r2", "0.5",
                 "--methods", "ivw", "--out", str(out), "--quiet"]) == 0
    dropped = pd.read_csv(out / "dropped_variants.tsv", sep="\t")
    by_reason = dict(zip(dropped["variant"], dropped["reason"]))
    # snp_2 (|z| 11) is stronger than snp_1 (|z| 6.5): snp_1 joins its clump; snp_6 is not in the panel.
    assert by_reason == {"snp_1": "clumped", "snp_6": "not_in_ld_reference"}
    assert set(dropped["step"]) == {"clump"}
    assert _row(_estimates(out), "ivw").n_instruments == 4


# ----------------------------------------------------------------------------- user errors
@pytest.mark.parametrize(
    "args, message",
    [
        (["--sumstats", "missing.tsv"], "no such file"),
        (["--sumstats", str(LIPIDS), "--exposure-gwas", str(LIPIDS)], "either --sumstats"),
        ([], "give the data"),
        (["--exposure-gwas", str(LIPIDS)], "needs both"),
        (["--sumstats", str(LIPIDS), "--exposure", "bmi"], "no exposure named 'bmi'"),
        (["--sumstats", str(LIPIDS), "--methods", "ivw"], "cannot analyse summary statistics with several exposures"),
        (["--sumstats", str(LIPIDS), "--exposure", "ldlc", "--methods", "tsls_all_env"], "cannot analyse summary statistics"),
        (["--sumstats", str(LIPIDS), "--clump-r2", "0.1"], "--clump-bfile"),
        (["--sumstats", str(LIPIDS), "--col", "beta"], "NAME=FILECOL"),
        (["--sumstats", str(LIPIDS), "--col", "effect_size=b"], "unknown column 'effect_size'"),
        (["--sumstats", str(LIPIDS), "--exposure", "ldlc", "--select-p", "1e-300"], "variant(s) left after instrument selection"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["mr", *args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("invariant-mr: error:") and "\n" not in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_bad_gwas_columns_exit_2(tmp_path, capsys):
    exp_path, out_path, *_ = _two_gwas(tmp_path)
    # "SNP" is TwoSampleMR's name and is recognised; "marker" is nobody's.
    frame = pd.read_csv(exp_path, sep="\t", dtype=str, keep_default_na=False).rename(columns={"SNP": "marker"})
    frame.to_csv(exp_path, sep="\t", index=False)
    assert main(["mr", "--exposure-gwas", str(exp_path), "--outcome-gwas", str(out_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing column(s) variant" in err and "--col NAME=FILECOL" in err and "\n" not in err
    assert main(["mr", "--exposure-gwas", str(exp_path), "--outcome-gwas", str(out_path), "--col", "exposure:variant=marker",
                 "--out", str(tmp_path / "o2"), "--quiet", "--methods", "ivw"]) == 0


# ----------------------------------------------------------------------------- methods on individual-level data
@pytest.fixture(scope="module")
def mv_table(tmp_path_factory):
    rng = np.random.default_rng(0)
    n, p = 2000, 15
    Z = rng.binomial(2, 0.3, size=(n, p)).astype(float)
    env = np.repeat(["a", "b"], n // 2)
    u = rng.normal(size=n)
    X = Z @ rng.normal(0, 0.3, (p, 2)) + np.column_stack([u, -u]) + rng.normal(size=(n, 2))
    y = X @ [0.4, -0.2] + u + rng.normal(size=n)
    frame = pd.DataFrame({"iid": [f"s{i}" for i in range(n)], "environment": env, "bmi": X[:, 0], "ldl": X[:, 1],
                          "chd": y, **{f"z{j}": Z[:, j] for j in range(p)}})
    path = tmp_path_factory.mktemp("mv") / "mv.tsv"
    frame.to_csv(path, sep="\t", index=False)
    return path, frame


def test_run_with_several_exposures_gives_multivariable_2sls_and_mv_ivw(mv_table, tmp_path, capsys):
    from linearmodels.iv import IV2SLS

    path, frame = mv_table
    out = tmp_path / "res"
    assert main(["run", "--table", str(path), "--env", "environment", "--exposure", "bmi,ldl", "--outcome", "chd",
                 "--instruments", "z*", "--out", str(out), "--quiet"]) == 0
    df = _estimates(out)
    assert set(df["method"]) == {"tsls_all_env", "mv_ivw", "mv_egger"}
    n = len(frame)
    exog = np.column_stack([np.ones(n), (frame["environment"] == "b").to_numpy(float)])
    ref = IV2SLS(frame["chd"].to_numpy(), exog, frame[["bmi", "ldl"]].to_numpy(),
                 frame[[f"z{j}" for j in range(15)]].to_numpy()).fit(cov_type="robust", debiased=False)
    for k, name in enumerate(("bmi", "ldl")):
        row = _row(df, "tsls_all_env", name)
        assert row.estimate == pytest.approx(ref.params.iloc[2 + k], abs=1e-6)
        assert row.se == pytest.approx(ref.std_errors.iloc[2 + k], abs=1e-6)
        assert _row(df, "mv_ivw", name).estimate == pytest.approx([0.4, -0.2][k], abs=0.15)
    assert set(df["scope"]) == {"pooled", "env:a", "env:b"}
    # A univariable method cannot take several exposures.
    assert main(["run", "--table", str(path), "--env", "environment", "--exposure", "bmi,ldl", "--outcome", "chd",
                 "--instruments", "z*", "--methods", "tsls_all_env,ivw", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "ivw cannot analyse several exposures" in err and "\n" not in err


def test_raps_and_conmix_run_on_individual_level_data(mv_table, tmp_path):
    path, _ = mv_table
    out = tmp_path / "uni"
    assert main(["run", "--table", str(path), "--env", "environment", "--exposure", "bmi", "--outcome", "chd",
                 "--instruments", "z*", "--methods", "mr_raps,mr_conmix,ivw", "--no-per-env", "--out", str(out),
                 "--quiet"]) == 0
    df = _estimates(out)
    for method in ("mr_raps", "mr_conmix"):
        row = _row(df, method)
        assert np.isfinite(row.estimate) and row.n_instruments == 15 and row.ci_low < row.estimate < row.ci_high
    diags = {d["name"] for d in json.loads((out / "results.json").read_text())["diagnostics"]}
    assert "steiger_direction" in diags


# ----------------------------------------------------------------------------- multivariable 2SLS estimator
@pytest.mark.parametrize("cov_type", ["robust", "unadjusted"])
@pytest.mark.parametrize("seed", [0, 1])
def test_multivariable_tsls_matches_linearmodels(cov_type, seed):
    from linearmodels.iv import IV2SLS

    rng = np.random.default_rng(seed)
    n, p = 1500, 6
    Z, W, u = rng.normal(size=(n, p)), rng.normal(size=(n, 2)), rng.normal(size=n)
    X = np.column_stack([Z @ rng.normal(size=p) + u + W[:, 0], Z @ rng.normal(size=p) - u, Z[:, 0] + u])
    X += rng.normal(size=X.shape)
    y = X @ [0.5, -0.3, 0.2] + W @ [1.0, 2.0] + 2 * u + rng.normal(size=n) * (1 + np.abs(Z[:, 0]))
    fit = fit_multivariable_tsls(y, X, Z, W, cov_type=cov_type)
    ref = IV2SLS(y, np.column_stack([np.ones(n), W]), X, Z).fit(cov_type=cov_type, debiased=False)
    np.testing.assert_allclose(fit.estimate, ref.params.to_numpy()[3:], atol=1e-6)
    np.testing.assert_allclose(fit.se, ref.std_errors.to_numpy()[3:], atol=1e-6)
    np.testing.assert_allclose(fit.cov, ref.cov.to_numpy()[3:, 3:], atol=1e-8)


def test_multivariable_tsls_with_one_exposure_is_fit_kclass():
    rng = np.random.default_rng(5)
    n = 800
    Z, u = rng.normal(size=(n, 4)), rng.normal(size=n)
    d = Z @ [0.3, 0.2, 0.1, 0.0] + u + rng.normal(size=n)
    y = 0.7 * d + u + rng.normal(size=n)
    multi = fit_multivariable_tsls(y, d, Z, cov_type="unadjusted")
    one = fit_kclass(y, d, Z, cov_type="unadjusted")
    assert multi.estimate[0] == pytest.approx(one.estimate, rel=1e-10)
    assert multi.se[0] == pytest.approx(one.se, rel=1e-10)
    assert multi.conditional_f[0] == pytest.approx(one.first_stage_f, rel=1e-10)


def test_multivariable_tsls_refuses_fewer_instruments_than_exposures():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="at least as many instruments as exposures"):
        fit_multivariable_tsls(rng.normal(size=50), rng.normal(size=(50, 3)), rng.normal(size=(50, 2)))


def test_summary_methods_take_a_table_through_the_python_api():
    table = read_mr_sumstats(LIPIDS).with_exposures(["ldlc"])
    result = run_analysis(table, "ivw,mr_raps", MethodContext(per_env=False))
    assert [e.exposure for e in result.estimates] == ["ldlc", "ldlc"]
    assert result.estimates[0].estimate == pytest.approx(2.834, abs=PRINTED)
    raps = result.estimates[1]
    assert raps.extra["loss"] == "huber" and "standardised_residuals" not in raps.extra
    assert "mr_raps[ldlc]" in result.summary()


@pytest.mark.browser
def test_mr_plots_render_in_headless_chromium(ldlc_run, tmp_path):
    import shutil
    import subprocess

    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser: install Debian's chromium to run this test")
    from invariant_mr.report.mr_plots import mr_plots_html

    pngs = {name: (ldlc_run / name).read_bytes() for name in ("scatter.png", "funnel.png")}
    page = tmp_path / "plots.html"
    page.write_text(f"<!DOCTYPE html><html><body style='margin:0'>{mr_plots_html(pngs)}</body></html>")
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1600,700", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    # The method lines of the scatter and funnel plots are coloured: the embedded PNGs decoded.
    assert ((pixels.max(axis=2) - pixels.min(axis=2)) > 0.3).mean() > 0.002
    # The report of the run embeds the same figures.
    report = (ldlc_run / "report.html").read_text()
    assert all(name in report for name in ("scatter.png", "funnel.png", "leave_one_out.png", "single_variant_forest.png"))


def test_mr_two_file_run_never_imports_scipy_stats_or_the_individual_level_iv_code(tmp_path):
    """The summary-statistic path takes its tail probabilities from scipy.special; importing scipy.stats
    (scipy.spatial, sparse, linalg, optimize) or estimators.iv was most of a second of `mr`'s run time,
    and the other commands' modules (demo alone 0.13 s) a little more."""
    import subprocess
    import sys

    data = Path(__file__).parent / "data"
    code = (
        "import sys; from invariant_mr.cli import main; "
        f"code = main(['mr', '--exposure-gwas', {str(data / 'bmi_chd_twosamplemr_exposure.tsv')!r}, "
        f"'--outcome-gwas', {str(data / 'bmi_chd_twosamplemr_outcome.tsv')!r}, "
        f"'--methods', 'ivw,mr_egger,weighted_median,simple_mode,weighted_mode', '--quiet', "
        f"'--out', {str(tmp_path / 'o')!r}]); "
        "print(code, ','.join(m for m in ('scipy.stats', 'scipy.optimize', 'invariant_mr.estimators.iv', 'torch', "
        "'dask', 'invariant_mr.cli.demo', 'invariant_mr.cli.run', 'invariant_mr.cli.portable', "
        "'invariant_mr.cli.simulate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "0", f"exit code and modules imported by mr: {out!r}"
    assert (tmp_path / "o" / "report.html").is_file()


def test_mr_reruns_into_its_own_output_folder_with_overwrite(tmp_path):
    """Every table `mr` writes is known as its own output: a rerun with --overwrite replaces the folder
    (it once refused, calling mr_results.tsv and the other TwoSampleMR-style tables foreign files)."""
    data = Path(__file__).parent / "data"
    args = ["mr", "--exposure-gwas", str(data / "bmi_chd_twosamplemr_exposure.tsv"),
            "--outcome-gwas", str(data / "bmi_chd_twosamplemr_outcome.tsv"), "--methods", "ivw",
            "--quiet", "--out", str(tmp_path / "o"), "--overwrite"]
    assert main(args) == 0
    assert {"mr_results.tsv", "harmonised_data.tsv", "single_variant.tsv", "leave_one_out.tsv"} <= {
        p.name for p in (tmp_path / "o").iterdir()}
    assert main(args) == 0
