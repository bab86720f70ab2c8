"""`invariant-mr mr` tables, odds ratios, multivariable input from one file per exposure, harmonisation failures,
the summary-data report and the Steiger round trip from `run --sumstats-out`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from invariant_mr.cli import main
from invariant_mr.estimators.summary.mr_tables import odds_ratios
from invariant_mr.estimators.summary.multivariable_mr import mv_ivw
from invariant_mr.estimators.summary.summary_mr import ivw, leave_one_out
from invariant_mr.estimators.summary.two_sample import summary_statistics_from_table
from invariant_mr.io.gwas_sumstats import harmonise, read_gwas, read_mr_sumstats

DATA = Path(__file__).parent / "data"
EXPOSURE = DATA / "bmi_chd_twosamplemr_exposure.tsv"
OUTCOME = DATA / "bmi_chd_twosamplemr_outcome.tsv"
LIPIDS = DATA / "lipids_chd_mendelianrandomization.tsv"


@pytest.fixture(scope="module")
def bmi_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mr") / "bmi"
    code = main(["mr", "--exposure-gwas", str(EXPOSURE), "--outcome-gwas", str(OUTCOME), "--methods", "ivw,mr_egger",
                 "--odds-ratios", "--out", str(out), "--quiet"])
    assert code == 0
    return out


def _tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=True)


def test_tables_match_the_estimators(bmi_run):
    h = harmonise(read_gwas(EXPOSURE), read_gwas(OUTCOME))
    ss = summary_statistics_from_table(h.table)
    dat = _tsv(bmi_run / "harmonised_data.tsv")
    assert len(dat) == 79 and dat["mr_keep"].all()
    np.testing.assert_allclose(dat["beta.outcome"], h.table.beta_outcome, rtol=1e-9)
    single = _tsv(bmi_run / "single_variant.tsv")
    wald = single[single["method"] == "wald_ratio"]
    np.testing.assert_allclose(wald["b"], ss.beta_outcome / ss.beta_exposure, rtol=1e-9)
    np.testing.assert_allclose(wald["se"], ss.se_outcome / np.abs(ss.beta_exposure), rtol=1e-9)
    assert list(single["SNP"].iloc[-2:]) == ["All - ivw", "All - mr_egger"]
    loo = _tsv(bmi_run / "leave_one_out.tsv")
    ref = leave_one_out(ss)
    np.testing.assert_allclose(loo["b"].iloc[:-1], ref["estimate"], rtol=1e-9)
    assert loo["SNP"].iloc[-1] == "All" and loo["b"].iloc[-1] == pytest.approx(ivw(ss).estimate, rel=1e-9)


def test_odds_ratios_follow_generate_odds_ratios(bmi_run):
    res = _tsv(bmi_run / "mr_results.tsv")
    row = res[res["method"] == "ivw"].iloc[0]
    assert row["or"] == pytest.approx(math.exp(row["b"]), rel=1e-9)
    assert row["or_lci95"] == pytest.approx(math.exp(row["b"] - 1.96 * row["se"]), rel=1e-9)
    assert row["or_uci95"] == pytest.approx(math.exp(row["b"] + 1.96 * row["se"]), rel=1e-9)
    assert math.isnan(odds_ratios(float("nan"), 0.1)[2]) and odds_ratios(0.0, 0.1)[2] == 1.0


def test_summary_report_has_no_individual_data_sections(bmi_run):
    html = (bmi_run / "report.html").read_text()
    assert "Summary-statistic MR plots" in html and "Diagnostics" in html
    for section in ("Learned instruments by environment", "Training curves", "Samples and quality control"):
        assert section not in html


def test_empty_harmonisation_says_why_and_writes_dropped_variants(tmp_path, capsys):
    frame = pd.read_csv(OUTCOME, sep="\t", dtype=str, keep_default_na=False)
    frame["SNP"] = [f"1:{i}" for i in range(len(frame))]  # chr:pos ids against rs ids
    other = tmp_path / "outcome.tsv"
    frame.to_csv(other, sep="\t", index=False)
    out = tmp_path / "o"
    assert main(["mr", "--exposure-gwas", str(EXPOSURE), "--outcome-gwas", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "harmonisation left no variant of 79" in err and "not in outcome 79" in err
    assert "no variant id is shared" in err and "'rs977747'" in err and "dropped_variants.tsv" in err and "\n" not in err
    dropped = _tsv(out / "dropped_variants.tsv")
    assert len(dropped) == 79 and set(dropped["reason"]) == {"not_in_outcome"}
    # Incompatible alleles are counted and named too.
    frame = pd.read_csv(OUTCOME, sep="\t", dtype=str, keep_default_na=False)
    frame["effect_allele.outcome"], frame["other_allele.outcome"] = "AAC", "CCA"  # matches no exposure allele pair
    frame.to_csv(other, sep="\t", index=False)
    assert main(["mr", "--exposure-gwas", str(EXPOSURE), "--outcome-gwas", str(other), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "incompatible alleles 79" in err and "allele mismatches" in err


def test_multivariable_input_from_one_gwas_file_per_exposure(tmp_path):
    lip = pd.read_csv(LIPIDS, sep="\t")
    L = len(lip)
    ea = np.array(list("ACGT") * 7)[:L]
    oa = np.array(list("GTAC") * 7)[:L]
    paths = []
    for k, name in enumerate(("ldlc", "hdlc", "trig")):
        beta = lip[f"beta_exposure_{name}"].to_numpy().copy()
        e, o = ea.copy(), oa.copy()
        if k == 1:  # the second exposure reports some variants for the other allele: aligned back
            e[:4], o[:4], beta[:4] = oa[:4], ea[:4], -beta[:4]
        frame = pd.DataFrame({"SNP": lip["variant"], "A1": e, "A2": o, "BETA": beta, "SE": lip[f"se_exposure_{name}"]})
        paths.append(tmp_path / f"{name}.tsv")
        frame.to_csv(paths[-1], sep="\t", index=False)
    outcome = pd.DataFrame({"variant_id": lip["variant"], "effect_allele": ea, "other_allele": oa,
                            "beta": lip["beta_outcome"], "standard_error": lip["se_outcome"]})
    outcome.drop(index=3).to_csv(tmp_path / "chd.tsv", sep="\t", index=False)  # one variant absent from the outcome
    out = tmp_path / "mv"
    args = ["mr", "--outcome-gwas", str(tmp_path / "chd.tsv"), "--exposure", "ldlc,hdlc,trig", "--methods", "mv_ivw",
            "--out", str(out), "--quiet"]
    for p in paths:
        args += ["--exposure-gwas", str(p)]
    assert main(args) == 0
    est = _tsv(out / "estimates.tsv")
    table = read_mr_sumstats(LIPIDS).subset(np.arange(L) != 3)
    ref = mv_ivw(table.beta_exposure, table.se_exposure, table.beta_outcome, table.se_outcome)
    got = est[est["scope"] == "pooled"].set_index("exposure").loc[["ldlc", "hdlc", "trig"]]
    np.testing.assert_allclose(got["estimate"], ref.estimate, rtol=1e-9)
    np.testing.assert_allclose(got["se"], ref.se, rtol=1e-9)
    dropped = _tsv(out / "dropped_variants.tsv")
    assert list(dropped["variant"]) == ["snp_4"] and dropped["reason"].iloc[0] == "not_in_outcome"
    mismatch = ["mr", "--outcome-gwas", str(tmp_path / "chd.tsv"), "--exposure", "a,b", "--out", str(tmp_path / "x")]
    for p in paths:
        mismatch += ["--exposure-gwas", str(p)]
    assert main(mismatch) == 2  # two names for three files


def test_steiger_runs_on_the_sumstats_out_round_trip(tmp_path):
    """`run --sumstats-out` writes one `n`: read back as both sample sizes, Steiger is computed."""
    rng = np.random.default_rng(0)
    L, n = 20, 5000
    bx = rng.normal(0, 0.05, L)
    frame = pd.DataFrame({"variant": [f"v{i}" for i in range(L)], "beta_exposure": bx, "se_exposure": 0.01,
                          "beta_outcome": 0.3 * bx + rng.normal(0, 0.01, L), "se_outcome": 0.01, "n": n})
    path = tmp_path / "ss.tsv"
    frame.to_csv(path, sep="\t", index=False)
    out = tmp_path / "o"
    assert main(["mr", "--sumstats", str(path), "--methods", "ivw", "--out", str(out), "--quiet"]) == 0
    diag = next(d for d in json.loads((out / "results.json").read_text())["diagnostics"] if d["name"] == "steiger_direction")
    assert diag["statistic"] is not None and diag["pvalue"] < 0.05 and "not computed" not in diag["flag"]


def test_the_run_states_its_conventions(bmi_run, tmp_path, capsys):
    prov = json.loads((bmi_run / "results.json").read_text())["provenance"]
    conv = prov["two_sample"]["conventions"]
    assert "TwoSampleMR" in conv["p-values"] and "second order" in conv["weighted median weights"]
    assert "mr.raps::mr.raps" in conv["MR-RAPS"]
    out = tmp_path / "o"
    assert main(["mr", "--sumstats", str(LIPIDS), "--exposure", "ldlc", "--methods", "mr_egger", "--summary-pvalues",
                 "normal", "--out", str(out)]) == 0
    assert "Conventions: p-values: normal (MendelianRandomization)" in capsys.readouterr().out


def test_twosamplemr_dat_rows_with_mr_keep_false_are_left_out(tmp_path):
    h = harmonise(read_gwas(EXPOSURE), read_gwas(OUTCOME))
    t = h.table
    frame = pd.DataFrame({"SNP": t.variant, "beta.exposure": t.beta_exposure[:, 0], "se.exposure": t.se_exposure[:, 0],
                          "beta.outcome": t.beta_outcome, "se.outcome": t.se_outcome,
                          "mr_keep": ["FALSE" if i in (0, 5) else "TRUE" for i in range(t.n_variants)]})
    path = tmp_path / "dat.tsv"
    frame.to_csv(path, sep="\t", index=False)
    out = tmp_path / "o"
    assert main(["mr", "--sumstats", str(path), "--methods", "ivw", "--out", str(out), "--quiet"]) == 0
    row = _tsv(out / "estimates.tsv").iloc[0]
    keep = np.ones(t.n_variants, bool)
    keep[[0, 5]] = False
    assert row["n_instruments"] == 77
    assert row["estimate"] == pytest.approx(ivw(summary_statistics_from_table(t.subset(keep))).estimate, rel=1e-9)
    dropped = _tsv(out / "dropped_variants.tsv")
    assert list(dropped["variant"]) == [t.variant[0], t.variant[5]] and set(dropped["reason"]) == {"mr_keep_false"}
