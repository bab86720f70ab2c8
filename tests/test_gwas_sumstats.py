"""Reading GWAS summary statistics and harmonising two GWAS (TwoSampleMR conventions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from invariant_mr.errors import InputError
from invariant_mr.io.gwas_sumstats import (
    GWASTable,
    complement,
    harmonise,
    is_palindromic,
    read_gwas,
    read_mr_sumstats,
)

DATA = Path(__file__).parent / "data"

# variant, exposure (ea, oa, beta, se, eaf), outcome (ea, oa, beta, se, eaf), expected outcome beta or drop reason
CASES = [
    ("same", ("A", "G", 0.10, 0.01, 0.30), ("A", "G", 0.05, 0.02, 0.31), 0.05),
    ("swapped", ("A", "G", 0.10, 0.01, 0.30), ("G", "A", 0.05, 0.02, 0.69), -0.05),
    ("strand", ("A", "G", 0.10, 0.01, 0.30), ("T", "C", 0.05, 0.02, 0.30), 0.05),
    ("strand_swapped", ("A", "G", 0.10, 0.01, 0.30), ("C", "T", 0.05, 0.02, 0.70), -0.05),
    ("pal_opposite", ("A", "T", 0.10, 0.01, 0.20), ("A", "T", 0.05, 0.02, 0.80), -0.05),
    ("pal_same", ("A", "T", 0.10, 0.01, 0.20), ("A", "T", 0.05, 0.02, 0.22), 0.05),
    ("pal_swapped", ("A", "T", 0.10, 0.01, 0.20), ("T", "A", 0.05, 0.02, 0.80), -0.05),
    ("pal_ambiguous", ("C", "G", 0.10, 0.01, 0.45), ("C", "G", 0.05, 0.02, 0.45), "palindromic_ambiguous"),
    ("pal_outcome_ambiguous", ("C", "G", 0.10, 0.01, 0.20), ("C", "G", 0.05, 0.02, 0.50), "palindromic_ambiguous"),
    ("pal_no_eaf", ("A", "T", 0.10, 0.01, np.nan), ("A", "T", 0.05, 0.02, np.nan), "palindromic_ambiguous"),
    ("pal_mid_maf", ("G", "C", 0.10, 0.01, 0.35), ("G", "C", 0.05, 0.02, 0.34), 0.05),
    ("incompatible", ("A", "G", 0.10, 0.01, 0.30), ("A", "C", 0.05, 0.02, 0.30), "incompatible_alleles"),
    ("lowercase", ("a", "g", 0.10, 0.01, 0.30), ("g", "a", 0.05, 0.02, 0.70), -0.05),
]


def _gwas_frames():
    exp_rows, out_rows = [], []
    for v, e, o, _ in CASES:
        exp_rows.append({"variant": v, "effect_allele": e[0], "other_allele": e[1], "beta": e[2], "se": e[3], "eaf": e[4]})
        out_rows.append({"variant": v, "effect_allele": o[0], "other_allele": o[1], "beta": o[2], "se": o[3], "eaf": o[4]})
    exp_rows += [
        {"variant": "absent", "effect_allele": "A", "other_allele": "G", "beta": 0.1, "se": 0.01, "eaf": 0.3},
        {"variant": "dup", "effect_allele": "A", "other_allele": "G", "beta": 0.1, "se": 0.01, "eaf": 0.3},
        {"variant": "dup", "effect_allele": "A", "other_allele": "G", "beta": 0.2, "se": 0.01, "eaf": 0.3},
        {"variant": "out_missing", "effect_allele": "A", "other_allele": "G", "beta": 0.1, "se": 0.01, "eaf": 0.3},
    ]
    out_rows += [
        {"variant": "dup", "effect_allele": "A", "other_allele": "G", "beta": 0.1, "se": 0.01, "eaf": 0.3},
        {"variant": "out_missing", "effect_allele": "A", "other_allele": "G", "beta": np.nan, "se": 0.01, "eaf": 0.3},
        {"variant": "outcome_only", "effect_allele": "A", "other_allele": "G", "beta": 0.1, "se": 0.01, "eaf": 0.3},
    ]
    return pd.DataFrame(exp_rows), pd.DataFrame(out_rows)


@pytest.fixture()
def gwas_files(tmp_path):
    e, o = _gwas_frames()
    pe, po = tmp_path / "exposure.tsv", tmp_path / "outcome.csv"
    e.to_csv(pe, sep="\t", index=False, na_rep="NA")
    o.to_csv(po, index=False, na_rep="")
    return pe, po


def test_alleles_helpers():
    assert complement("A") == "T" and complement("CG") == "GC"
    assert is_palindromic("A", "T") and is_palindromic("G", "C")
    assert not is_palindromic("A", "G") and not is_palindromic("AT", "TA")


def test_harmonise_swaps_flips_and_infers_palindromes(gwas_files):
    exp = read_gwas(gwas_files[0], what="--exposure-gwas")
    out = read_gwas(gwas_files[1], what="--outcome-gwas")
    res = harmonise(exp, out)
    t = res.table
    expected_beta = {v: want for v, _, _, want in CASES if not isinstance(want, str)}
    assert set(t.variant) == set(expected_beta)
    # Order is the exposure GWAS's.
    assert list(t.variant) == [v for v, *_ in CASES if v in expected_beta]
    for v, b in zip(t.variant, t.beta_outcome):
        assert b == pytest.approx(expected_beta[v], abs=1e-15), v
    # Exposure side untouched; outcome EAF re-expressed for the exposure's effect allele.
    np.testing.assert_allclose(t.beta_exposure[:, 0], 0.10)
    eaf_out = dict(zip(t.variant, t.eaf_outcome))
    assert eaf_out["swapped"] == pytest.approx(0.31) and eaf_out["pal_opposite"] == pytest.approx(0.20)
    assert t.effect_allele[t.variant.index("lowercase")] == "A"
    dropped = {d.variant: d.reason for d in res.dropped}
    assert dropped == {
        "pal_ambiguous": "palindromic_ambiguous",
        "pal_outcome_ambiguous": "palindromic_ambiguous",
        "pal_no_eaf": "palindromic_ambiguous",
        "incompatible": "incompatible_alleles",
        "absent": "not_in_outcome",
        "dup": "duplicate_in_exposure",
        "out_missing": "missing_outcome_value",
    }
    assert "outcome_only" not in dropped  # only exposure variants are reported
    assert res.n_swapped == 3 + 1 and res.n_strand_flipped == 2 and res.n_palindromic_flipped == 1
    assert res.dropped_tsv().splitlines()[0] == "variant\treason\tdetail"
    assert len(res.dropped_tsv().splitlines()) == 1 + len(dropped)
    assert "dropped" in res.summary()
    with pytest.raises(ValueError):
        t.beta_outcome[0] = 1.0  # immutable result


def test_harmonise_agrees_with_pytwosamplemr_harmonise_data():
    """pytwosamplemr ports TwoSampleMR's harmonise_data (action 2, tolerance 0.08).

    Compared on the variants where both implementations apply the same rule
    (pytwosamplemr judges palindrome ambiguity on the exposure EAF only, so the
    case ambiguous only in the outcome is left out).
    """
    import pytwosamplemr as pt
    e, o = _gwas_frames()
    keep = [v for v, *_ in CASES if v not in ("pal_outcome_ambiguous", "lowercase")]
    e, o = e[e.variant.isin(keep)], o[o.variant.isin(keep)]
    ref = pt.harmonise_data(e.rename(columns={"variant": "SNP"}), o.rename(columns={"variant": "SNP"}), tolerance=0.08, action=2)
    ours = harmonise(_table(e), _table(o))
    ref_kept = ref[ref.mr_keep]
    assert list(ours.table.variant) == list(ref_kept.SNP)
    np.testing.assert_allclose(ours.table.beta_outcome, ref_kept["beta.outcome"], rtol=1e-12)
    assert {d.variant for d in ours.dropped} == set(ref.SNP[~ref.mr_keep])
    ref3 = pt.harmonise_data(e.rename(columns={"variant": "SNP"}), o.rename(columns={"variant": "SNP"}), action=3)
    ours3 = harmonise(_table(e), _table(o), palindromes="drop")
    assert list(ours3.table.variant) == list(ref3.SNP[ref3.mr_keep])


def _table(frame) -> GWASTable:
    return GWASTable(
        variant=tuple(frame.variant),
        effect_allele=tuple(frame.effect_allele),
        other_allele=tuple(frame.other_allele),
        beta=frame.beta.to_numpy(),
        se=frame.se.to_numpy(),
        eaf=frame.eaf.to_numpy(),
    )


def test_palindrome_policy_and_threshold(gwas_files):
    exp, out = read_gwas(gwas_files[0]), read_gwas(gwas_files[1])
    dropped = {d.variant: d.reason for d in harmonise(exp, out, palindromes="drop").dropped}
    for v in ("pal_opposite", "pal_same", "pal_swapped", "pal_mid_maf"):
        assert dropped[v] == "palindromic"
    # A stricter threshold makes the MAF-0.35 palindrome ambiguous (0.3 < 0.35 < 0.7).
    strict = {d.variant: d.reason for d in harmonise(exp, out, maf_threshold=0.3).dropped}
    assert strict["pal_mid_maf"] == "palindromic_ambiguous"
    assert "pal_mid_maf" not in {d.variant for d in harmonise(exp, out).dropped}
    with pytest.raises(InputError, match="palindromes"):
        harmonise(exp, out, palindromes="keep")
    with pytest.raises(InputError, match="threshold"):
        harmonise(exp, out, maf_threshold=0.6)


def test_read_gwas_column_mapping_and_errors(tmp_path):
    path = tmp_path / "g.tsv"
    path.write_text("SNP\tA1\tA2\tBETA\tSE\nrs1\tA\tG\t0.1\t0.01\nrs2\tC\tT\t-0.2\t0.02\n")
    g = read_gwas(path, {"variant": "SNP", "effect_allele": "A1", "other_allele": "A2", "beta": "BETA", "se": "SE"})
    assert g.variant == ("rs1", "rs2") and g.beta[1] == -0.2 and g.eaf is None
    assert read_gwas(path).beta[1] == -0.2  # SNP, A1, A2, BETA, SE are recognised without renames
    odd = tmp_path / "odd.tsv"
    odd.write_text("SNP\tallele_x\tA2\tBETA\tSE\nrs1\tA\tG\t0.1\t0.01\n")
    with pytest.raises(InputError, match="missing column.*effect_allele.*--col NAME=FILECOL"):
        read_gwas(odd, {"variant": "SNP", "beta": "BETA", "se": "SE"})
    with pytest.raises(InputError, match="BETA_X.*not in the file"):
        read_gwas(path, {"variant": "SNP", "beta": "BETA_X"})
    with pytest.raises(InputError, match="unknown column 'bta'"):
        read_gwas(path, {"bta": "BETA"})
    bad = tmp_path / "bad.tsv"
    bad.write_text("variant\teffect_allele\tother_allele\tbeta\tse\nrs1\tA\tG\tabc\t0.01\n")
    with pytest.raises(InputError, match="column 'beta' has a non-numeric value 'abc'"):
        read_gwas(bad)
    with pytest.raises(InputError, match="no such file"):
        read_gwas(tmp_path / "nope.tsv")


def test_read_mr_sumstats_univariable_with_optional_columns(tmp_path):
    path = tmp_path / "ss.csv"
    path.write_text(
        "rsid,bx,sx,by,sy,eaf_exposure,n_exposure,n_outcome,pval_exposure\n"
        "rs1,0.1,0.01,0.05,0.02,0.3,1000,2000,1e-20\n"
        "rs2,-0.2,0.02,-0.1,0.03,0.6,1000,2000,1e-22\n"
    )
    t = read_mr_sumstats(path, {"variant": "rsid", "beta_exposure": "bx", "se_exposure": "sx", "beta_outcome": "by", "se_outcome": "sy"})
    assert t.exposures == ("exposure",) and t.beta_exposure.shape == (2, 1)
    assert t.pval_exposure[1, 0] == 1e-22 and t.n_outcome[0] == 2000 and t.eaf_outcome is None
    assert t.subset([1]).variant == ("rs2",)
    with pytest.raises(InputError, match=r"missing column\(s\) beta_exposure, se_exposure, .*--col"):
        read_mr_sumstats(path)  # rsid is recognised as the variant id; bx, sx, by, sy are not


def test_read_mr_sumstats_multivariable_and_errors(tmp_path):
    t = read_mr_sumstats(DATA / "lipids_chd_mendelianrandomization.tsv")
    assert t.exposures == ("ldlc", "hdlc", "trig") and t.beta_exposure.shape == (28, 3)
    assert t.beta_exposure[0, 1] == 0.002 and t.se_outcome[0] == 0.0286
    both = tmp_path / "both.tsv"
    both.write_text("variant\tbeta_exposure\tse_exposure\tbeta_exposure_a\tse_exposure_a\tbeta_outcome\tse_outcome\nv\t1\t1\t1\t1\t1\t1\n")
    with pytest.raises(InputError, match="use one form"):
        read_mr_sumstats(both)
    half = tmp_path / "half.tsv"
    half.write_text("variant\tbeta_exposure_a\tbeta_outcome\tse_outcome\nv\t1\t1\t1\n")
    with pytest.raises(InputError, match="exposure 'a' has no se_exposure_a column"):
        read_mr_sumstats(half)
    neg = tmp_path / "neg.tsv"
    neg.write_text("variant\tbeta_exposure\tse_exposure\tbeta_outcome\tse_outcome\nv\t1\t-1\t1\t1\n")
    with pytest.raises(InputError, match="se_exposure must be positive"):
        read_mr_sumstats(neg)
    gap = tmp_path / "gap.tsv"
    gap.write_text("variant\tbeta_exposure\tse_exposure\tbeta_outcome\tse_outcome\nv\t1\t1\tNA\t1\n")
    with pytest.raises(InputError, match="'beta_outcome' has 1 missing value"):
        read_mr_sumstats(gap)
    dup = tmp_path / "dup.tsv"
    dup.write_text("variant\tbeta_exposure\tse_exposure\tbeta_outcome\tse_outcome\nv\t1\t1\t1\t1\nv\t1\t1\t1\t1\n")
    with pytest.raises(InputError, match="duplicated variant"):
        read_mr_sumstats(dup)


def test_plink2_glm_gwas_ssf_and_twosamplemr_columns_are_recognised(tmp_path):
    # PLINK 2 --glm (linear): A1 is the allele BETA refers to; OMITTED the other (older files: REF/ALT).
    glm = tmp_path / "x.glm.linear"
    glm.write_text(
        "#CHROM\tPOS\tID\tREF\tALT\tA1\tA1_FREQ\tOBS_CT\tBETA\tSE\tT_STAT\tP\n"
        "1\t100\trs1\tA\tG\tG\t0.3\t5000\t0.1\t0.01\t10\t1e-20\n"
        "2\t200\trs2\tC\tT\tC\t0.6\t5000\t-0.2\t0.02\t-10\t1e-22\n"
    )
    g = read_gwas(glm)
    assert g.variant == ("rs1", "rs2") and g.effect_allele == ("G", "C") and g.other_allele == ("A", "T")
    assert g.eaf[1] == 0.6 and g.n[0] == 5000 and g.pval[1] == 1e-22 and g.chrom == ("1", "2") and g.pos[1] == 200
    # PLINK 2 logistic: OR with LOG(OR)_SE gives beta = log(OR).
    lg = tmp_path / "x.glm.logistic"
    lg.write_text("#CHROM\tPOS\tID\tREF\tALT\tA1\tOMITTED\tOR\tLOG(OR)_SE\tP\n1\t1\trs1\tA\tG\tG\tA\t2.0\t0.1\t0.01\n")
    assert read_gwas(lg).beta[0] == pytest.approx(np.log(2.0)) and read_gwas(lg).other_allele == ("A",)
    # GWAS-SSF (GWAS Catalog summary statistics standard).
    ssf = tmp_path / "ssf.tsv"
    ssf.write_text(
        "chromosome\tbase_pair_location\teffect_allele\tother_allele\tbeta\tstandard_error\t"
        "effect_allele_frequency\tp_value\tvariant_id\tn\n"
        "1\t100\tG\tA\t0.1\t0.01\t0.3\t1e-20\trs1\t4000\n"
    )
    s = read_gwas(ssf)
    assert s.variant == ("rs1",) and s.se[0] == 0.01 and s.eaf[0] == 0.3 and s.n[0] == 4000 and s.pos[0] == 100
    # TwoSampleMR's harmonised `dat` as one table.
    dat = tmp_path / "dat.tsv"
    dat.write_text(
        "SNP\tbeta.exposure\tse.exposure\tbeta.outcome\tse.outcome\teffect_allele.exposure\tother_allele.exposure\t"
        "samplesize.exposure\tsamplesize.outcome\n"
        "rs1\t0.1\t0.01\t0.05\t0.02\tG\tA\t1000\t2000\nrs2\t0.2\t0.01\t0.1\t0.02\tC\tT\t1000\t2000\n"
    )
    t = read_mr_sumstats(dat)
    assert t.variant == ("rs1", "rs2") and t.beta_outcome[1] == 0.1 and t.n_outcome[0] == 2000
    assert t.effect_allele == ("G", "C")
    # An explicit rename wins over recognition.
    assert read_gwas(glm, {"n": "T_STAT"}).n[0] == 10.0  # not OBS_CT


def test_sumstats_out_n_column_gives_both_sample_sizes(tmp_path):
    """`run --sumstats-out` writes one `n` (one sample for both traits): Steiger needs both sizes."""
    path = tmp_path / "ss.tsv"
    path.write_text("variant\tbeta_exposure\tse_exposure\tbeta_outcome\tse_outcome\tn\nrs1\t0.1\t0.01\t0.05\t0.02\t900\n")
    t = read_mr_sumstats(path)
    assert t.n_exposure[0] == 900 and t.n_outcome[0] == 900
