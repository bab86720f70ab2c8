"""The authors' recipe of the invariant autoencoder (`InvariantAutoencoder.paper_recipe`, `--preset paper`)."""

from math import comb

import numpy as np
import pytest
import torch
from torch import nn

from invariant_mr.errors import InputError
from invariant_mr.instruments import networks
from invariant_mr.instruments.autoencoder import PRESETS, InvariantAutoencoder, paper_recipe_params
from invariant_mr.instruments.training import loss_terms, total_loss
from invariant_mr.methods import options as O
from invariant_mr.methods.autoencoder import estimator_from_context, estimator_params
from invariant_mr.methods.registry import MethodContext
from invariant_mr.simulation.paper import monomials, simulate_paper

PAPER_DATA = dict(n_envs=2, weights="clipped-normal", mix_seed=100, mixing_recipe="paper-code")


def test_paper_recipe_builds_layernorm_encoder_and_monomial_decoder():
    model = InvariantAutoencoder.paper_recipe(3)
    net = model._build_net(35)
    enc = [type(m) for m in net.encoder.modules()]
    assert isinstance(net.encoder, networks.LayerNormEncoder)
    assert enc.count(nn.LayerNorm) == 2 and enc.count(nn.ReLU) == 2 and enc.count(nn.Linear) == 3
    assert isinstance(net.decoder, networks.PolynomialDecoder)
    # All monomials of the 4 codes of degrees 1..3 (the Linear bias is the constant): C(7, 3) - 1 = 34.
    assert net.decoder.linear.in_features == comb(4 + 3, 3) - 1 == 34
    assert net.decoder.linear.out_features == 35
    assert net.relevance is None
    mlp = InvariantAutoencoder.paper_recipe(decoder="layernorm-mlp")._build_net(4)
    assert sum(isinstance(m, nn.LayerNorm) for m in mlp.decoder.modules()) == 2


def test_monomial_features_match_the_simulators_monomials():
    h = np.random.default_rng(0).standard_normal((50, 4))
    for degree in (1, 2, 3):
        got = networks.monomial_features(torch.tensor(h), degree).numpy()
        np.testing.assert_allclose(got, monomials(h, degree)[:, 1:], rtol=1e-12)


def test_paper_recipe_sets_every_item_explicitly():
    params = InvariantAutoencoder.paper_recipe(2).get_params()
    assert params == {**paper_recipe_params(2), "device": "auto", "seed": 0, "progress": False}
    expected = dict(
        encoder="layernorm-mlp", decoder="poly", decoder_degree=2, whiten=False, raw_input=True,
        mmd_kernel="poly", independence="poly", unbiased_penalties=False, lam_inv=1.0, lam_ind=1.0,
        pooled_independence_weight=2.0, lam_ent=0.01, standardize_codes=False, lam_rel=0.0, lr=1e-3,
        weight_decay=1e-4, epochs=400, patience=None, warmup_epochs=0, n_layers=2, encoder_layers=2,
    )  # fmt: skip
    assert {k: params[k] for k in expected} == expected
    assert InvariantAutoencoder.paper_recipe(3, epochs=5).epochs == 5
    with pytest.raises(InputError, match="no parameter"):
        InvariantAutoencoder.paper_recipe(3, epoch=5)


def _np_mmd_poly_v(x, y):
    k = lambda a, b: (a @ b.T + 1.0) ** 2  # noqa: E731
    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def _np_hsic_poly_v(x, y):
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    return np.trace((x @ x.T + 1) ** 2 @ h @ (y @ y.T + 1) ** 2 @ h) / n**2


def test_paper_objective_against_direct_numpy():
    """V-statistics on the raw codes, pooled HSIC counted twice plus within-environment terms, -0.01 log det."""
    model = InvariantAutoencoder.paper_recipe(2, hidden=8)
    torch.manual_seed(0)
    net = model._build_net(6).double()
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.standard_normal((40, 6)))
    env = torch.tensor(np.repeat([0, 1], 20))
    terms = loss_terms(net, z, env, None, model._weights())
    hv, hw = (t.detach().numpy() for t in net.encoder(z))
    e = env.numpy()
    assert terms["inv"].item() == pytest.approx(_np_mmd_poly_v(hw[e == 0], hw[e == 1]), rel=1e-9)
    ind = 2 * _np_hsic_poly_v(hw, hv) + sum(_np_hsic_poly_v(hw[e == g], hv[e == g]) for g in (0, 1))
    assert terms["ind"].item() == pytest.approx(ind, rel=1e-9)
    codes = np.column_stack([hv, hw])
    logdet = np.mean([np.linalg.slogdet(np.cov(codes[e == g].T) + 1e-4 * np.eye(4))[1] for g in (0, 1)])
    assert terms["ent"].item() == pytest.approx(logdet, rel=1e-9)
    recon = ((net.decoder(*net.encoder(z)) - z) ** 2).mean().item()
    weights = {"inv": 1.0, "ind": 1.0, "ent": 0.01, "rel": 0.0}
    assert total_loss(terms, weights).item() == pytest.approx(recon + terms["inv"].item() + ind - 0.01 * logdet)


