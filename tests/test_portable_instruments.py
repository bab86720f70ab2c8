"""Portable instrument maps: save, load, align by ID and allele, flip, impute, refuse, export."""

import json

import numpy as np
import pandas as pd
import pytest

from invariant_mr.errors import InputError
from invariant_mr.instruments.portable import (
    DEFAULT_MAX_MISSING_FRACTION,
    apply_instrument_map,
    load_instrument_map,
    save_autoencoder_map,
    save_linear_map,
)
from invariant_mr.instruments.linear import LinearInvariantInstruments
from invariant_mr.simulation.paper import simulate_paper

BASES = np.array(list("ACGT"))


def _cohort(seed, n_per_env=600):
    d = simulate_paper("discrete", n_envs=2, n_per_env=n_per_env, seed=seed).data
    p = d.Z.shape[1]
    rng = np.random.default_rng(100)  # the same variant annotation in both cohorts
    counted = rng.choice(BASES, p)
    other = np.array([rng.choice([b for b in BASES if b != c]) for c in counted])
    ids = np.array([f"rs{1000 + j}" for j in range(p)])
    return d, ids, counted, other


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    a, ids, counted, other = _cohort(0)
    learner = LinearInvariantInstruments(n_components=2, signal_rank=4, random_state=0).fit(a.Z, a.env)
    path = save_linear_map(learner, ids, counted, other, tmp_path_factory.mktemp("maps") / "linear")
    return learner, path, a, ids, counted, other


def test_round_trip_reproduces_the_learner_exactly(fitted):
    learner, path, a, ids, counted, other = fitted
    m = load_instrument_map(path)
    assert m.kind == "linear" and m.n_instruments == 2 and m.variant_ids == tuple(ids)
    inst, report = apply_instrument_map(m, a.Z, ids, counted, other)
    np.testing.assert_array_equal(m.loadings, learner.components_)  # repr floats round-trip exactly
    np.testing.assert_allclose(inst, learner.transform(a.Z), rtol=0, atol=1e-12)
    assert report.n_used == len(ids) and report.n_flipped == 0 and report.missing == ()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["params"]["n_components"] == 2
    assert not m.loadings.flags.writeable


def test_reordered_and_allele_swapped_cohort_gives_the_same_instruments(fitted):
    """The bar: cohort B listed in another order with some alleles swapped (and an extra variant)."""
    _, path, _, ids, counted, other = fitted
    b, *_ = _cohort(1)
    m = load_instrument_map(path)
    reference, _ = apply_instrument_map(m, b.Z, ids, counted, other)

    rng = np.random.default_rng(7)
    p = len(ids)
    order = rng.permutation(p)
    swap = rng.random(p) < 0.4
    Zb = np.where(swap, 2.0 - b.Z, b.Z)[:, order]
    cb = np.where(swap, other, counted)[order]
    ob = np.where(swap, counted, other)[order]
    ids_b = ids[order]
    # An extra variant the map does not use, in the middle; lower-case alleles.
    Zb = np.insert(Zb, 3, rng.integers(0, 3, Zb.shape[0]), axis=1)
    ids_b, cb, ob = (np.insert(x, 3, v) for x, v in ((ids_b, "rs_extra"), (cb, "a"), (ob, "g")))
    cb = np.char.lower(cb.astype(str))
    inst, report = apply_instrument_map(m, Zb, ids_b, cb, ob)
    np.testing.assert_allclose(inst, reference, rtol=0, atol=1e-8)
    assert report.n_flipped == int(swap.sum()) > 0
    assert report.n_missing == 0


