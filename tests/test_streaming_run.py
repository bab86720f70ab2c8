"""`run` on streamed genotypes: the same estimates as in memory, every file format, and Dask workers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from genetic_fixtures import write_study
from genotype_writers import Fileset, write_pgen, write_vcf

from invariant_mr.cli import main

STATS_METHODS = "ols,tsls_all,tsls_all_env,liml_all_env,invariant_linear,ivw,mr_egger,tsht"
COLUMNS = ["estimate", "se", "ci_low", "ci_high", "first_stage_f", "ar_ci_low", "ar_ci_high", "pvalue"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("stream"), n_per_env=(150, 150, 150), p=10, missing_rate=0.01, seed=5)


def _run(study, out, *extra, genotypes=None):
    genotypes = genotypes or ["--bfile", str(study.prefix)]
    code = main(["run", *genotypes, "--pheno", str(study.pheno), "--env-col", "environment",
                 "--exposure", "exposure", "--outcome", "outcome", "--covar", "age,sex,PC1", "--out", str(out),
                 "--quiet", "--signal-rank", "3", "--direction-bootstrap", "0", "--no-report", *extra])
    assert code == 0
    table = pd.read_csv(out / "estimates.tsv", sep="\t").set_index(["method", "scope"])
    return table, json.loads((out / "results.json").read_text())


def _assert_same(a: pd.DataFrame, b: pd.DataFrame, tol: float):
    assert list(a.index) == list(b.index)
    x, y = a[COLUMNS].to_numpy(float), b[COLUMNS].to_numpy(float)
    assert np.array_equal(np.isnan(x), np.isnan(y))
    ok = ~np.isnan(x)
    assert np.max(np.abs(x[ok] - y[ok]) / np.maximum(1.0, np.abs(y[ok]))) < tol


def test_streamed_estimates_equal_in_memory(study, tmp_path):
    """Every method with a statistics route gives the in-memory numbers (robust SEs, AR sets, F) to 1e-8."""
    mem, _ = _run(study, tmp_path / "mem", "--methods", STATS_METHODS, "--streaming", "off",
                  "--sumstats-out", str(tmp_path / "mem.tsv"))
    got, res = _run(study, tmp_path / "str", "--methods", STATS_METHODS, "--streaming", "on",
                    "--sumstats-out", str(tmp_path / "str.tsv"))
    assert set(mem.index.get_level_values(0)) == set(STATS_METHODS.split(","))
    assert np.isfinite(mem.loc[("invariant_linear", "pooled"), "estimate"])
    _assert_same(got, mem, 1e-8)
    prov = res["provenance"]
    assert prov["parameters"]["streaming"]["streamed"] is True
    routes = prov["streamed_passes"]["routes"]
    assert routes["tsls_all_env"] == "sufficient statistics" and routes["ols"].startswith("row vectors")
    # tsls_all_env and liml_all_env share one second pass; the first pass runs once.
    kinds = [p["kind"] for p in prov["streamed_passes"]["passes"]]
    assert kinds.count("CrossProductKernel") == 1
    for est in res["estimates"]:
        assert est["extra"]["route"] == routes[est["method"]]
    # The same per-variant statistics, each with its counted allele.
    a, b = pd.read_csv(tmp_path / "str.tsv", sep="\t"), pd.read_csv(tmp_path / "mem.tsv", sep="\t")
    assert list(a.columns[:3]) == ["variant", "counted_allele", "other_allele"]
    assert set(a["counted_allele"]) == {"A"} and set(a["other_allele"]) == {"G"}
    num = ["beta_exposure", "se_exposure", "beta_outcome", "se_outcome"]
    assert np.allclose(a[num], b[num], rtol=1e-8, atol=0)


def test_methods_without_a_statistics_route_use_the_seeded_subsample(study, tmp_path):
    got, res = _run(study, tmp_path / "sub", "--methods", "tsls_all_env,tsls_pcs", "--streaming", "on",
                    "--subsample-rows", "300", "--n-pcs", "2", "--covar", "age,sex")
    routes = res["provenance"]["streamed_passes"]["routes"]
    n = res["provenance"]["samples"]["n_analysed"]
    assert routes["tsls_pcs"] == f"subsample (300 of {n:,} rows, seed 0)"
    assert got.loc[("tsls_pcs", "pooled"), "n"] == 300
    assert got.loc[("tsls_all_env", "pooled"), "n"] == n
    again, _ = _run(study, tmp_path / "sub2", "--methods", "tsls_pcs", "--streaming", "on",
                    "--subsample-rows", "300", "--n-pcs", "2", "--covar", "age,sex")
    assert again.loc[("tsls_pcs", "pooled"), "estimate"] == got.loc[("tsls_pcs", "pooled"), "estimate"]


def test_streaming_auto_follows_the_memory_budget(study, tmp_path):
    _, small = _run(study, tmp_path / "a", "--methods", "tsls_all_env", "--streaming", "auto")
    _, tight = _run(study, tmp_path / "b", "--methods", "tsls_all_env", "--streaming", "auto", "--memory-gb", "1e-6")
    assert small["provenance"]["parameters"]["streaming"]["streamed"] is False
    assert tight["provenance"]["parameters"]["streaming"]["streamed"] is True
    assert "exceed" in tight["provenance"]["parameters"]["streaming"]["reason"]


def test_pfile_and_vcf_copies_give_the_bfile_estimates(study, tmp_path):
    """The bar of issue 12: --pfile and --vcf copies of a fileset give the --bfile estimates to 1e-8."""
    p = study.genotypes.shape[1]
    fs = Fileset(
        dosages=study.genotypes, fid=study.fid, iid=study.iid,
        variants=pd.DataFrame({"variant_id": study.variant_ids, "chrom": ["1"] * p,
                               "pos": [10_000 * (j + 1) for j in range(p)], "ref": ["G"] * p, "alt": ["A"] * p}),
    )
    pfile = write_pgen(fs, tmp_path / "copy")
    vcf = write_vcf(fs, tmp_path / "copy.vcf")
    for streaming in ("off", "on"):
        ref, ref_res = _run(study, tmp_path / f"bfile-{streaming}", "--methods", STATS_METHODS, "--streaming", streaming)
        for flag, path in (("--pfile", pfile), ("--vcf", vcf)):
            got, res = _run(study, tmp_path / f"{flag[2:]}-{streaming}", "--methods", STATS_METHODS,
                            "--streaming", streaming, genotypes=[flag, str(path)])
            _assert_same(got, ref, 1e-8)
            genotypes = res["provenance"]["genotypes"]
            assert genotypes["format"] == {"--pfile": "plink2", "--vcf": "vcf"}[flag]
            assert "ALT" in genotypes["counted_allele"]
            # VCF names no families: samples are joined on IID.
            assert res["provenance"]["samples"]["match_key"] == ("IID" if flag == "--vcf" else "FID+IID")
        assert "A1" in ref_res["provenance"]["genotypes"]["counted_allele"]


def test_extract_and_region_apply_to_every_format(study, tmp_path):
    p = study.genotypes.shape[1]
    fs = Fileset(dosages=study.genotypes, fid=study.fid, iid=study.iid, variants=pd.DataFrame({
        "variant_id": study.variant_ids, "chrom": ["1"] * p, "pos": [10_000 * (j + 1) for j in range(p)],
        "ref": ["G"] * p, "alt": ["A"] * p}))
    vcf = write_vcf(fs, tmp_path / "copy.vcf")
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(study.variant_ids[:6]) + "\n")
    a, ra = _run(study, tmp_path / "x1", "--methods", "tsls_all_env", "--extract", str(ids))
    b, rb = _run(study, tmp_path / "x2", "--methods", "tsls_all_env", "--extract", str(ids), "--streaming", "on",
                 genotypes=["--vcf", str(vcf)])
    _assert_same(b, a, 1e-8)
    assert rb["provenance"]["variant_selection"]["n_selected"] == 6 == ra["provenance"]["qc"]["n_variants_in"]
    c, rc = _run(study, tmp_path / "x3", "--methods", "tsls_all_env", "--region", "1:10000-60000",
                 genotypes=["--vcf", str(vcf)])
    assert rc["provenance"]["qc"]["n_variants_in"] == 6
    _assert_same(c, a, 1e-8)


def test_dask_workers_give_the_local_estimates_and_do_the_work(study, tmp_path):
    """--workers 2 (a LocalCluster of 2 processes): the streamed passes run as Dask reductions on the
    workers; every number equals the local streamed run to 1e-10."""
    methods = "tsls_all_env,liml_all_env,ivw,tsht"
    local, _ = _run(study, tmp_path / "local", "--methods", methods, "--streaming", "on")
    dask, res = _run(study, tmp_path / "dask", "--methods", methods, "--workers", "2")
    _assert_same(dask, local, 1e-10)
    record = res["provenance"]["streamed_passes"]["dask"]
    assert len(record["workers"]) == 2
    assert set(record["chunk_tasks_per_worker"]) <= set(record["workers"])
    assert sum(record["chunk_tasks_per_worker"].values()) >= 4
    assert all(p["where"].startswith("dask") for p in res["provenance"]["streamed_passes"]["passes"]
               if p["kind"] != "projection")


def test_bad_scale_options_are_one_line_errors(study, tmp_path, capsys):
    base = ["run", "--bfile", str(study.prefix), "--pheno", str(study.pheno), "--env-col", "environment",
            "--exposure", "exposure", "--outcome", "outcome", "--quiet", "--methods", "tsls_all_env"]
    cases = [
        (["--streaming", "off", "--workers", "2"], "drop --streaming off"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "give one of them"),
        (["--streaming", "on", "--methods", "invariant_linear", "--direction-bootstrap", "5"], "direction-bootstrap"),
        (["--streaming", "on", "--cluster", "FID"], "cluster"),
    ]
    for i, (extra, message) in enumerate(cases):
        assert main([*base, "--out", str(tmp_path / f"bad{i}"), *extra]) == 2
        assert message in capsys.readouterr().err
    table = tmp_path / "t.tsv"
    study.pheno_table.assign(z1=0.0).to_csv(table, sep="\t", index=False)
    code = main(["run", "--table", str(table), "--env", "environment", "--exposure", "exposure", "--outcome",
                 "outcome", "--instruments", "z1", "--workers", "2", "--out", str(tmp_path / "t"), "--quiet"])
    assert code == 2 and "streams genotype files" in capsys.readouterr().err


def test_min_info_filters_imputed_variants_through_run(study, tmp_path, capsys):
    p = study.genotypes.shape[1]
    fs = Fileset(dosages=study.genotypes, fid=study.fid, iid=study.iid, variants=pd.DataFrame({
        "variant_id": study.variant_ids, "chrom": ["1"] * p, "pos": [10_000 * (j + 1) for j in range(p)],
        "ref": ["G"] * p, "alt": ["A"] * p}))
    info = np.where(np.arange(p) < 7, 0.95, 0.3)
    vcf = write_vcf(fs, tmp_path / "imputed.vcf", info=info)
    got, res = _run(study, tmp_path / "info", "--methods", "tsls_all_env", "--min-info", "0.8",
                    genotypes=["--vcf", str(vcf)])
    genotypes = res["provenance"]["genotypes"]
    assert genotypes["min_info"] == 0.8 and genotypes["n_removed_by_info"] == 3
    assert res["provenance"]["qc"]["n_variants_in"] == 7
    qc = pd.read_csv(tmp_path / "info" / "qc.tsv", sep="\t")
    assert (qc["info"] >= 0.8).all()
    assert main(["run", "--bfile", str(study.prefix), "--pheno", str(study.pheno), "--env-col", "environment",
                 "--exposure", "exposure", "--outcome", "outcome", "--min-info", "0.8", "--quiet",
                 "--out", str(tmp_path / "noinfo")]) == 2
    assert "carries no imputation INFO" in capsys.readouterr().err
