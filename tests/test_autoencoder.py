"""The invariant autoencoder: training contract, persistence, divergence, recovery, registered methods."""

import json

import numpy as np
import pytest
import torch

from invariant_mr.instruments import training
from invariant_mr.instruments.autoencoder import InvariantAutoencoder
from invariant_mr.errors import InputError, TrainingDivergedError
from invariant_mr.pipeline import run_analysis
from invariant_mr.instruments.recovery import r_squared, recovery_scores
from invariant_mr.methods.registry import MethodContext, registered_methods
from invariant_mr.simulation.paper import simulate_paper

FAST = dict(hidden=16, epochs=8, batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def small():
    return simulate_paper("poly2", n_envs=2, n_per_env=200, seed=1)


def test_fit_returns_self_and_learns_history(small):
    d = small.data
    model = InvariantAutoencoder(**FAST, seed=0)
    assert model.fit(d.Z, d.env) is model
    hv, hw = model.transform_all(d.Z)
    assert hv.shape == (d.n, 2) and hw.shape == (d.n, 2)
    np.testing.assert_array_equal(model.transform(d.Z), hw)
    assert len(model.history_) == FAST["epochs"]
    row = model.history_[0]
    for key in ("train_recon", "val_recon", "val_inv", "val_ind", "val_ent", "val_total", "lr"):
        assert np.isfinite(row[key])
    best = min(r["val_total"] for r in model.history_)
    assert model.training_summary_["best_val_total"] == best


def test_deterministic_given_seed_on_cpu(small):
    d = small.data
    a = InvariantAutoencoder(**FAST, seed=3).fit(d.Z, d.env).transform(d.Z)
    b = InvariantAutoencoder(**FAST, seed=3).fit(d.Z, d.env).transform(d.Z)
    c = InvariantAutoencoder(**FAST, seed=4).fit(d.Z, d.env).transform(d.Z)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_save_load_round_trip(small, tmp_path):
    d = small.data
    model = InvariantAutoencoder(**FAST, lam_rel=1.0, seed=0).fit(d.Z, d.env, exposure=d.exposure)
    path = model.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.pt"]
    # The weights file holds tensors only: it loads with weights_only=True.
    state = torch.load(path / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded = InvariantAutoencoder.load(path)
    np.testing.assert_array_equal(loaded.transform(d.Z), model.transform(d.Z))
    assert loaded.get_params() == model.get_params()
    assert loaded.history_ == json.loads(json.dumps(model.history_))
    # Saving again over the same path replaces it and leaves no staging directories.
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_load_rejects_other_directories(tmp_path):
    with pytest.raises(InputError, match="config.json"):
        InvariantAutoencoder.load(tmp_path)


def test_divergence_names_the_term(small, monkeypatch):
    d = small.data
    nan_mmd = lambda h, env, kernel, **kw: h.sum() * float("nan")  # noqa: E731
    monkeypatch.setattr(training, "pairwise_mmd", nan_mmd)
    with pytest.raises(TrainingDivergedError, match="'inv'"):
        InvariantAutoencoder(**FAST, seed=0, mmd_kernel="poly").fit(d.Z, d.env)
    # The default RBF pair goes through the fused penalties.
    monkeypatch.setattr(
        training, "rbf_invariance_and_independence", lambda w, v, env, **kw: (w.sum() * 0.0, v.sum() * float("nan"))
    )
    with pytest.raises(TrainingDivergedError, match="'ind'"):
        InvariantAutoencoder(**FAST, seed=0).fit(d.Z, d.env)


def test_input_errors(small):
    d = small.data
    with pytest.raises(InputError, match="mmd-kernel"):
        InvariantAutoencoder(**FAST, mmd_kernel="gauss").fit(d.Z, d.env)
    with pytest.raises(InputError, match="2 environments"):
        InvariantAutoencoder(**FAST).fit(d.Z, np.zeros(d.n))
    with pytest.raises(InputError, match="not fitted"):
        InvariantAutoencoder().transform(d.Z)
    with pytest.raises(InputError, match="lam-inv"):
        InvariantAutoencoder(**FAST, lam_inv=-1.0).fit(d.Z, d.env)


def test_every_kernel_and_the_balancer_train(small):
    d = small.data
    for kernel, measure in (("rbf", "rbf"), ("moments", "crosscov"), ("poly", "dcor")):
        model = InvariantAutoencoder(**{**FAST, "epochs": 2}, mmd_kernel=kernel, independence=measure).fit(d.Z, d.env)
        assert np.isfinite(model.transform(d.Z)).all()
    model = InvariantAutoencoder(**{**FAST, "epochs": 3}, adaptive_balancer=True).fit(d.Z, d.env)
    assert len({r["w_inv"] for r in model.history_}) > 1


def test_recovers_w_under_linear_mixing():
    sim = simulate_paper("linear", n_envs=2, n_per_env=600, seed=0)
    d = sim.data
    model = InvariantAutoencoder(
        hidden=32, epochs=100, warmup_epochs=30, patience=30, batch_size=128, lr=3e-3, device="cpu",
        mmd_kernel="rbf", independence="rbf", lam_inv=100.0, lam_rel=1.0, linear_w=True, seed=0,
    )  # fmt: skip
    hw = model.fit(d.Z, d.env, exposure=d.exposure).transform(d.Z)
    scores = recovery_scores(hw, sim.W, sim.V)
    assert scores["r2_w"] > 0.8
    assert scores["r2_v"] < 0.1


def test_heldout_invariance_test_detects_shift_only():
    from invariant_mr.inference.heldout_invariance import heldout_invariance_test

    rng = np.random.default_rng(5)
    env = np.repeat([0, 1], 150)
    folds = np.tile([0, 1], 150)
    same = rng.standard_normal((300, 2))
    shifted = same + 0.8 * env[:, None]
    _, p_same = heldout_invariance_test(same, env, folds, np.random.default_rng(0), 99)
    _, p_shift = heldout_invariance_test(shifted, env, folds, np.random.default_rng(0), 99)
    assert p_same > 0.05
    assert p_shift == pytest.approx(0.01)


def test_whitening_map_whitens_and_drops_null_directions():
    from invariant_mr.instruments.autoencoder import input_map

    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 3))
    Z = np.column_stack([x, x[:, 0] + x[:, 1]])  # one exactly redundant column
    Zc = Z - Z.mean(0)
    white = Zc @ input_map(Zc, whiten=True)
    assert white.shape == (500, 3)
    np.testing.assert_allclose(white.T @ white / 500, np.eye(3), atol=1e-8)
    np.testing.assert_allclose((Zc @ input_map(Zc, whiten=False)).std(0), 1.0)