@pytest.fixture(scope="module")
def tiny_poly2():
    train = simulate_paper("poly2", n_per_env=150, seed=3, **PAPER_DATA).data
    val = simulate_paper("poly2", n_per_env=100, seed=10003, **PAPER_DATA).data
    return train, val


def test_short_paper_training_decreases_loss_and_is_deterministic(tiny_poly2):
    train, val = tiny_poly2
    fit = lambda: InvariantAutoencoder.paper_recipe(2, epochs=12, hidden=16, batch_size=64, device="cpu", seed=5).fit(  # noqa: E731
        train.Z, train.env, validation=(val.Z, val.env)
    )
    a, b = fit(), fit()
    assert len(a.history_) == 12  # no early stopping
    first, best = a.history_[0]["val_total"], a.training_summary_["best_val_total"]
    assert best < first
    assert a.history_[-1]["val_total"] < first and a.history_[-1]["val_recon"] < a.history_[0]["val_recon"]
    np.testing.assert_array_equal(a.transform(train.Z), b.transform(train.Z))
    # The raw input: no centring, no scaling.
    np.testing.assert_array_equal(a.z_map_, np.eye(train.p))
    np.testing.assert_array_equal(a.z_mean_, np.zeros(train.p))


def test_explicit_validation_set_is_checked(tiny_poly2):
    train, val = tiny_poly2
    model = InvariantAutoencoder.paper_recipe(2, epochs=1, hidden=8, device="cpu")
    with pytest.raises(InputError, match="validation environments"):
        model.fit(train.Z, train.env, validation=(val.Z, np.full(val.n, "elsewhere", dtype=object)))
    with pytest.raises(InputError, match="columns"):
        model.fit(train.Z, train.env, validation=(val.Z[:, :3], val.env))
    with pytest.raises(InputError, match="exclude each other"):
        InvariantAutoencoder(raw_input=True, epochs=1).fit(train.Z, train.env)
    with pytest.raises(InputError, match="validation exposure"):
        InvariantAutoencoder(lam_rel=1.0, epochs=1).fit(train.Z, train.env, train.exposure, validation=(val.Z, val.env))


def test_option_names_agree_with_the_learner():
    assert O.PRESET_NAMES == PRESETS
    assert O.ENCODER_NAMES == networks.ENCODER_KINDS
    assert O.DECODER_NAMES == networks.DECODER_KINDS


def test_preset_mapping_fills_not_given_options_and_keeps_explicit_ones():
    paper = estimator_params({"preset": "paper"})
    assert {k: paper[k] for k in paper_recipe_params()} == paper_recipe_params()
    mixed = estimator_params({"preset": "paper", "epochs": 7, "decoder_degree": 2, "lam_inv": None})
    assert mixed["epochs"] == 7 and mixed["decoder_degree"] == 2 and mixed["lam_inv"] == 1.0
    mlp = estimator_params({"preset": "paper", "decoder": "layernorm-mlp"})
    assert mlp["decoder"] == "layernorm-mlp" and mlp["encoder"] == "layernorm-mlp"
    # Without a preset nothing changes: the declared defaults, which are the constructor's.
    default = InvariantAutoencoder().get_params()
    plain = estimator_params({})
    assert "raw_input" not in plain
    assert all(default[k] == v for k, v in plain.items())
    with pytest.raises(InputError, match="--preset"):
        estimator_params({"preset": "authors"})


def test_preset_paper_reaches_the_estimator_through_the_cli():
    from invariant_mr.cli import build_cli
    from invariant_mr.cli.common import method_context
    from invariant_mr.methods.registry import all_method_options

    command = build_cli().commands["run"]
    args = ["--table", "t.csv", "--env", "env", "--exposure", "x", "--outcome", "y", "--out", "out"]
    args += ["--methods", "invariant_autoencoder_insample", "--preset", "paper", "--epochs", "9"]
    click_ctx = command.make_context("run", args)
    names = set(all_method_options())
    values = {k: v for k, v in click_ctx.params.items() if k in names}
    ctx = method_context(0, 0.05, "robust", True, True, values)
    model = estimator_from_context(ctx, seed=4)
    params = model.get_params()
    assert params["decoder"] == "poly" and params["raw_input"] and not params["whiten"]
    assert params["epochs"] == 9 and params["patience"] is None and params["seed"] == 4


def test_context_options_without_preset_give_the_default_estimator():
    model = estimator_from_context(MethodContext(options={}), seed=0)
    assert model.get_params() == InvariantAutoencoder(seed=0).get_params()


def test_paper_recipe_save_load_round_trip(tiny_poly2, tmp_path):
    train, val = tiny_poly2
    model = InvariantAutoencoder.paper_recipe(2, epochs=2, hidden=8, device="cpu").fit(
        train.Z, train.env, validation=(val.Z, val.env)
    )
    loaded = InvariantAutoencoder.load(model.save(tmp_path / "paper"))
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.transform(val.Z), model.transform(val.Z))
