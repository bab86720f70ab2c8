"""Neural training from streamed minibatches: an int8 memory-mapped cache, prefetching, same training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from genetic_fixtures import write_study

from invariant_mr.errors import InputError
from invariant_mr.instruments.autoencoder import InvariantAutoencoder
from invariant_mr.instruments.minibatches import ArrayRows, PrefetchedBatches, input_moments
from invariant_mr.io.genotype_sources import open_genotypes
from invariant_mr.io.int8_cache import Int8GenotypeCache
from invariant_mr.io.streamed_genotypes import StreamedGenotypes
from invariant_mr.io.streamed_qc import read_qc_dosages, streamed_genotype_qc


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A PLINK fileset with missing calls, its QC, the float64 matrix in memory and its int8 cache."""
    d = tmp_path_factory.mktemp("mb")
    s = write_study(d, n_per_env=(90, 90, 90), p=8, missing_rate=0.03, seed=4, covariates=False)
    source = open_genotypes(bfile=s.prefix)
    rows = np.arange(source.n_samples)
    env = np.asarray(s.env, dtype=object)
    qc = streamed_genotype_qc(source, rows, env)
    Z = read_qc_dosages(source, rows, qc)
    genotypes = StreamedGenotypes.from_qc(source, rows, qc, block_rows=50, read_rows=100)
    cache = Int8GenotypeCache.build(genotypes, d)
    return Z, env[qc.rows], cache


def test_int8_cache_gives_the_imputed_rows(analysed):
    Z, _, cache = analysed
    assert cache.path.stat().st_size < Z.size + 1024  # one byte per call (plus the .npy header)
    order = np.random.default_rng(0).permutation(Z.shape[0])[:57]
    assert np.array_equal(cache.rows(order), Z[order].astype(np.float32))
    mean, cov = input_moments(cache, block_rows=64)
    assert np.allclose(mean, Z.mean(0), rtol=1e-6) and np.allclose(cov, np.cov(Z.T, bias=True), atol=1e-5)


def test_prefetched_batches_in_order_and_stop_early(analysed):
    Z, _, cache = analysed
    batches = [np.arange(i, i + 10) for i in range(0, 200, 10)]
    got = list(PrefetchedBatches(cache, batches, torch.device("cpu"), prefetch=3))
    assert len(got) == 20 and all(torch.equal(g, torch.from_numpy(Z[b].astype(np.float32)))
                                  for g, b in zip(got, batches))
    for i, _ in enumerate(PrefetchedBatches(cache, batches, torch.device("cpu"), prefetch=1)):
        if i == 2:
            break  # the producer thread stops instead of blocking

    class Failing(ArrayRows):
        def rows(self, indices):
            raise InputError("disk error")

    with pytest.raises(InputError, match="disk error"):
        list(PrefetchedBatches(Failing(Z), batches, torch.device("cpu")))
    with pytest.raises(InputError, match="prefetch"):
        PrefetchedBatches(cache, batches, torch.device("cpu"), prefetch=0)


def test_training_from_the_cache_equals_training_in_memory(analysed):
    """Same seeds, same batches, same float32 inputs: the streamed fit is the in-memory fit."""
    Z, env, cache = analysed
    kw = dict(dim_v=2, dim_w=2, hidden=16, epochs=4, warmup_epochs=1, batch_size=16, seed=3, device="cpu",
              whiten=False)
    mem = InvariantAutoencoder(**kw).fit(Z, env)
    streamed = InvariantAutoencoder(**kw).fit(cache, env)
    h_mem = [r["val_total"] for r in mem.history_]
    h_str = [r["val_total"] for r in streamed.history_]
    assert np.allclose(h_str, h_mem, rtol=1e-4)
    assert np.allclose(streamed.transform(Z), mem.transform(Z), atol=1e-4)
    with pytest.raises(InputError, match="warm-start linear"):
        InvariantAutoencoder(**{**kw, "warm_start": "linear"}).fit(cache, env)


def test_dosage_sources_are_not_rounded_into_an_int8_cache(tmp_path):
    from genotype_writers import make_fileset, write_pgen

    fs = make_fileset(n=30, p=4, missing_rate=0.0, seed=1)
    dos = np.clip(fs.dosages + 0.25, 0, 2)
    source = open_genotypes(pfile=write_pgen(fs, tmp_path / "d", dosages=dos))
    rows = np.arange(30)
    env = np.array(["a"] * 15 + ["b"] * 15, dtype=object)
    qc = streamed_genotype_qc(source, rows, env)
    with pytest.raises(InputError, match="round"):
        Int8GenotypeCache.build(StreamedGenotypes.from_qc(source, rows, qc), tmp_path)
