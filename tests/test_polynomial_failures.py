"""Never crash: one-column spectra, discrete genotype-like data, and one method's failure isolated in run_analysis."""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.data import MRData
from invariant_mr.errors import InputError
from invariant_mr.instruments.linear import LinearInvariantInstruments, noise_whitened_spectrum
from invariant_mr.methods import registry
from invariant_mr.methods.registry import MethodContext, registered_methods
from invariant_mr.methods.spec import MethodSpec
from invariant_mr.pipeline import run_analysis
from invariant_mr.simulation import simulate_paper

OPTS = {"poly_degrees": "1,2", "poly_restarts": 2, "poly_bootstrap": 20, "diagnostic_permutations": 49}


def test_one_column_spectrum_is_its_own_signal():
    rank, evals, evecs, noise = noise_whitened_spectrum(np.array([[2.0]]), 1000)
    assert rank == 1 and evals.shape == (1,) and evecs.shape == (1, 1) and noise[0] == 2.0
    assert noise_whitened_spectrum(np.array([[0.0]]), 1000)[0] == 0


def test_closed_form_on_one_column():
    rng = np.random.default_rng(0)
    env = np.repeat([0, 1], 300)
    z = rng.standard_normal((600, 1)) * np.where(env == 1, 2.0, 1.0)[:, None]  # variance shifts: not invariant
    fit = LinearInvariantInstruments(random_state=0).fit(z, env)
    assert fit.signal_rank_ == 1 and fit.n_components_ == 0


@pytest.fixture(scope="module")
def genotype_like():
    """poly2 Z cut into three levels per column (0/1/2), the data that used to raise in stage 2."""
    sim = simulate_paper("poly2", n_envs=2, n_per_env=500, seed=0)
    d = sim.data
    Z = np.column_stack([np.digitize(c, np.quantile(c, [0.33, 0.66])) for c in d.Z.T]).astype(float)
    return MRData(Z=Z, exposure=d.exposure, outcome=d.outcome, env=d.env)


def test_discrete_data_abstain_instead_of_raising(genotype_like):
    result = run_analysis(genotype_like, "invariant_polynomial,tsls_all_env",
                          MethodContext(seed=1, per_env=False, options=OPTS))  # fmt: skip
    (naive,) = result.select("tsls_all_env")
    assert naive.available
    (row,) = result.select("invariant_polynomial")
    assert row.available or ("would help" in row.reason and not row.reason.startswith("failed"))
    assert "genotype calls" in row.reason  # recognised before stage 1 searches for latents in noise


def test_continuous_columns_are_not_mistaken_for_calls(genotype_like):
    from invariant_mr.data import genotype_calls as _all_columns_are_calls

    assert _all_columns_are_calls(genotype_like.Z)
    noisy = genotype_like.Z + 0.01 * np.random.default_rng(0).standard_normal(genotype_like.Z.shape)
    assert not _all_columns_are_calls(noisy)
    one_continuous = genotype_like.Z.copy()
    one_continuous[:, 0] = noisy[:, 0]
    assert not _all_columns_are_calls(one_continuous)
    # Calls stay calls with missing calls imputed by the column mean (5%), or standardised.
    rng = np.random.default_rng(1)
    imputed = np.asarray(genotype_like.Z, dtype=float).copy()
    missing = rng.random(imputed.shape) < 0.05
    imputed[missing] = np.broadcast_to(imputed.mean(axis=0), imputed.shape)[missing] + 0.013
    assert _all_columns_are_calls(imputed)
    assert _all_columns_are_calls((imputed - imputed.mean(0)) / imputed.std(0))


def _always_fails(data, ctx):
    raise ValueError("attempt to get argmax of an\n empty sequence")


def _bad_input(data, ctx):
    raise InputError("the input is unusable")


