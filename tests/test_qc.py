"""Genotype QC: exact removal counts and reasons, within-environment imputation, invariances."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.io.qc import QCThresholds, run_genotype_qc

NAN = np.nan


def _variants(p):
    return pd.DataFrame({"variant_id": [f"v{j}" for j in range(p)], "chrom": ["1"] * p, "pos": np.arange(p) + 1,
                         "counted_allele": ["A"] * p, "other_allele": ["G"] * p})


def _random(n=200, p=6, seed=0):
    rng = np.random.default_rng(seed)
    env = np.repeat(["e1", "e2"], n // 2).astype(object)
    G = rng.binomial(2, 0.3, size=(n, p)).astype(float)
    return G, env


def test_each_removal_reason_with_exact_counts():
    G, env = _random(n=200, p=7)
    G[:11, 0] = NAN                      # v0: 5.5% missing > 0.05 -> removed (missingness)
    G[:10, 1] = NAN                      # v1: exactly 5% missing -> kept (strictly above removes)
    G[:, 2] = 1.0                        # v2: monomorphic
    G[:, 3] = 0.0
    G[:3, 3] = 1.0                       # v3: MAF 3/400 = 0.0075 < 0.01
    G[:, 4] = 0.0
    G[100:110, 4] = 1.0                  # v4: pooled MAF 0.025, but 0 in e1 -> removed only with --maf-env
    G[100:, 5] = NAN                     # v5: 50% missing, removed for missingness first
    keep_samples = {"max_sample_missing": 1.0}
    res = run_genotype_qc(G, env, _variants(7), QCThresholds(min_maf_per_env=0.001, **keep_samples))
    t = res.report.variant_table()
    assert list(t["status"]) == ["removed", "kept", "removed", "removed", "removed", "removed", "kept"]
    assert t["reason"][0].startswith("missing rate > 0.05")
    assert t["reason"][2] == "monomorphic"
    assert t["reason"][3].startswith("MAF < 0.01 (--maf)")
    assert t["reason"][4] == "MAF < 0.001 in an environment (--maf-env): e1"
    assert dict(res.report.removed_variants) == {
        "variant_missingness": 2, "all_missing_in_env": 0, "monomorphic": 1, "maf": 1, "maf_env": 1,
    }
    assert res.report.n_variants_out == 2 and res.dosages.shape == (200, 2)
    # Without the per-environment filter v4 is kept.
    assert run_genotype_qc(G, env, _variants(7), QCThresholds(**keep_samples)).report.n_variants_out == 3
    assert t["missing_rate"][0] == pytest.approx(11 / 200)


def test_sample_missingness_uses_variants_that_passed_the_variant_filter():
    G, env = _random(n=100, p=20)
    G[:, 0] = NAN          # a dead variant: removed by --geno, must not count against samples
    G[7, 1:3] = NAN        # sample 7: 2/19 = 10.5% missing among passing variants -> removed
    G[8, 1] = NAN          # sample 8: 1/19 = 5.3% -> removed at 0.05 ...
    res = run_genotype_qc(G, env, _variants(20))
    assert res.report.removed_samples["sample_missingness"] == 2
    assert not res.sample_mask[7] and not res.sample_mask[8] and res.sample_mask.sum() == 98
    # ... and kept at 0.06.
    res = run_genotype_qc(G, env, _variants(20), QCThresholds(max_sample_missing=0.06))
    assert res.sample_mask.sum() == 99


def test_missing_calls_get_the_mean_of_their_own_environment():
    G = np.array([[0, 1], [2, 1], [NAN, 0], [2, 2], [2, 0], [NAN, 1], [0, 0], [0, 2]], dtype=float)
    env = np.array(["a", "a", "a", "a", "b", "b", "b", "b"], dtype=object)
    res = run_genotype_qc(G, env, _variants(2), QCThresholds(max_variant_missing=0.5, max_sample_missing=1.0))
    assert res.dosages[2, 0] == pytest.approx(4 / 3)   # mean of 0, 2, 2 in env a
    assert res.dosages[5, 0] == pytest.approx(2 / 3)   # mean of 2, 0, 0 in env b
    assert res.report.n_imputed_calls == 2
    assert list(res.report.variant_table()["n_imputed"]) == [2, 0]
    np.testing.assert_array_equal(res.dosages[:, 1], G[:, 1])


def test_variant_never_observed_in_an_environment_is_removed():
    G, env = _random(n=100, p=4)
    G[env == "e2", 1] = NAN
    res = run_genotype_qc(G, env, _variants(4), QCThresholds(max_variant_missing=0.6, max_sample_missing=1.0))
    t = res.report.variant_table()
    assert t["reason"][1] == "no observed call in an environment: e2"
    assert res.report.removed_variants["all_missing_in_env"] == 1


def test_per_environment_maf_columns():
    G, env = _random(n=200, p=3, seed=4)
    t = run_genotype_qc(G, env, _variants(3)).report.variant_table()
    for lv in ("e1", "e2"):
        af = G[env == lv].mean(axis=0) / 2
        np.testing.assert_allclose(t[f"maf_env_{lv}"], np.minimum(af, 1 - af), rtol=1e-12)
    af = G.mean(axis=0) / 2
    np.testing.assert_allclose(t["maf"], np.minimum(af, 1 - af), rtol=1e-12)


def test_standardisation_is_pooled_and_leaves_2sls_unchanged():
    rng = np.random.default_rng(5)
    n = 400
    env = np.repeat(["e1", "e2"], n // 2).astype(object)
    G = np.column_stack([rng.binomial(2, f, n) for f in (0.2, 0.3, 0.4, 0.5)]).astype(float)
    G[rng.random(G.shape) < 0.01] = NAN
    x = np.nan_to_num(G, nan=1.0) @ np.array([0.3, 0.2, -0.4, 0.1]) + rng.normal(size=n)
    y = 0.7 * x + rng.normal(size=n)
    raw = run_genotype_qc(G, env, _variants(4), QCThresholds(max_sample_missing=1.0))
    std = run_genotype_qc(G, env, _variants(4), QCThresholds(max_sample_missing=1.0, standardize=True))
    np.testing.assert_allclose(std.dosages.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(std.dosages.std(axis=0), 1, rtol=1e-12)
    # The environment means still differ: only pooled centring and scaling were applied.
    assert np.abs(std.dosages[env == "e1"].mean(0) - std.dosages[env == "e2"].mean(0)).max() > 0
    a = fit_kclass(y, x, raw.dosages)
    b = fit_kclass(y, x, std.dosages)
    assert a.estimate == pytest.approx(b.estimate, abs=1e-10)
    assert a.se == pytest.approx(b.se, rel=1e-9)


def test_all_variants_or_all_samples_removed_is_an_error():
    G, env = _random(n=100, p=3)
    G[:10] = NAN
    with pytest.raises(InputError, match=r"QC removed all 3 variants \(3 missing rate > 0 \(--geno\)\)"):
        run_genotype_qc(G, env, _variants(3), QCThresholds(max_variant_missing=0.0))
    G, env = _random(n=100, p=3)
    G[:, :] = 1.0
    with pytest.raises(InputError, match="QC removed all 3 variants .*3 monomorphic"):
        run_genotype_qc(G, env, _variants(3))
    G, env = _random(n=100, p=3)
    G[np.arange(100), np.arange(100) % 3] = NAN
    with pytest.raises(InputError, match="QC removed all 100 samples"):
        run_genotype_qc(G, env, _variants(3), QCThresholds(max_variant_missing=0.5, max_sample_missing=0.2))


def test_thresholds_are_validated():
    with pytest.raises(InputError, match="--geno must be between 0 and 1"):
        QCThresholds(max_variant_missing=1.5)
    with pytest.raises(InputError, match="--maf must be between 0 and 0.5"):
        QCThresholds(min_maf=0.6)


def test_report_is_immutable_and_exports():
    G, env = _random()
    report = run_genotype_qc(G, env, _variants(6)).report
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.n_variants_out = 0
    with pytest.raises(TypeError):
        report.removed_variants["maf"] = 3
    table = report.variant_table()
    table.loc[0, "status"] = "changed"
    assert report.variant_table().loc[0, "status"] == "kept"
    lines = report.to_tsv().splitlines()
    assert len(lines) == 7 and lines[0].split("\t")[:3] == ["variant_id", "chrom", "pos"]
    assert report.to_dict()["n_variants_in"] == 6
    assert "QC: 6/6 variants and 200/200 samples kept" in report.summary()
