"""The registered `invariant_polynomial` method: options -> learner, cross-fitting, bootstrap SE, diagnostics."""

from __future__ import annotations

import re

import numpy as np

import pytest

from invariant_mr.errors import InputError
from invariant_mr.methods.registry import MethodContext
from invariant_mr.pipeline import run_analysis
from invariant_mr.simulation import simulate_paper

OPTS = {"poly_degrees": "1,2", "poly_restarts": 2, "poly_bootstrap": 20, "diagnostic_permutations": 49}


@pytest.fixture(scope="module")
def poly2():
    return simulate_paper("poly2", n_envs=2, n_per_env=800, seed=3)


@pytest.fixture(scope="module")
def result(poly2):
    return run_analysis(poly2.data, "invariant_polynomial,tsls_all_env", MethodContext(seed=1, per_env=False, options=OPTS))


def test_recovers_the_effect_where_all_instruments_are_confounded(result, poly2):
    (row,) = result.select("invariant_polynomial")
    (naive,) = result.select("tsls_all_env")
    # One seed: the 95% interval covers (bias and calibration over seeds: test_statistical_tier.py).
    assert row.ci_low <= poly2.theta <= row.ci_high
    assert abs(naive.estimate - poly2.theta) > 10 * naive.se  # while 2SLS on every column is far off
    assert re.fullmatch(r"direction bootstrap \((1\d|20) draws\)", row.extra["se_method"])  # at most 20 valid draws
    assert row.se != row.extra["se_fixed_directions"]
    stage1 = row.extra["stage1"]
    assert len(stage1) == 2 and all(s["degree"] == 2 for s in stage1)  # the true degree, chosen on held-out rows
    leak = row.extra["leak_bias"]  # the abstention rule's record: per fold, what the bias bound allowed
    assert [r["kept"] for r in leak] == [s["n_components"] for s in stage1]
    for r in leak:  # the exact test's count, or more only where the bias bound allows them
        k = r["kept"]
        assert k == r["exact_test"] or (k > r["exact_test"] and r["bound"][k - 1] <= 0.5 * r["se"][k - 1])


def test_diagnostics_use_the_learned_varying_latents(result):
    names = {d.name for d in result.diagnostics if d.scope == "pooled"}
    assert "invariant_polynomial/independence_hsic" in names
    hsic = next(d for d in result.diagnostics if d.name == "invariant_polynomial/independence_hsic")
    assert hsic.pvalue is not None and hsic.pvalue > 0.01  # valid instruments pass (the linear residual would not)


def test_seeded(poly2, result):
    again = run_analysis(poly2.data, "invariant_polynomial", MethodContext(seed=1, per_env=False, options=OPTS))
    assert again.select("invariant_polynomial")[0].estimate == result.select("invariant_polynomial")[0].estimate


@pytest.mark.parametrize("options", [{"poly_degrees": "zero"}, {"poly_degrees": "0,2"}, {"poly_restarts": 0}])
def test_bad_options(poly2, options):
    with pytest.raises(InputError):
        run_analysis(poly2.data, "invariant_polynomial", MethodContext(options={**OPTS, **options}))


def test_simulate_cli_takes_the_authors_recipe_and_noise(tmp_path):
    import json

    from invariant_mr.cli import main

    out = tmp_path / "sim"
    assert main(["simulate", "--model", "paper", "--setting", "poly3", "--n-per-env", "200", "--noise", "0.05",
                 "--weights", "clipped-normal", "--mix-seed", "100", "--out", str(out)]) == 0
    truth = json.loads((out / "truth.json").read_text())
    assert (truth["noise"], truth["weights"], truth["mix_seed"]) == (0.05, "clipped-normal", 100)


def test_hsic_complement_is_the_varying_codes_even_when_folds_keep_different_numbers_of_directions():
    """Unequal folds once made the HSIC and leak checks fall back to the residual of Z, which holds W^2
    under polynomial mixing and rejected correct fits; each fold now gives its most varying directions."""
    from invariant_mr.methods.polynomial import _varying_codes

    class Fold:
        def __init__(self, width, offset):
            self.code_directions_ = np.zeros((3, width))
            self.offset = offset

        def directions(self, Z):
            return np.arange(self.code_directions_.shape[1])[None, :] + self.offset + 0 * Z[:, :1]

    data = type("D", (), {"Z": np.zeros((6, 2)), "n": 6})()
    folds = np.array([0, 0, 0, 1, 1, 1])
    out = _varying_codes(data, folds, [Fold(5, 0), Fold(4, 100)], [2, 2])  # 3 and 2 varying directions
    assert out.shape == (6, 2)
    assert (out[:3] == [3, 4]).all() and (out[3:] == [102, 103]).all()  # the last (most varying) of each fold
    assert _varying_codes(data, folds, [Fold(3, 0), Fold(4, 0)], [3, 2]) is None  # a fold kept every direction