def test_missing_variants_are_imputed_reported_and_refused_above_the_limit(fitted):
    learner, path, a, ids, counted, other = fitted
    m = load_instrument_map(path)
    keep = np.arange(len(ids)) != 5
    inst, report = apply_instrument_map(m, a.Z[:, keep], ids[keep], counted[keep], other[keep])
    assert report.missing == (ids[5],)
    # Mean imputation at the saved centring: the same as setting that variant's dosage to the centre.
    Z = a.Z.copy()
    Z[:, 5] = m.center[5]
    np.testing.assert_allclose(inst, learner.transform(Z), atol=1e-12)
    # Missing calls are imputed the same way.
    Zn = a.Z.copy()
    Zn[:, 5] = np.nan
    np.testing.assert_allclose(apply_instrument_map(m, Zn, ids, counted, other)[0], inst, atol=1e-12)

    n_drop = int(np.floor(DEFAULT_MAX_MISSING_FRACTION * len(ids))) + 1
    keep = np.arange(len(ids)) >= n_drop
    with pytest.raises(InputError, match="limit is 10%"):
        apply_instrument_map(m, a.Z[:, keep], ids[keep], counted[keep], other[keep])
    inst, report = apply_instrument_map(
        m, a.Z[:, keep], ids[keep], counted[keep], other[keep], max_missing_fraction=0.5
    )
    assert len(report.missing) == n_drop


def test_other_alleles_are_mismatches_not_flips(fitted):
    _, path, a, ids, counted, other = fitted
    m = load_instrument_map(path)
    c2 = counted.copy()
    c2[0] = next(b for b in BASES if b not in (counted[0], other[0]))
    _, report = apply_instrument_map(m, a.Z, ids, c2, other)
    assert report.allele_mismatch == (ids[0],) and report.n_flipped == 0
    _, report = apply_instrument_map(m, a.Z, ids, None, None)
    assert report.n_unchecked == len(ids)


def test_exported_score_file_gives_the_instruments_up_to_a_constant(fitted):
    learner, path, a, ids, counted, other = fitted
    score = pd.read_csv(path / "score.tsv", sep="\t")
    assert list(score.columns[:2]) == ["variant_id", "counted_allele"]
    W = score[["W1", "W2"]].to_numpy()
    offset = np.array(json.loads((path / "manifest.json").read_text())["score_offset"])
    np.testing.assert_allclose(a.Z @ W - offset, learner.transform(a.Z), atol=1e-9)
    loadings = pd.read_csv(path / "loadings.tsv", sep="\t")
    assert list(loadings.columns) == ["variant_id", "counted_allele", "other_allele", "center", "scale", "W1", "W2"]


def test_bad_inputs(fitted, tmp_path):
    learner, path, a, ids, counted, other = fitted
    with pytest.raises(InputError, match="no manifest.json"):
        load_instrument_map(tmp_path)
    with pytest.raises(InputError, match="unique"):
        save_linear_map(learner, np.r_[ids[:-1], ids[:1]], counted, other, tmp_path / "x")
    with pytest.raises(InputError, match="entries"):
        save_linear_map(learner, ids[:-1], counted[:-1], other[:-1], tmp_path / "x")
    with pytest.raises(InputError, match="not fitted"):
        save_linear_map(LinearInvariantInstruments(), ids, counted, other, tmp_path / "x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="format version"):
        load_instrument_map(tmp_path / "bad")


def test_autoencoder_map_round_trip_and_alignment(tmp_path):
    from invariant_mr.instruments.autoencoder import InvariantAutoencoder

    a, ids, counted, other = _cohort(0, n_per_env=100)
    model = InvariantAutoencoder(hidden=8, epochs=1, batch_size=32, device="cpu", seed=0).fit(a.Z, a.env)
    path = save_autoencoder_map(model, ids, counted, other, tmp_path / "ae")
    assert (path / "model" / "model.pt").exists() and (path / "variants.tsv").exists()
    m = load_instrument_map(path)
    assert m.kind == "autoencoder" and m.n_instruments == model.dim_w
    inst, _ = apply_instrument_map(m, a.Z, ids, counted, other)
    np.testing.assert_allclose(inst, model.transform(a.Z), atol=1e-6)
    order = np.random.default_rng(1).permutation(len(ids))
    swap = np.zeros(len(ids), bool)
    swap[::3] = True
    Zb = np.where(swap, 2.0 - a.Z, a.Z)[:, order]
    inst2, report = apply_instrument_map(
        m, Zb, ids[order], np.where(swap, other, counted)[order], np.where(swap, counted, other)[order]
    )
    np.testing.assert_allclose(inst2, inst, atol=1e-8)
    assert report.n_flipped == int(swap.sum())
