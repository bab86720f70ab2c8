"""Check: the accuracy of `--meat-precision float32` as LD between instruments grows.

30,000 rows, 300 genotype-like 0/1/2 instruments thresholded from AR(1) Gaussians
(correlation rho between neighbours), 3 environments, 2SLS pooled and per environment
from the statistics route; prints the largest relative difference of the robust
first-stage F and of the robust AR set's lower end between float32 and float64 meats.

    OPENBLAS_NUM_THREADS=1 nice -n 10 python benchmarks/meat_precision_ld.py
"""
import numpy as np
from invariant_mr.estimators.sufficient_stats import EnvironmentCrossProducts
from invariant_mr.passes import LocalPasses, RowVectors
from invariant_mr.inference.from_stats import iv_estimates_from_stats
rng = np.random.default_rng(1)
n, p = 30000, 300
for rho in (0.0, 0.9, 0.99, 0.999):
    E = rng.normal(size=(n, p))
    Z = np.empty_like(E); Z[:, 0] = E[:, 0]
    for j in range(1, p): Z[:, j] = rho * Z[:, j-1] + np.sqrt(1 - rho**2) * E[:, j]
    G = (Z > 0.5).astype(float) + (Z > -0.5)  # genotype-like 0/1/2 with the same LD
    env = np.repeat([0, 1, 2], n // 3)
    u = rng.normal(size=n)
    d = G @ rng.normal(scale=0.05, size=p) + u + rng.normal(size=n)
    y = 0.5 * d + u + rng.normal(size=n)
    vec = RowVectors(env_codes=env, env_levels=("a", "b", "c"), exposure=d, outcome=y)
    stats = EnvironmentCrossProducts.from_arrays(G, vec, block_rows=4000)
    passes = LocalPasses.from_array(G, vec, 4000)
    m = {"t": "tsls"}
    a = iv_estimates_from_stats(stats, m, passes=passes, max_ar_instruments=1000)["t"]
    b = iv_estimates_from_stats(stats, m, passes=passes, max_ar_instruments=1000, meat_precision="float32")["t"]
    fe = max(abs(x.first_stage_f - y.first_stage_f) / abs(x.first_stage_f) for x, y in zip(a, b))
    ar = max(abs(x.ar_ci_low - y.ar_ci_low) / max(1, abs(x.ar_ci_low)) for x, y in zip(a, b) if x.ar_ci_low is not None and y.ar_ci_low is not None) if any(x.ar_ci_low is not None for x in a) else float("nan")
    c = np.linalg.cond(np.corrcoef(G, rowvar=False))
    print(f"rho {rho}: cond(corr) {c:.1e}, max rel F diff {fe:.1e}, AR low {ar:.1e}, F {a[0].first_stage_f:.2f}")
