"""A streamed battery reads the genotypes twice: the first pass, then one second pass that carries
every robust meat and invariant_linear's projection (issue 23)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from genetic_fixtures import write_study

from invariant_mr.cli import main
from invariant_mr.passes import DaskPasses, LocalPasses, ProjectionKernel, RowVectors, Together, npy_chunks

METHODS = "tsls_all_env,liml_all_env,invariant_linear,ivw"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("onepass"), n_per_env=(150, 150, 150), p=10, missing_rate=0.01, seed=5)


def _run(study, out, *extra):
    code = main(["run", "--bfile", str(study.prefix), "--pheno", str(study.pheno), "--env-col", "environment",
                 "--exposure", "exposure", "--outcome", "outcome", "--covar", "age,sex,PC1", "--out", str(out),
                 "--quiet", "--signal-rank", "3", "--direction-bootstrap", "0", "--no-report", "--methods", METHODS,
                 *extra])
    assert code == 0
    table = pd.read_csv(out / "estimates.tsv", sep="\t").set_index(["method", "scope"])
    return table, json.loads((out / "results.json").read_text())


def test_streamed_battery_reads_the_rows_twice_and_matches_in_memory(study, tmp_path):
    mem, _ = _run(study, tmp_path / "mem", "--streaming", "off")
    got, res = _run(study, tmp_path / "str", "--streaming", "on")
    assert np.isfinite(got.loc[("invariant_linear", "pooled"), "estimate"])
    passes = res["provenance"]["streamed_passes"]["passes"]
    assert [p["kind"] for p in passes] == ["CrossProductKernel", "MeatKernel"]
    assert passes[1]["carried"] == ["ProjectionKernel"]
    cols = ["estimate", "se", "ci_low", "ci_high", "first_stage_f", "pvalue"]
    x, y = got[cols].to_numpy(float), mem.loc[got.index, cols].to_numpy(float)
    ok = ~np.isnan(y)
    assert np.array_equal(np.isnan(x), np.isnan(y))
    assert np.max(np.abs(x[ok] - y[ok]) / np.maximum(1.0, np.abs(y[ok]))) < 1e-8


def test_float32_meats_at_the_cli_change_no_estimate_or_se(study, tmp_path):
    a, _ = _run(study, tmp_path / "a", "--streaming", "on")
    b, res = _run(study, tmp_path / "b", "--streaming", "on", "--meat-precision", "float32")
    cols = ["estimate", "se", "ci_low", "ci_high"]
    assert np.array_equal(a[cols].to_numpy(float), b[cols].to_numpy(float), equal_nan=True)
    fa, fb = a["first_stage_f"].to_numpy(float), b["first_stage_f"].to_numpy(float)
    ok = ~np.isnan(fa)
    assert ok.any() and np.max(np.abs(fa[ok] - fb[ok]) / np.abs(fa[ok])) < 1e-5
    assert res["provenance"]["parameters"]["options"]["meat_precision"] == "float32"  # recorded with the run


def test_bad_meat_precision_is_a_usage_error(study, tmp_path):
    code = main(["run", "--bfile", str(study.prefix), "--pheno", str(study.pheno), "--env-col", "environment",
                 "--exposure", "exposure", "--outcome", "outcome", "--out", str(tmp_path / "x"), "--quiet",
                 "--methods", "tsls_all_env", "--meat-precision", "float16"])
    assert code == 2


@pytest.mark.parametrize("runner", ["local", "dask"])
def test_projection_kernel_rows_in_order_alone_and_together(tmp_path, runner):
    rng = np.random.default_rng(0)
    n, p = 530, 7
    Z = rng.normal(size=(n, p))
    vec = RowVectors(env_codes=np.repeat([0, 1], [300, 230]), env_levels=("a", "b"), exposure=rng.normal(size=n),
                     outcome=rng.normal(size=n))
    W, off = rng.normal(size=(p, 3)), rng.normal(size=3)
    if runner == "local":
        passes = LocalPasses.from_array(Z, vec, 64)
    else:
        np.save(tmp_path / "z.npy", Z)
        passes = DaskPasses(npy_chunks(str(tmp_path / "z.npy"), 5, block_rows=50), vec)
    kernel = ProjectionKernel(W, off)
    np.testing.assert_allclose(passes.run(kernel), Z @ W - off, rtol=1e-13, atol=1e-13)
    other = ProjectionKernel(W[:, :1], off[:1])
    both = passes.run(Together([kernel, other]))
    np.testing.assert_allclose(both[1], Z @ W[:, :1] - off[:1], rtol=1e-13, atol=1e-13)
    assert kernel.result_key() != other.result_key() == ProjectionKernel(W[:, :1], off[:1]).result_key()


def test_dask_results_come_back_aligned():
    """distributed can deserialise a worker's arrays unaligned, which scipy.linalg refuses."""
    from invariant_mr.passes.dask_passes import _aligned

    raw = np.frombuffer(bytearray(8 * 4 + 1), dtype=np.float64, offset=1, count=4)
    assert not raw.flags.aligned
    out = _aligned((raw, [raw], "x"))
    assert out[0].flags.aligned and out[1][0].flags.aligned and out[2] == "x"
    assert np.array_equal(out[0], raw)