@pytest.fixture
def failing_methods(monkeypatch):
    """Two throw-away methods, registered only for the test that asks for them."""
    registered_methods()  # the built-ins first, so the registry is complete
    for name, function in (("_test_always_fails", _always_fails), ("_test_bad_input", _bad_input)):
        monkeypatch.setitem(registry._REGISTRY, name, MethodSpec(name, function, "a test", False, False, (), "other"))


def test_one_failing_method_does_not_take_the_others_down(failing_methods):
    data = simulate_paper("linear", n_envs=2, n_per_env=200, seed=1).data
    with pytest.warns(RuntimeWarning, match="_test_always_fails failed: ValueError"):
        result = run_analysis(data, "_test_always_fails,tsls_all_env", MethodContext(seed=1, per_env=False))
    (failed,) = result.select("_test_always_fails")
    assert not failed.available
    assert failed.reason == "failed: ValueError: attempt to get argmax of an empty sequence"
    assert result.select("tsls_all_env")[0].available


def test_input_errors_still_propagate(failing_methods):
    data = simulate_paper("linear", n_envs=2, n_per_env=200, seed=1).data
    with pytest.raises(InputError, match="unusable"):
        run_analysis(data, "_test_bad_input,tsls_all_env", MethodContext(seed=1, per_env=False))


def test_stage1_runs_on_one_blas_thread(monkeypatch):
    """Issue 19: on OpenBLAS's default threads a busy machine turned a 7.5 s fit into 1,325 s."""
    from threadpoolctl import threadpool_info

    from invariant_mr.instruments.polynomial import PolynomialInvariantInstruments

    seen = []
    original = PolynomialInvariantInstruments._optimise

    def spy(self, *args, **kwargs):
        seen.append({d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PolynomialInvariantInstruments, "_optimise", spy)
    sim = simulate_paper("poly2", n_envs=2, n_per_env=150, seed=0)
    PolynomialInvariantInstruments(degrees=(2,), latent_dims=4, n_restarts=1, max_iter=20, scan_iter=10,
                                   n_permutations=19, random_state=0).fit(sim.data.Z, sim.data.env)  # fmt: skip
    assert seen and all(threads <= {1} for threads in seen)


def test_cli_run_keeps_the_other_methods_when_one_fails(failing_methods, tmp_path):
    import csv
    import json

    from invariant_mr.cli import main

    data = simulate_paper("linear", n_envs=2, n_per_env=150, seed=2).data
    table = tmp_path / "data.tsv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["environment", "exposure", "outcome", *[f"z{j}" for j in range(data.p)]])
        for i in range(data.n):
            writer.writerow([data.env[i], f"{data.exposure[i]:.8g}", f"{data.outcome[i]:.8g}",
                             *[f"{v:.8g}" for v in data.Z[i]]])  # fmt: skip
    out = tmp_path / "out"
    with pytest.warns(RuntimeWarning, match="_test_always_fails failed"):
        code = main(["run", "--table", str(table), "--env", "environment", "--exposure", "exposure",
                     "--outcome", "outcome", "--instruments", "z*", "--methods", "_test_always_fails,tsls_all_env",
                     "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    rows = {(e["method"], e["scope"]): e for e in json.loads((out / "results.json").read_text())["estimates"]}
    assert rows[("_test_always_fails", "pooled")]["extra"]["reason"].startswith("failed: ValueError")
    assert rows[("tsls_all_env", "pooled")]["estimate"] is not None


def test_an_exact_stage_1_is_not_blamed_on_measurement_noise():
    """MLP mixing of K = 2 blocks: four columns, four latents, Z reconstructed exactly. The abstention
    must not say that noise hides the latents (it once quoted an error of 1e-16 as the likely cause)."""
    data = simulate_paper("mlp", n_envs=2, n_per_env=3000, seed=104).data
    (row,) = run_analysis(data, "invariant_polynomial", MethodContext(seed=0, per_env=False, options=OPTS)).select(
        "invariant_polynomial")
    assert not row.available and row.reason.startswith("no invariant direction found")
    assert "reconstructs Z exactly" in row.reason and "likely hides" not in row.reason
    assert "would help" in row.reason
