"""Phenotype tables: formats, ID joins in any row order, sample accounting, column errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from invariant_mr.errors import InputError
from invariant_mr.io.phenotypes import (
    PhenotypeColumns,
    check_environment_sizes,
    match_phenotypes,
    read_phenotype_table,
)

COLS = PhenotypeColumns(env="environment", exposure="exposure", outcome="outcome")


def _genotyped(n=60):
    ids = np.array([f"s{i:03d}" for i in range(n)], dtype=object)
    return pd.DataFrame({"FID": [f"f{i:03d}" for i in range(n)], "IID": ids})


def _table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    geno = _genotyped(n)
    return pd.DataFrame({
        "FID": geno["FID"], "IID": geno["IID"],
        "environment": np.repeat(["a", "b", "c"], n // 3),
        "exposure": rng.normal(size=n), "outcome": rng.normal(size=n),
        "age": rng.uniform(40, 70, n).round(1), "sex": rng.choice(["F", "M"], n),
        "PC1": rng.normal(size=n), "PC2": rng.normal(size=n),
    })


def test_join_in_any_row_order_aligns_to_genotype_order():
    geno, table = _genotyped(), _table()
    shuffled = table.iloc[np.random.default_rng(1).permutation(60)].reset_index(drop=True)
    m = match_phenotypes(geno, shuffled, COLS, min_samples_per_env=5)
    np.testing.assert_array_equal(m.genotype_rows, np.arange(60))
    np.testing.assert_array_equal(m.sample_ids, geno["IID"].to_numpy())
    np.testing.assert_array_equal(m.exposure, table["exposure"].to_numpy())
    np.testing.assert_array_equal(m.outcome, table["outcome"].to_numpy())
    assert m.accounting.match_key == "FID+IID"
    assert m.accounting.n_matched == 60 and m.accounting.n_analysed == 60


def test_iid_only_join_and_fid_mismatch():
    geno, table = _genotyped(), _table()
    no_fid = table.drop(columns="FID")
    assert match_phenotypes(geno, no_fid, COLS, min_samples_per_env=5).accounting.match_key == "IID"
    wrong_fid = table.assign(FID="other")
    with pytest.raises(InputError, match=r"no sample IDs overlap .*FID\+IID.*60 sample\(s\) match on IID alone"):
        match_phenotypes(geno, wrong_fid, COLS, min_samples_per_env=5)
    # The same table joins on IID alone when asked.
    assert match_phenotypes(geno, wrong_fid, COLS, id_match="iid", min_samples_per_env=5).accounting.n_matched == 60


def test_accounting_counts_every_drop_with_its_reason():
    geno, table = _genotyped(), _table()
    table = table.iloc[3:].copy()  # s000-s002: genotyped, no phenotype row
    extra = table.iloc[:4].copy()
    extra["IID"] = ["x1", "x2", "x3", "x4"]  # phenotype rows without genotypes
    table = pd.concat([table, extra], ignore_index=True)
    table.loc[table["IID"] == "s010", "exposure"] = np.nan
    table.loc[table["IID"].isin(["s011", "s012"]), "outcome"] = np.nan
    table.loc[table["IID"] == "s013", "environment"] = np.nan
    table.loc[table["IID"] == "s014", "age"] = np.nan
    table.loc[table["IID"] == "s010", "age"] = np.nan  # already dropped for exposure: counted once
    m = match_phenotypes(geno, table, PhenotypeColumns("environment", "exposure", "outcome", ("age",)),
                         min_samples_per_env=5)
    acc = m.accounting
    assert acc.n_genotyped == 60 and acc.n_phenotype_rows == 61 and acc.n_matched == 57
    assert dict(acc.dropped) == {
        "phenotype row without genotypes": 4,
        "genotyped sample without phenotype row": 3,
        "missing environment (environment)": 1,
        "missing exposure (exposure)": 1,
        "missing outcome (outcome)": 2,
        "missing covariate (age)": 1,
    }
    assert acc.n_analysed == 57 - 5 == m.exposure.size
    assert "dropped 2: missing outcome (outcome)" in acc.summary()
    dropped_more = m.subset(np.arange(m.exposure.size) >= 2, "test reason")
    assert dropped_more.accounting.dropped["test reason"] == 2
    assert dropped_more.accounting.n_analysed == 50


def test_unknown_column_suggests_close_matches():
    with pytest.raises(InputError, match=r"--exposure: column 'expsure' not found .*did you mean 'exposure'"):
        match_phenotypes(_genotyped(), _table(), PhenotypeColumns("environment", "expsure", "outcome"))
    with pytest.raises(InputError, match=r"--env-col: column 'Environment' .*did you mean 'environment'"):
        match_phenotypes(_genotyped(), _table(), PhenotypeColumns("Environment", "exposure", "outcome"))
    with pytest.raises(InputError, match=r"--covar: pattern 'PCX\*' matches no column"):
        match_phenotypes(_genotyped(), _table(), PhenotypeColumns("environment", "exposure", "outcome", ("PCX*",)))


def test_non_numeric_and_all_missing_exposure_or_outcome():
    table = _table().astype({"exposure": object})
    table.loc[5, "exposure"] = "high"
    with pytest.raises(InputError, match=r"--exposure: column 'exposure' .* is not numeric .*'high'"):
        match_phenotypes(_genotyped(), table, COLS, min_samples_per_env=5)
    table = _table()
    table["outcome"] = np.nan
    with pytest.raises(InputError, match=r"--outcome: column 'outcome' .* has no non-missing values"):
        match_phenotypes(_genotyped(), table, COLS, min_samples_per_env=5)


def test_small_environment_is_an_error():
    table = _table()
    table.loc[:3, "environment"] = "tiny"
    with pytest.raises(InputError, match=r"fewer than 10 samples after joining phenotypes: 'tiny' \(n=4\)"):
        match_phenotypes(_genotyped(), table, COLS, min_samples_per_env=10)
    with pytest.raises(InputError, match="need at least 2 environments"):
        check_environment_sizes(np.array(["a"] * 30), 5, "environment", "here")


def test_duplicate_ids_are_an_error():
    table = pd.concat([_table(), _table().iloc[[7]]], ignore_index=True)
    with pytest.raises(InputError, match="appear in more than one row"):
        match_phenotypes(_genotyped(), table, COLS, min_samples_per_env=5)


def test_covariates_text_becomes_indicators_and_globs_expand():
    table = _table()
    m = match_phenotypes(_genotyped(), table, PhenotypeColumns("environment", "exposure", "outcome", ("sex", "PC*")),
                         min_samples_per_env=5)
    assert m.covariate_names == ("sex[M]", "PC1", "PC2")
    np.testing.assert_array_equal(m.covariates[:, 0], (table["sex"] == "M").to_numpy(dtype=float))
    np.testing.assert_array_equal(m.covariates[:, 2], table["PC2"].to_numpy())


def test_same_column_in_two_roles():
    with pytest.raises(InputError, match="used both as --exposure and --covar"):
        PhenotypeColumns("environment", "exposure", "outcome", ("exposure",))


@pytest.mark.parametrize("ext", ["csv", "tsv", "txt", "parquet"])
def test_formats_read_identically(tmp_path, ext):
    table = _table()
    table["IID"] = [f"00{i}" for i in range(60)]  # leading zeros must survive
    path = tmp_path / f"pheno.{ext}"
    if ext == "parquet":
        import pyarrow  # noqa: F401  (a test requirement: fail, do not skip, without it)
        table.to_parquet(path)
    else:
        table.to_csv(path, sep={"csv": ",", "tsv": "\t", "txt": " "}[ext], index=False, float_format="%.17g")
    back = read_phenotype_table(path)
    assert list(back["IID"][:2]) == ["000", "001"]
    geno = pd.DataFrame({"FID": table["FID"], "IID": table["IID"]})
    m = match_phenotypes(geno, back, COLS, min_samples_per_env=5)
    np.testing.assert_array_equal(m.exposure, table["exposure"].to_numpy())


def test_unreadable_tables(tmp_path):
    with pytest.raises(InputError, match="phenotype file not found"):
        read_phenotype_table(tmp_path / "nope.tsv")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(InputError, match="is empty"):
        read_phenotype_table(empty)
    header_only = tmp_path / "header.tsv"
    header_only.write_text("IID\texposure\n")
    with pytest.raises(InputError, match="no rows"):
        read_phenotype_table(header_only)
