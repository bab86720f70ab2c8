"""Penalties of the invariant autoencoder against direct numpy implementations and known cases."""

import numpy as np
import pytest
import torch

from invariant_mr.instruments import penalties as P



def _np_sqd(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def _np_center(k):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return h @ k @ h


def np_mmd_poly(x, y):
    kxx, kyy, kxy = (x @ x.T + 1) ** 2, (y @ y.T + 1) ** 2, (x @ y.T + 1) ** 2
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def np_rbf(x, y, bw):
    d = _np_sqd(x, y)
    return sum(np.exp(-d / (2 * (s * bw) ** 2)) for s in (0.1, 1.0, 5.0))


def np_median_bw(x):
    d = _np_sqd(x, x)
    return np.sqrt(np.median(d[~np.eye(x.shape[0], dtype=bool)]))


def np_mmd_rbf(x, y):
    bw = np_median_bw(np.vstack([x, y]))
    return np_rbf(x, x, bw).mean() + np_rbf(y, y, bw).mean() - 2 * np_rbf(x, y, bw).mean()


def _offdiag_mean(k):
    n = k.shape[0]
    return (k.sum() - np.trace(k)) / (n * (n - 1))


def np_mmd_poly_u(x, y):
    return _offdiag_mean((x @ x.T + 1) ** 2) + _offdiag_mean((y @ y.T + 1) ** 2) - 2 * ((x @ y.T + 1) ** 2).mean()


def np_mmd_rbf_u(x, y):
    bw = np_median_bw(np.vstack([x, y]))
    return _offdiag_mean(np_rbf(x, x, bw)) + _offdiag_mean(np_rbf(y, y, bw)) - 2 * np_rbf(x, y, bw).mean()


def np_hsic_u(k, l_):
    """Song et al. (2012), eq. 5, written out with loops-free numpy."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), l_ - np.diag(np.diag(l_))
    one = np.ones(n)
    return (
        np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ kt @ lt @ one
    ) / (n * (n - 3))


def np_mmd_moments(x, y):
    return ((x.mean(0) - y.mean(0)) ** 2).sum() + ((np.cov(x.T, bias=True) - np.cov(y.T, bias=True)) ** 2).sum()


def np_hsic(k, l_):
    n = k.shape[0]
    return np.trace(k @ _np_center(l_)) / n**2


def np_hsic_poly(x, y):
    return np_hsic((x @ x.T + 1) ** 2, (y @ y.T + 1) ** 2)


def np_hsic_rbf(x, y):
    return np_hsic(np_rbf(x, x, np_median_bw(x)), np_rbf(y, y, np_median_bw(y)))


def np_crosscov(x, y):
    c = (x - x.mean(0)).T @ (y - y.mean(0)) / x.shape[0]
    return (c**2).sum()


def np_dcor(x, y):
    a = _np_center(np.sqrt(_np_sqd(x, x)))
    b = _np_center(np.sqrt(_np_sqd(y, y)))
    return (a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean())


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 2))
    y = rng.standard_normal((35, 2)) * 1.3 + 0.4
    return x, y


MMD_CASES = [("poly", np_mmd_poly), ("rbf", np_mmd_rbf), ("moments", np_mmd_moments)]
INDEP_CASES = [("poly", np_hsic_poly), ("rbf", np_hsic_rbf), ("crosscov", np_crosscov), ("dcor", np_dcor)]


@pytest.mark.parametrize("kernel,reference", MMD_CASES)
def test_mmd_v_statistic_matches_numpy(kernel, reference, xy):
    x, y = xy
    got = P.mmd(torch.tensor(x), torch.tensor(y), kernel, unbiased=False).item()
    assert got == pytest.approx(reference(x, y), rel=1e-9, abs=1e-12)
    assert got > 0


@pytest.mark.parametrize("kernel,reference", [("poly", np_mmd_poly_u), ("rbf", np_mmd_rbf_u)])
def test_mmd_u_statistic_matches_numpy(kernel, reference, xy):
    x, y = xy
    got = P.mmd(torch.tensor(x), torch.tensor(y), kernel, unbiased=True).item()
    assert got == pytest.approx(reference(x, y), rel=1e-9, abs=1e-12)


def test_u_statistics_are_unbiased_where_v_statistics_are_not():
    # Same distribution, heavy-tailed codes: the V-statistic is inflated (the bias the network could exploit),
    # the U-statistic averages to zero.
    rng = np.random.default_rng(13)
    u, v = [], []
    for _ in range(300):
        x = torch.tensor(rng.standard_normal((40, 2)))
        y = torch.tensor(rng.standard_normal((40, 2)))
        u.append(P.mmd_poly(x, y, unbiased=True).item())
        v.append(P.mmd_poly(x, y, unbiased=False).item())
    u, v = np.array(u), np.array(v)
    assert abs(u.mean()) < 3 * u.std() / np.sqrt(u.size)
    gap = v - u
    assert gap.mean() > 10 * gap.std() / np.sqrt(gap.size)


@pytest.mark.parametrize("kernel,_", MMD_CASES)
def test_mmd_zero_for_identical_samples_and_permutation_invariant(kernel, _, xy):
    x, y = (torch.tensor(a) for a in xy)
    assert P.mmd(x, x, kernel, unbiased=False).item() == pytest.approx(0.0, abs=1e-10)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    assert P.mmd(x[perm], y, kernel).item() == pytest.approx(P.mmd(x, y, kernel).item(), rel=1e-10)


@pytest.mark.parametrize("kernel,_", MMD_CASES)
def test_mmd_grows_with_mean_shift(kernel, _):
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.standard_normal((200, 2)))
    y = torch.tensor(rng.standard_normal((200, 2)))
    for unbiased in (True, False):
        values = [P.mmd(x, y + s, kernel, unbiased).item() for s in (0.0, 0.5, 1.0)]
        assert values[0] < values[1] < values[2] and values[2] > 0


def _dependent_pair(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((50, 2))
    y = np.column_stack([x[:, 0] ** 2 + 0.5 * rng.standard_normal(50), rng.standard_normal(50)])
    return x, y


@pytest.mark.parametrize("measure,reference", INDEP_CASES)
def test_independence_v_statistic_matches_numpy(measure, reference):
    x, y = _dependent_pair(3)
    got = P.independence(torch.tensor(x), torch.tensor(y), measure, unbiased=False).item()
    assert got == pytest.approx(reference(x, y), rel=1e-8, abs=1e-12)
    assert got > 0


@pytest.mark.parametrize(
    "measure,kernels",
    [
        ("poly", lambda x, y: ((x @ x.T + 1) ** 2, (y @ y.T + 1) ** 2)),
        ("crosscov", lambda x, y: (x @ x.T, y @ y.T)),
        ("rbf", lambda x, y: (np_rbf(x, x, np_median_bw(x)), np_rbf(y, y, np_median_bw(y)))),
    ],
)
def test_independence_u_statistic_matches_numpy(measure, kernels):
    x, y = _dependent_pair(3)
    got = P.independence(torch.tensor(x), torch.tensor(y), measure, unbiased=True).item()
    assert got == pytest.approx(np_hsic_u(*kernels(x, y)), rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("measure,_", INDEP_CASES)
def test_independence_permutation_invariant_and_detects_dependence(measure, _):
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.standard_normal((200, 2)))
    indep = torch.tensor(rng.standard_normal((200, 2)))
    dep = x + 0.3 * indep
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(5))
    # A joint row permutation leaves the statistic unchanged.
    assert P.independence(x[perm], dep[perm], measure).item() == pytest.approx(
        P.independence(x, dep, measure).item(), rel=1e-9
    )
    assert P.independence(x, dep, measure).item() > 5 * P.independence(x, indep, measure).item()


def test_constant_code_is_independent_of_everything():
    x = torch.zeros(30, 2, dtype=torch.float64)
    y = torch.tensor(np.random.default_rng(6).standard_normal((30, 2)))
    for measure in ("poly", "crosscov"):
        for unbiased in (True, False):
            assert P.independence(x, y, measure, unbiased).item() == pytest.approx(0.0, abs=1e-12)


def test_pairwise_mmd_is_mean_over_pairs():
    rng = np.random.default_rng(7)
    h = torch.tensor(rng.standard_normal((90, 2)))
    env = torch.tensor(np.repeat([0, 1, 2], 30))
    groups = [h[env == e] for e in range(3)]
    expected = np.mean([P.mmd_poly(groups[a], groups[b], unbiased=True).item() for a, b in ((0, 1), (0, 2), (1, 2))])
    assert P.pairwise_mmd(h, env, "poly").item() == pytest.approx(expected, rel=1e-12)
    assert P.pairwise_mmd(h, torch.zeros(90, dtype=torch.long)).item() == 0.0


def test_within_environment_independence_catches_cancellation():
    # Pooled, x and y are uncorrelated (opposite dependence in the two environments); within each they are not.
    rng = np.random.default_rng(8)
    x = rng.standard_normal((400, 1))
    sign = np.repeat([1.0, -1.0], 200)[:, None]
    y = sign * x + 0.1 * rng.standard_normal((400, 1))
    env = torch.tensor(np.repeat([0, 1], 200))
    xt, yt = torch.tensor(x), torch.tensor(y)
    pooled = P.pooled_and_within_independence(xt, yt, env, "crosscov", within=False, unbiased=False).item()
    both = P.pooled_and_within_independence(xt, yt, env, "crosscov", within=True, unbiased=False).item()
    assert pooled < 0.01 < 0.5 < both


def test_gaussian_logdet_matches_numpy():
    rng = np.random.default_rng(9)
    h = rng.standard_normal((80, 3)) @ np.diag([1.0, 2.0, 0.5])
    env = np.repeat([0, 1], 40)
    expected = np.mean([np.linalg.slogdet(np.cov(h[env == e].T) + 1e-4 * np.eye(3))[1] for e in (0, 1)])
    got = P.gaussian_logdet(torch.tensor(h), torch.tensor(env)).item()
    assert got == pytest.approx(expected, rel=1e-10)
    # Collapsing one direction lowers the entropy proxy.
    h2 = h.copy()
    h2[:, 2] *= 0.01
    assert P.gaussian_logdet(torch.tensor(h2), torch.tensor(env)).item() < got


def test_standardize_makes_scale_irrelevant():
    x = torch.tensor(np.random.default_rng(10).standard_normal((50, 2)))
    env = torch.tensor(np.repeat([0, 1], 25))
    a = P.pairwise_mmd(P.standardize(x), env).item()
    b = P.pairwise_mmd(P.standardize(0.05 * x), env).item()
    assert a == pytest.approx(b, rel=1e-4)


def test_penalties_are_differentiable():
    x = torch.tensor(np.random.default_rng(11).standard_normal((20, 2)), requires_grad=True)
    y = torch.tensor(np.random.default_rng(12).standard_normal((20, 2)))
    for kernel in P.MMD_KERNELS:
        (g,) = torch.autograd.grad(P.mmd(x, y + 0.5, kernel), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    for measure in P.INDEPENDENCE_MEASURES:
        (g,) = torch.autograd.grad(P.independence(x, x**2 + y, measure), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("unbiased", [True, False])
def test_fused_rbf_penalties_match_the_separate_functions(unbiased):
    rng = np.random.default_rng(9)
    w = torch.tensor(rng.standard_normal((60, 2)))
    v = torch.tensor(rng.standard_normal((60, 2))) + 0.5 * w
    env = torch.tensor(rng.permutation(np.repeat([0, 1], 30)))  # interleaved rows, as a shuffled batch
    inv, ind = P.rbf_invariance_and_independence(w, v, env, within=True, unbiased=unbiased)
    # K = 2: the pair's pooled bandwidth is the batch bandwidth, so the MMD is the separate one exactly.
    assert inv.item() == pytest.approx(P.pairwise_mmd(w, env, "rbf", unbiased).item(), rel=1e-10)
    # Pooled HSIC as the separate function; within-environment HSIC with the batch bandwidths.
    bw_w, bw_v = P.median_bandwidth(w), P.median_bandwidth(v)
    expected = P.hsic_rbf(w, v, unbiased).item()
    for e in (0, 1):
        m = env == e
        k, l_ = P.rbf_kernel(w[m], w[m], bw_w), P.rbf_kernel(v[m], v[m], bw_v)
        expected += P.hsic_from_kernels(k, l_, unbiased).item()
    assert ind.item() == pytest.approx(expected, rel=1e-10)
    # Without the within terms: the pooled HSIC alone.
    _, pooled = P.rbf_invariance_and_independence(w, v, env, within=False, unbiased=unbiased)
    assert pooled.item() == pytest.approx(P.hsic_rbf(w, v, unbiased).item(), rel=1e-10)


def test_fused_rbf_invariance_is_zero_for_identical_environments_and_positive_under_shift():
    rng = np.random.default_rng(10)
    x = torch.tensor(rng.standard_normal((40, 2)))
    env = torch.tensor(np.repeat([0, 1], 40))
    v = torch.tensor(rng.standard_normal((80, 1)))
    same, _ = P.rbf_invariance_and_independence(torch.cat([x, x]), v, env, unbiased=False)
    assert same.item() == pytest.approx(0.0, abs=1e-12)
    shifted, _ = P.rbf_invariance_and_independence(torch.cat([x, x + 1.0]), v, env)
    assert shifted.item() > 0.05
