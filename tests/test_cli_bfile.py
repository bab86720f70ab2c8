"""`invariant-mr run --bfile/--npy --pheno`: outputs, config files, table/PLINK agreement, every bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from genetic_fixtures import write_study

from invariant_mr.cli import main

FAST_METHODS = "ols,tsls_all_env,liml_all_env,invariant_linear"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("cli"), n_per_env=(120, 120, 120), p=10, missing_rate=0.004, seed=11)


def _base(study, out, *extra):
    return ["run", "--bfile", str(study.prefix), "--pheno", str(study.pheno), "--env-col", "environment",
            "--exposure", "exposure", "--outcome", "outcome", "--out", str(out), "--quiet",
            "--methods", FAST_METHODS, "--signal-rank", "10", *extra]


def _estimates(path):
    return pd.read_csv(path / "estimates.tsv", sep="\t").set_index(["method", "scope"])


def test_run_bfile_writes_every_output(study, tmp_path):
    out = tmp_path / "res"
    code = main(_base(study, out, "--covar", "age,sex,PC*", "--instruments-out"))
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "estimates.tsv", "forest.png", "instruments.tsv", "qc.tsv", "report.html", "results.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no staging directory left
    prov = json.loads((out / "results.json").read_text())["provenance"]
    assert prov["qc"]["n_variants_in"] == 10
    assert prov["samples"]["n_genotyped"] == 360 and prov["samples"]["match_key"] == "FID+IID"
    assert prov["parameters"]["dosage_of"] == "A1 (.bim column 5)"
    assert prov["parameters"]["covariate_columns"] == ["age", "sex[M]", "PC1"]
    assert {i["path"].rsplit(".", 1)[-1] for i in prov["inputs"]} == {"bed", "bim", "fam", "tsv"}
    assert all(len(i["sha256"]) == 64 and i["bytes"] > 0 for i in prov["inputs"])
    qc = pd.read_csv(out / "qc.tsv", sep="\t")
    assert list(qc["variant_id"]) == study.variant_ids and set(qc["counted_allele"]) == {"A"}
    inst = pd.read_csv(out / "instruments.tsv", sep="\t")
    assert len(inst) == prov["samples"]["n_analysed"]
    assert "report.html" in [p.name for p in out.iterdir()]


def test_table_and_plink_give_the_same_estimates(tmp_path):
    """The same complete data as a table (rows shuffled) and as PLINK + phenotypes: estimates agree to 1e-8."""
    s = write_study(tmp_path / "data", n_per_env=(150, 150, 150), p=8, missing_rate=0.0, seed=21)
    table = s.pheno_table.copy()
    row_of = {iid: i for i, iid in enumerate(s.iid)}
    G = s.genotypes[[row_of[i] for i in table["IID"]]]
    for j, vid in enumerate(s.variant_ids):
        table[vid] = G[:, j]
    table_path = tmp_path / "table.tsv"
    table.to_csv(table_path, sep="\t", index=False, float_format="%.17g")
    common = ["--env", "environment", "--exposure", "exposure", "--outcome", "outcome", "--covariates", "age,PC1",
              "--methods", FAST_METHODS, "--signal-rank", "8", "--quiet", "--no-report",
              # A fixed number of invariant directions: the automatic choice is a permutation test whose
              # draws depend on the row order, and the table's rows are shuffled relative to the .fam.
              "--n-components", "4",
              # Likewise the direction bootstrap's resamples are drawn by row position.
              "--direction-bootstrap", "0"]
    assert main(["run", "--table", str(table_path), "--instruments", "rs*", "--id-column", "IID",
                 "--out", str(tmp_path / "t"), *common]) == 0
    assert main(["run", "--bfile", str(s.prefix), "--pheno", str(s.pheno), "--out", str(tmp_path / "p"), *common]) == 0
    a, b = _estimates(tmp_path / "t"), _estimates(tmp_path / "p")
    assert list(a.index) == list(b.index) and len(a) >= 12
    assert a.loc[("invariant_linear", "pooled"), "n_instruments"] == 4
    for col in ("estimate", "se", "ci_low", "ci_high", "first_stage_f"):
        np.testing.assert_allclose(b[col].to_numpy(float), a[col].to_numpy(float), rtol=0, atol=1e-8, err_msg=col)


def test_npy_input_matches_plink(study, tmp_path):
    np.save(tmp_path / "g.npy", study.genotypes)
    samples = tmp_path / "samples.txt"
    samples.write_text("".join(f"{f} {i}\n" for f, i in zip(study.fid, study.iid)))
    variants = tmp_path / "variants.txt"
    variants.write_text("\n".join(study.variant_ids) + "\n")
    assert main(_base(study, tmp_path / "p", "--no-report")) == 0
    npy_args = _base(study, tmp_path / "n", "--no-report")
    npy_args[1:3] = ["--npy", str(tmp_path / "g.npy"), "--npy-samples", str(samples), "--npy-variants", str(variants)]
    assert main(npy_args) == 0
    a, b = _estimates(tmp_path / "p"), _estimates(tmp_path / "n")
    np.testing.assert_allclose(b["estimate"].to_numpy(float), a["estimate"].to_numpy(float), atol=1e-10)


def test_extract_and_region_restrict_the_variants(study, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("rs1001\nrs1003\nrs1004\nrs1009\nnot_there\n")
    assert main(_base(study, tmp_path / "e", "--extract", str(ids), "--region", "1:20000-90000", "--no-report",
                      "--signal-rank", "2")) == 0
    qc = pd.read_csv(tmp_path / "e" / "qc.tsv", sep="\t")
    assert list(qc["variant_id"]) == ["rs1001", "rs1003", "rs1004"]
    sel = json.loads((tmp_path / "e" / "results.json").read_text())["provenance"]["variant_selection"]
    assert sel == {"n_available": 10, "n_selected": 3, "n_requested_ids": 5, "n_ids_not_found": 1,
                   "region": "1:20000-90000", "n_excluded": 0, "chromosomes": None}


def test_config_file_and_command_line_override(study, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        f'[input]\nbfile = "{study.prefix}"\npheno = "{study.pheno.name}"\nenv-col = "environment"\n'
        'exposure = "exposure"\noutcome = "outcome"\ncovar = ["age", "sex"]\n'
        '[qc]\nmaf = 0.5\n'
        f'[run]\nmethods = ["ols", "tsls_all_env"]\nseed = 3\nreport = false\nquiet = true\nout = "from_config"\n'
    )
    # pheno is relative to the config's directory; it is not there, so copy it beside the config.
    (tmp_path / study.pheno.name).write_bytes(study.pheno.read_bytes())
    # The file's --maf 0.5 would remove every variant; the command line overrides it.
    assert main(["run", "--config", str(config), "--maf", "0.01"]) == 0
    out = tmp_path / "from_config"
    assert sorted(p.name for p in out.iterdir()) == ["estimates.tsv", "forest.png", "qc.tsv", "results.json"]
    prov = json.loads((out / "results.json").read_text())["provenance"]
    assert prov["seed"] == 3 and prov["parameters"]["methods"] == ["ols", "tsls_all_env"]
    assert prov["parameters"]["qc"]["min_maf"] == 0.01
    assert prov["parameters"]["covariates"] == ["age", "sex"]


def test_config_errors(study, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('exposre = "exposure"\n')
    assert main(["run", "--config", str(bad)]) != 0
    assert "unknown option(s) 'exposre' (did you mean 'exposure'" in capsys.readouterr().err
    bad.write_text("exposure = \n")
    assert main(["run", "--config", str(bad)]) != 0
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "none.toml")]) != 0
    assert "none.toml: file not found" in capsys.readouterr().err


def _broken_copy(study, directory, drop_bim_lines=0):
    directory.mkdir()
    for ext in ("bed", "bim", "fam"):
        (directory / f"geno.{ext}").write_bytes(study.prefix.with_suffix(f".{ext}").read_bytes())
    if drop_bim_lines:
        bim = directory / "geno.bim"
        bim.write_text("".join(bim.read_text().splitlines(keepends=True)[:-drop_bim_lines]))
    return directory / "geno"


def _pheno_variant(study, directory, **changes):
    table = study.pheno_table.copy()
    for column, values in changes.items():
        table[column] = values
    path = directory / "pheno_variant.tsv"
    table.to_csv(path, sep="\t", index=False)
    return path


BAD_INPUTS = {
    "missing bed": (lambda s, d: {"--bfile": str(d / "nowhere" / "geno")}, r"PLINK \.bed file not found"),
    "missing pheno": (lambda s, d: {"--pheno": str(d / "nope.tsv")}, r"phenotype file not found: .*nope\.tsv"),
    "bim does not match bed": (
        lambda s, d: {"--bfile": str(_broken_copy(s, d / "b", drop_bim_lines=2))},
        r"has \d+ bytes but geno\.bim \(8 variants\) .* do not belong to this \.bed"),
    "no overlapping IDs": (
        lambda s, d: {"--pheno": str(_pheno_variant(s, d, IID=[f"other{i}" for i in range(360)]))},
        r"no sample IDs overlap between the genotypes and .*FID\+IID"),
    "unknown column": (lambda s, d: {"--exposure": "expsure"},
                       r"--exposure: column 'expsure' not found .*did you mean 'exposure'\?"),
    "non-numeric outcome": (
        lambda s, d: {"--pheno": str(_pheno_variant(s, d, outcome=["high", "low"] * 180))},
        r"--outcome: column 'outcome' .* is not numeric"),
    "all-missing exposure": (
        lambda s, d: {"--pheno": str(_pheno_variant(s, d, exposure=[np.nan] * 360))},
        r"--exposure: column 'exposure' .* has no non-missing values"),
    "small environment": (
        lambda s, d: {"--pheno": str(_pheno_variant(
            s, d, environment=np.where(np.arange(360) < 5, "tiny", s.pheno_table["environment"])))},
        r"environment\(s\) with fewer than 20 samples after joining phenotypes: 'tiny' \(n=5\)"),
    "all variants removed by QC": (lambda s, d: {"--maf-env": "0.5"},
                                   r"QC removed all 10 variants \(10 MAF < 0.5 in an environment \(--maf-env\)\)"),
    "bad region": (lambda s, d: {"--region": "1:50-10"}, r"--region '1:50-10': start 50 is after end 10"),
    "extract matches nothing": (
        lambda s, d: {"--extract": str((d / "ids.txt").write_text("rsX\n") and d / "ids.txt")},
        r"--extract: none of the 1 listed variant IDs"),
    "no phenotype file": (lambda s, d: {"--pheno": None}, r"--pheno FILE is required"),
    "table and bfile together": (lambda s, d: {"--table": str(s.pheno)}, r"--table cannot be combined"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_cleanly(study, tmp_path, capsys, case):
    make, message = BAD_INPUTS[case]
    work = tmp_path / "work"
    work.mkdir()
    args = _base(study, tmp_path / "out")
    for flag, value in make(study, work).items():
        if flag in args:
            i = args.index(flag)
            del args[i:i + 2]
        if value is not None:
            args += [flag, value]
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("invariant-mr: error: ") and len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(message, err), err
    # Nothing half-written: no output directory and no staging directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_existing_output_directory_is_refused_unless_overwrite(study, tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert main(_base(study, out, "--no-report")) != 0
    assert "already exists (use --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(_base(study, out, "--no-report", "--overwrite")) == 2  # not a previous run's output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    out.rmdir()
    assert main(_base(study, out, "--no-report")) == 0
    assert main(_base(study, out, "--no-report", "--overwrite")) == 0
    assert (out / "qc.tsv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
