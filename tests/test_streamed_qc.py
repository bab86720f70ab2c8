"""Streamed QC over row blocks of every genotype source equals the in-memory `run_genotype_qc`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from genotype_writers import (
    Fileset,
    make_fileset,
    write_bed,
    write_bgen,
    write_pgen,
    write_vcf,
)

from invariant_mr.errors import InputError
from invariant_mr.io import streamed_qc
from invariant_mr.io.genotype_sources import MISSING_INT8, open_genotypes
from invariant_mr.io.streamed_qc import (
    BlockCounts,
    impute_block,
    iter_qc_blocks,
    read_qc_dosages,
    streamed_genotype_qc,
)
from invariant_mr.io.qc import QCThresholds, run_genotype_qc

THRESHOLDS = QCThresholds(max_variant_missing=0.3, max_sample_missing=0.3, min_maf=0.01, min_maf_per_env=0.05)


def _qc_fileset(seed=0) -> tuple[Fileset, np.ndarray]:
    """A matrix where every QC step removes something; environments of 25, 25 and 10 samples."""
    fs = make_fileset(n=60, p=11, missing_rate=0.03, seed=seed)
    rng = np.random.default_rng(seed + 5)
    G = fs.dosages
    env = np.array(["a"] * 25 + ["b"] * 25 + ["c"] * 10, dtype=object)
    G[:, 0] = rng.binomial(2, 0.4, size=60)
    G[rng.permutation(60)[:25], 0] = np.nan  # 42% missing: --geno
    G[:, 1] = rng.binomial(2, 0.4, size=60)
    G[env == "c", 1] = np.nan  # 17% missing, all of environment c
    G[:, 2] = 1.0  # monomorphic (all heterozygous)
    G[:, 3] = 0.0
    G[7, 3] = 1.0  # MAF 1/120 < 0.01
    G[:, 4] = rng.binomial(2, 0.4, size=60)
    G[env == "b", 4] = 0.0  # MAF 0 in b: --maf-env
    G[5, 5:10] = np.nan  # sample 5 misses 5 of the 10 variants that pass --geno: --mind
    G[5, 0] = np.nan
    # Sample 11 misses 4 of 11 variants (36%) but only 3 of the 10 that pass --geno (30%): kept, which
    # only the --mind-after---geno order gets right.
    G[11] = np.where(np.isnan(G[11]), 0.0, G[11])
    G[11, [0, 6, 7, 8]] = np.nan
    # Shuffle rows so environments interleave across row blocks.
    order = np.random.default_rng(seed).permutation(60)
    fs = Fileset(G[order], fs.fid[order], fs.iid[order], fs.variants)
    return fs, env[order]


@pytest.fixture(scope="module")
def qc_files(tmp_path_factory):
    fs, env = _qc_fileset()
    d = tmp_path_factory.mktemp("qc")
    write_bed(fs, d / "g1")
    write_pgen(fs, d / "g2")  # read as float32 dosages: exercises the float path
    write_vcf(fs, d / "g.vcf")
    write_bgen(fs, d / "g.bgen")
    return fs, env, d


def _sources(d):
    return {
        "bfile": open_genotypes(bfile=d / "g1"),
        "pfile": open_genotypes(pfile=d / "g2"),
        "pfile_hardcalls": open_genotypes(pfile=d / "g2", pfile_hardcalls=True),
        "vcf": open_genotypes(vcf=d / "g.vcf"),
        "bgen": open_genotypes(bgen=d / "g.bgen"),
    }


@pytest.mark.parametrize("kind", ["bfile", "pfile", "pfile_hardcalls", "vcf", "bgen"])
@pytest.mark.parametrize("block_rows", [7, 1000])
def test_streamed_qc_equals_in_memory_qc(qc_files, kind, block_rows):
    _, env, d = qc_files
    src = _sources(d)[kind]
    rows = np.arange(2, 60)  # a subset of the samples, as after matching phenotypes
    memory = run_genotype_qc(src.read(rows, dtype="float32"), env[rows], src.variants, THRESHOLDS)
    streamed = streamed_genotype_qc(src, rows, env[rows], THRESHOLDS, block_rows=block_rows)
    removed = memory.report.removed_variants
    assert all(removed[key] >= 1 for key in removed), removed  # every rule fires
    assert memory.report.removed_samples["sample_missingness"] == 1
    assert streamed.report.to_dict() == memory.report.to_dict()
    pd.testing.assert_frame_equal(streamed.report.variant_table(), memory.report.variant_table())
    assert streamed.report.to_tsv() == memory.report.to_tsv()
    np.testing.assert_array_equal(streamed.sample_mask, memory.sample_mask)
    np.testing.assert_array_equal(streamed.variant_mask, memory.variant_mask)
    # Imputation on the fly reproduces QC's dosages block by block, bit for bit.
    pieces = list(iter_qc_blocks(src, rows, streamed, block_rows=block_rows))
    assert pieces[0][0].start == 0 and pieces[-1][0].stop == memory.dosages.shape[0]
    np.testing.assert_array_equal(np.vstack([b for _, b in pieces]), memory.dosages)
    np.testing.assert_array_equal(read_qc_dosages(src, rows, streamed, block_rows=block_rows), memory.dosages)


@pytest.mark.parametrize("kind", ["bfile", "bgen"])
def test_standardised_dosages_match(qc_files, kind):
    _, env, d = qc_files
    src = _sources(d)[kind]
    t = QCThresholds(max_variant_missing=0.3, max_sample_missing=0.3, standardize=True)
    memory = run_genotype_qc(src.read(dtype="float32"), env, src.variants, t)
    streamed = streamed_genotype_qc(src, None, env, t, block_rows=9)
    X = np.vstack([streamed.impute(b, s) for s, b in
                   src.iter_blocks(streamed.rows, streamed.variant_positions, block_rows=9)])
    np.testing.assert_allclose(X, memory.dosages, rtol=0, atol=1e-12)
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-12)


def test_fractional_dosages_match_to_rounding(tmp_path, monkeypatch):
    fs = make_fileset(n=50, p=6, missing_rate=0.05, seed=8)
    rng = np.random.default_rng(2)
    dos = np.clip(fs.dosages + rng.uniform(-0.3, 0.3, fs.dosages.shape), 0, 2)
    write_pgen(fs, tmp_path / "d", dosages=dos)
    src = open_genotypes(pfile=tmp_path / "d")
    env = np.repeat(["x", "y"], 25).astype(object)
    t = QCThresholds(max_variant_missing=0.2, max_sample_missing=0.2)
    memory = run_genotype_qc(src.read(), env, src.variants, t)
    streamed = streamed_genotype_qc(src, None, env, t, block_rows=6)
    np.testing.assert_array_equal(streamed.variant_mask, memory.variant_mask)
    a, b = streamed.report.variant_table(), memory.report.variant_table()
    num = [c for c in a.columns if c.startswith("maf") or c == "missing_rate"]
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=1e-12)
    X = read_qc_dosages(src, None, streamed, dtype=np.float32)
    assert X.dtype == np.float32
    np.testing.assert_allclose(X, memory.dosages, rtol=1e-6)
    # Summing in column chunks (the float64 temporaries' bound) changes nothing.
    monkeypatch.setattr(streamed_qc, "_FLOAT64_CHUNK_BYTES", 8 * 6 * 2)
    chunked = streamed_genotype_qc(src, None, env, t, block_rows=6)
    pd.testing.assert_frame_equal(chunked.report.variant_table(), streamed.report.variant_table())


def test_streamed_qc_errors_like_the_in_memory_qc(qc_files):
    _, env, d = qc_files
    src = _sources(d)["bfile"]
    with pytest.raises(InputError, match="removed all .* variants"):
        streamed_genotype_qc(src, None, env, QCThresholds(min_maf=0.5))
    with pytest.raises(InputError, match="expected"):
        streamed_genotype_qc(src, None, env[:10])


def test_block_counts_add_up_and_subtract_exactly():
    rng = np.random.default_rng(0)
    block = rng.integers(0, 3, size=(30, 5)).astype(np.int8)
    block[rng.random(block.shape) < 0.1] = MISSING_INT8
    codes = rng.integers(0, 2, size=30)
    whole = BlockCounts.from_block(block, codes, 2)
    parts = BlockCounts.from_block(block[:13], codes[:13], 2) + BlockCounts.from_block(block[13:], codes[13:], 2)
    np.testing.assert_array_equal(whole.genotype_counts, parts.genotype_counts)
    back = whole - BlockCounts.from_block(block[13:], codes[13:], 2)
    np.testing.assert_array_equal(back.env_sum(), BlockCounts.from_block(block[:13], codes[:13], 2).env_sum())
    lo, hi = whole.range()
    f = np.where(block == MISSING_INT8, np.nan, block).astype(float)
    np.testing.assert_array_equal(lo, np.nanmin(f, axis=0))
    np.testing.assert_array_equal(hi, np.nanmax(f, axis=0))
    with pytest.raises(InputError, match="other than"):
        BlockCounts.from_block(np.array([[3]], np.int8), np.array([0]), 1)


def test_impute_block_with_pooled_or_per_environment_means():
    block = np.array([[0, MISSING_INT8], [MISSING_INT8, 2], [1, MISSING_INT8]], dtype=np.int8)
    pooled = impute_block(block, np.array([0.5, 1.5]), dtype=np.float32)
    assert pooled.dtype == np.float32
    np.testing.assert_array_equal(pooled, [[0, 1.5], [0.5, 2], [1, 1.5]])
    per_env = impute_block(block, np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([1, 0, 0]),
                           center=np.array([1.0, 1.0]), scale=np.array([2.0, 1.0]))
    np.testing.assert_allclose(per_env, [[-0.5, -0.6], [-0.45, 1.0], [0.0, -0.8]])
    floats = impute_block(np.array([[np.nan, 1.0]], np.float32), np.array([0.25, 9.0]))
    np.testing.assert_array_equal(floats, [[0.25, 1.0]])
