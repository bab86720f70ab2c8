"""invariant_autoencoder on streamed genotypes: minibatches over every row, never the n x p float matrix."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from bed_reader import to_bed
from genetic_fixtures import write_study
from genotype_writers import Fileset, write_pgen

from invariant_mr.cli import main
from invariant_mr.errors import InputError
from invariant_mr.instruments.autoencoder import InvariantAutoencoder
from invariant_mr.instruments.minibatches import ArrayRows, SubsetRows
from invariant_mr.io.genotype_sources import open_genotypes
from invariant_mr.io.int8_cache import GenotypeFileRows, Int8GenotypeCache, training_rows
from invariant_mr.io.streamed_genotypes import StreamedGenotypes
from invariant_mr.io.streamed_qc import read_qc_dosages, streamed_genotype_qc

COLUMNS = ["estimate", "se", "ci_low", "ci_high", "first_stage_f", "pvalue"]
#: A short training, so that the tests are fast; the route is the same at any length.
SHORT = ["--epochs", "5", "--warmup-epochs", "1", "--batch-size", "32", "--invariance-permutations", "19",
         "--diagnostic-permutations", "19"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("learn"), n_per_env=(160, 160, 160), p=10, missing_rate=0.01,
                       seed=11)


def _run(study, out, *extra, genotypes=None, method="invariant_autoencoder"):
    genotypes = genotypes or ["--bfile", str(study.prefix)]
    code = main(["run", *genotypes, "--pheno", str(study.pheno), "--env-col", "environment", "--exposure",
                 "exposure", "--outcome", "outcome", "--covar", "age,sex", "--out", str(out), "--quiet",
                 "--no-report", "--methods", method, *SHORT, *extra])
    assert code == 0
    table = pd.read_csv(out / "estimates.tsv", sep="\t").set_index(["method", "scope"])
    return table, json.loads((out / "results.json").read_text())


def test_streamed_route_trains_on_every_row_and_equals_the_in_memory_fit(study, tmp_path):
    """Same folds, seeds and rows in the same order: the minibatch route over the int8 cache gives the
    in-memory estimates (the inputs differ only by float32 rounding of the input map)."""
    mem, _ = _run(study, tmp_path / "mem", "--streaming", "off")
    got, res = _run(study, tmp_path / "str", "--streaming", "on", "--subsample-rows", "100")
    assert list(got.index) == list(mem.index)
    x, y = got[COLUMNS].to_numpy(float), mem[COLUMNS].to_numpy(float)
    assert np.array_equal(np.isnan(x), np.isnan(y))
    ok = ~np.isnan(x)
    assert np.max(np.abs(x[ok] - y[ok]) / np.maximum(1.0, np.abs(y[ok]))) < 1e-4
    n = res["provenance"]["samples"]["n_analysed"]
    assert n > 100  # more rows than the subsample: the learner did not use it
    pooled = next(e for e in res["estimates"] if e["method"] == "invariant_autoencoder" and e["scope"] == "pooled")
    extra = pooled["extra"]
    assert pooled["n"] == n and extra["training_rows"] == n
    assert extra["route"] == f"minibatches from the int8 cache ({n:,} rows)"
    # Each row trains the encoder of every fold but its own (2 folds: exactly one), as a gradient or validation row.
    assert sum(t["train_rows"] + t["val_rows"] for t in extra["training"]) == n
    assert "seeded subset" in extra["diagnostics_rows"]
    assert res["provenance"]["streamed_passes"]["routes"]["invariant_autoencoder"].startswith("minibatches")


def test_in_sample_variant_trains_on_every_row_too(study, tmp_path):
    method = "invariant_autoencoder_insample"
    mem, _ = _run(study, tmp_path / "mem", "--streaming", "off", method=method)
    got, res = _run(study, tmp_path / "str", "--streaming", "on", "--subsample-rows", "100", method=method)
    assert np.allclose(got[COLUMNS].to_numpy(float), mem[COLUMNS].to_numpy(float), rtol=1e-4, atol=1e-6,
                       equal_nan=True)
    n = res["provenance"]["samples"]["n_analysed"]
    extra = next(e for e in res["estimates"] if e["scope"] == "pooled")["extra"]
    assert extra["route"] == f"minibatches from the int8 cache ({n:,} rows)" and extra["training_rows"] == n
    assert extra["training"]["train_rows"] + extra["training"]["val_rows"] == n


def test_the_polynomial_method_says_why_it_keeps_the_subsample():
    from types import SimpleNamespace

    from invariant_mr.methods.streamed import STREAMED_METHODS, subsample_extra

    data = SimpleNamespace(n=50_000, subsample_rows=20_000, seed=3)
    extra = subsample_extra(data, "invariant_polynomial")
    assert extra["route"] == "subsample (20,000 of 50,000 rows, seed 3)" and extra["training_rows"] == 20_000
    assert "full-batch L-BFGS" in extra["subsample_why"]
    assert "training_rows" not in subsample_extra(data, "tsls_pcs")
    assert "invariant_polynomial" not in STREAMED_METHODS


def test_dosage_files_train_from_a_float32_cache(study, tmp_path):
    """A dosage PLINK 2 copy cannot be cached as int8 (it would round): a float32 cache, same estimates."""
    p = study.genotypes.shape[1]
    fs = Fileset(
        dosages=study.genotypes, fid=study.fid, iid=study.iid,
        variants=pd.DataFrame({"variant_id": study.variant_ids, "chrom": ["1"] * p,
                               "pos": [10_000 * (j + 1) for j in range(p)], "ref": ["G"] * p, "alt": ["A"] * p}),
    )
    pfile = write_pgen(fs, tmp_path / "dos", dosages=study.genotypes)
    ref, _ = _run(study, tmp_path / "bed", "--streaming", "on")
    got, res = _run(study, tmp_path / "pgen", "--streaming", "on", genotypes=["--pfile", str(pfile)])
    extra = next(e for e in res["estimates"] if e["scope"] == "pooled")["extra"]
    assert extra["route"].startswith("minibatches from the float32 cache (")
    assert np.allclose(got[COLUMNS].to_numpy(float), ref[COLUMNS].to_numpy(float), rtol=1e-4, atol=1e-6,
                       equal_nan=True)


def test_streamed_route_input_errors_are_one_line(study, tmp_path, capsys):
    base = ["run", "--bfile", str(study.prefix), "--pheno", str(study.pheno), "--env-col", "environment",
            "--exposure", "exposure", "--outcome", "outcome", "--quiet", "--no-report", "--streaming", "on",
            "--methods", "invariant_autoencoder", *SHORT]
    cases = [(["--warm-start", "linear"], "warm-start linear"), (["--n-folds", "1"], "n-folds")]
    for i, (extra, message) in enumerate(cases):
        assert main([*base, "--out", str(tmp_path / f"bad{i}"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_row_sources_refuse_bad_input():
    Z = np.random.default_rng(0).normal(size=(40, 3))
    rows = ArrayRows(Z)
    with pytest.raises(InputError, match="outside"):
        SubsetRows(rows, [0, 40])
    assert np.array_equal(SubsetRows(rows, [5, 2]).rows([1, 0]), Z[[2, 5]].astype(np.float32))
    env = np.repeat(["a", "b"], 20)
    model = InvariantAutoencoder(hidden=4, epochs=1, warmup_epochs=0, batch_size=8, lam_rel=0, device="cpu")
    model.fit(rows, env)
    with pytest.raises(InputError, match="3 columns"):
        model.transform_all(ArrayRows(Z[:, :2]))
    bad = Z.copy()
    bad[7, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        model.transform_all(ArrayRows(bad))
    with pytest.raises(InputError, match="NaN"):
        InvariantAutoencoder(epochs=1, device="cpu").fit(ArrayRows(bad), env)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 20,000 x 200 hard-call PLINK fileset in two environments, as the analysed stream."""
    d = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(3)
    n, p = 20_000, 200
    env = np.repeat(np.array(["a", "b"], dtype=object), n // 2)
    freq = np.where(env[:, None] == "a", 0.3, 0.4)
    G = rng.binomial(2, np.broadcast_to(freq, (n, p))).astype(np.float32)
    to_bed(d / "g.bed", G, properties={"iid": [f"i{i}" for i in range(n)], "sid": [f"v{j}" for j in range(p)]})
    del G
    source = open_genotypes(bfile=d / "g")
    rows = np.arange(n)
    qc = streamed_genotype_qc(source, rows, env)
    return StreamedGenotypes.from_qc(source, rows, qc, read_rows=2_000), env[qc.rows], d


def test_the_learner_route_never_holds_the_n_by_p_matrix(wide, tmp_path):
    """Cache, moment pass, minibatch training of one fold and the streamed transform of every row, on
    20,000 x 200: the numpy peak (5.5 MiB when written) stays under half the float32 matrix (15.3 MiB),
    a quarter of the float64 one; it is a few blocks, whatever n (tracemalloc; torch's allocations are
    outside it, and hold batches and weights only)."""
    genotypes, env, _ = wide
    n, p = genotypes.n, genotypes.p
    exposure = np.random.default_rng(1).normal(size=n)
    train = np.flatnonzero(np.arange(n) % 2 == 0)
    tracemalloc.start()
    try:
        rows, what = training_rows(genotypes, tmp_path)
        model = InvariantAutoencoder(hidden=16, epochs=1, warmup_epochs=0, batch_size=64, device="cpu", seed=2)
        model.fit(SubsetRows(rows, train), env[train], exposure=exposure[train])
        hv, hw = model.transform_all(rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(rows, Int8GenotypeCache) and what == "the int8 cache"
    assert model.training_summary_["train_rows"] + model.training_summary_["val_rows"] == train.size
    assert hw.shape == (n, 2) and hv.shape == (n, 2) and np.isfinite(hw).all()
    assert peak < n * p * 4 / 2, f"peak {peak / 2**20:.1f} MiB"
    # The streamed transform is the in-memory transform of the same rows.
    some = np.arange(0, n, 97)
    Z = read_qc_dosages(genotypes.source, np.arange(n), streamed_genotype_qc(genotypes.source, np.arange(n), env))
    assert np.allclose(hw[some], model.transform(Z[some]), atol=1e-4)


def test_genotype_rows_read_the_analysed_rows(wide):
    """The fallback source for genotypes that are no file (`read_rows_at` of any analysed matrix)."""
    genotypes, _, _ = wide
    rows = GenotypeFileRows(genotypes)
    some = np.array([19_999, 3, 512])
    assert rows.rows(some).dtype == np.float32
    assert np.array_equal(rows.rows(some), genotypes.read_rows_at(some).astype(np.float32))


def test_float32_cache_holds_dosages_exactly(tmp_path):
    """Fractional dosages with missing calls: the float32 cache gives the imputed rows the QC reader gives."""
    from genotype_writers import make_fileset

    fs = make_fileset(n=40, p=5, missing_rate=0.1, seed=2)
    dos = np.clip(fs.dosages + 0.25, 0, 2)
    source = open_genotypes(pfile=write_pgen(fs, tmp_path / "d", dosages=dos))
    rows = np.arange(40)
    env = np.repeat(np.array(["a", "b"], dtype=object), 20)
    qc = streamed_genotype_qc(source, rows, env)
    genotypes = StreamedGenotypes.from_qc(source, rows, qc, read_rows=7)
    cache, what = training_rows(genotypes, tmp_path)
    assert what == "the float32 cache" and cache.path.stat().st_size < 4 * genotypes.n * genotypes.p + 1024
    Z = read_qc_dosages(source, rows, qc)
    order = np.random.default_rng(0).permutation(genotypes.n)
    assert np.allclose(cache.rows(order), Z[order], atol=1e-6)
    with pytest.raises(InputError, match="round"):
        Int8GenotypeCache.build(genotypes, tmp_path)