def test_r_squared_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 2))
    assert r_squared(x, x @ np.array([[1.0, 2.0], [0.5, -1.0]]) + 3) == pytest.approx(1.0)
    y = x[:, :1] + rng.standard_normal((500, 1))
    resid = y - np.column_stack([np.ones(500), x]) @ np.linalg.lstsq(np.column_stack([np.ones(500), x]), y, rcond=None)[0]
    assert r_squared(y, x) == pytest.approx(1 - resid.var() / y.var())


@pytest.mark.parametrize("method", ["invariant_autoencoder", "invariant_autoencoder_insample"])
def test_registered_methods_end_to_end(small, method):
    spec = registered_methods()[method]
    assert {"lam_inv", "mmd_kernel", "epochs", "device"} <= {o.name for o in spec.options}
    ctx = MethodContext(
        seed=2, options={"epochs": 3, "hidden": 8, "batch_size": 64, "device": "cpu", "invariance_permutations": 19}
    )
    result = run_analysis(small.data, method, ctx)
    pooled = [e for e in result.estimates if e.scope == "pooled"]
    assert len(pooled) == 1 and np.isfinite(pooled[0].estimate) and pooled[0].se > 0
    art = result.artifacts[method]
    assert art["instruments"].shape == (small.data.n, 2)
    assert len(art["history"]) >= 3
    if method == "invariant_autoencoder":
        assert pooled[0].extra["n_folds"] == 2
        assert {r["fold"] for r in art["history"]} == {0, 1}
        # Every row's instruments come from the model that did not see it.
        assert set(np.unique(art["folds"])) == {0, 1}
        (diag,) = [g for g in result.diagnostics if g.name == "heldout_invariance"]
        assert 0 < diag.pvalue <= 1.0 and diag.detail["n_permutations"] == 19


def test_nonlinear_leakage_sees_what_linear_leakage_misses():
    from invariant_mr.instruments.recovery import nonlinear_leakage

    rng = np.random.default_rng(3)
    V = rng.standard_normal((2000, 2))
    env = np.repeat([0, 1], 1000)
    hw = np.column_stack([V[:, 0] ** 2 - 1 + 0.1 * rng.standard_normal(2000), rng.standard_normal(2000)])
    assert r_squared(V, hw) < 0.01
    assert nonlinear_leakage(hw, V, env) == pytest.approx(0.5, abs=0.02)


def test_validation_chunks_cover_every_row_once_with_every_environment():
    from invariant_mr.instruments.training import validation_chunks

    codes = np.repeat([0, 1, 2], [5000, 3000, 1000])
    chunks = validation_chunks(codes, max_rows=4096)
    assert len(chunks) == 3 and all(c.size <= 4096 for c in chunks)
    assert np.array_equal(np.sort(np.concatenate(chunks)), np.arange(codes.size))
    assert all(set(codes[c]) == {0, 1, 2} for c in chunks)
    assert len(validation_chunks(codes[:3000], max_rows=4096)) == 1  # small sets stay whole
