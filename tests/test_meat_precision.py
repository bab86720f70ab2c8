"""The second pass: shared centring of the blocks and the single-precision k x k meats."""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.errors import InputError
from invariant_mr.estimators.kclass_from_stats import first_stage_request, kclass_requests
from invariant_mr.estimators.sufficient_stats import EnvironmentCrossProducts, MeatKernel, partial_out
from invariant_mr.inference.from_stats import iv_estimates_from_stats
from invariant_mr.passes import LocalPasses, RowVectors
from invariant_mr.simulation.balding_nichols import simulate_balding_nichols


def _setup(shuffle: bool, seed: int = 3):
    sim = simulate_balding_nichols(n_envs=3, n_per_env=400, n_variants=15, seed=seed)
    data = sim.to_mrdata(include_covariates=True)
    Z = np.asarray(sim.genotypes, dtype=float)
    vec = RowVectors.from_mrdata(data)
    if shuffle:  # blocks that mix environments (the gathered centring) as well as sorted ones
        order = np.random.default_rng(seed).permutation(Z.shape[0])
        data = data.subset(order) if hasattr(data, "subset") else None
        if data is None:
            pytest.skip("MRData has no row subset")
        Z = Z[order]
        vec = RowVectors.from_mrdata(data)
    stats = EnvironmentCrossProducts.from_arrays(Z, vec, block_rows=170)
    return Z, vec, stats


def _designs(stats):
    return [partial_out(stats, env_fixed_effects=True)] + [partial_out(stats, env=lv) for lv in stats.env_levels]


def _direct_meat(design, Z, vec, request):
    """sum_i w_i w_i' over the design's residualised rows, from all rows at once."""
    R = design.residual_rows(np.arange(Z.shape[0]), Z, vec)
    V = R[:, : design.k] if request.directions is None else R @ request.directions
    U = R @ request.residuals
    W = (V[:, None, :] * U[:, :, None]).reshape(R.shape[0], -1)
    return W.T @ W


@pytest.mark.parametrize("shuffle", [False, True])
def test_shared_centring_gives_each_designs_own_meats(shuffle):
    Z, vec, stats = _setup(shuffle)
    requests = []
    for d in _designs(stats):
        requests += [*kclass_requests(d, "tsls"), first_stage_request(d)]
    got = LocalPasses.from_array(Z, vec, 170).run(MeatKernel(requests))
    assert len({MeatKernel(requests).groups[0][0].centring_key()}) == 1
    keys = {d.centring_key() for d in _designs(stats)}
    assert len(keys) == 1  # the pooled design with fixed effects and every environment's centre alike
    for req, meat in zip(requests, got):
        ref = _direct_meat(req.design, Z, vec, req)
        np.testing.assert_allclose(meat, ref, rtol=1e-11, atol=1e-11 * np.abs(ref).max())


def test_float32_changes_only_the_k_by_k_meats_and_by_little():
    Z, vec, stats = _setup(False)
    requests = []
    for d in _designs(stats):
        requests += [*kclass_requests(d, "tsls"), first_stage_request(d)]
    passes = LocalPasses.from_array(Z, vec, 170)
    exact = passes.run(MeatKernel(requests))
    single = passes.run(MeatKernel(requests, precision="float32"))
    n_changed = 0
    for req, a, b in zip(requests, exact, single):
        if req.instrument_coordinates:
            # Per block one float32 product (relative rounding ~ 2^-24 per term), summed in float64.
            err = np.abs(a - b).max() / np.abs(a).max()
            assert 0 < err < 1e-5
            n_changed += 1
        else:
            assert np.array_equal(a, b)  # the SEs' meats never change
    assert n_changed >= len(_designs(stats))  # at least the first-stage F meat of every design


def test_request_keys_keep_the_precisions_apart():
    _, _, stats = _setup(False)
    d = _designs(stats)[0]
    se, f = kclass_requests(d, "tsls")[0], first_stage_request(d)
    k64, k32 = MeatKernel([se, f]), MeatKernel([se, f], precision="float32")
    assert k64.request_key(se) == k32.request_key(se)
    assert k64.request_key(f) != k32.request_key(f)
    assert k32.with_requests([f]).precision == "float32"
    with pytest.raises(InputError, match="meat precision"):
        MeatKernel([f], precision="float16")


def test_float32_estimates_and_ses_equal_and_f_close():
    Z, vec, stats = _setup(False, seed=11)
    passes = LocalPasses.from_array(Z, vec, 170)
    methods = {"tsls_all_env": "tsls", "liml_all_env": "liml"}
    a = iv_estimates_from_stats(stats, methods, passes=passes, max_ar_instruments=200)
    b = iv_estimates_from_stats(stats, methods, passes=passes, max_ar_instruments=200, meat_precision="float32")
    for m in methods:
        for x, y in zip(a[m], b[m]):
            assert (x.estimate, x.se, x.ci_low, x.ci_high) == (y.estimate, y.se, y.ci_low, y.ci_high)
            fx, fy = x.extra.get("first_stage_f"), y.extra.get("first_stage_f")
            if fx is None:
                fx, fy = x.first_stage_f, y.first_stage_f
            assert fx is not None and abs(fx - fy) <= 1e-5 * abs(fx)
            for lo_hi in ("ar_ci_low", "ar_ci_high"):  # the robust AR set's ends (None: unbounded)
                u, v = getattr(x, lo_hi), getattr(y, lo_hi)
                assert (u is None) == (v is None)
                assert u is None or abs(u - v) <= 1e-5 * max(1.0, abs(u))
            assert x.extra.get("ar_set_kind") == y.extra.get("ar_set_kind")


def test_block_buffers_live_in_the_accumulator_not_the_kernel():
    """Dask's threaded scheduler runs one kernel object on several chunks at once: buffers kept on the
    kernel would be shared between them (a race that made test_dask_reduction flaky)."""
    Z, vec, stats = _setup(False)
    requests = [first_stage_request(d) for d in _designs(stats)]
    kernel = MeatKernel(requests, precision="float32")
    state = dict(kernel.__dict__)
    acc = kernel.start()
    kernel.add(acc, np.arange(170), Z[:170], vec)
    assert kernel.__dict__.keys() == state.keys() and acc[-1]  # the buffers are the accumulator's
    assert len(kernel.finish(acc)) == len(requests)
