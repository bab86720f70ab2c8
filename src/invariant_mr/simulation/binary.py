"""A binary outcome with a confounded continuous exposure, for IV odds-ratio estimators.

    D = Z pi + v,                       v ~ N(0, 1)
    U = rho v + sqrt(1 - rho^2) e,      e ~ N(0, 1) independent of v
    P(Y = 1 | D, U) = expit(b0 + beta D + gamma U)

Z are genotype dosages (Hardy-Weinberg, allele frequencies 0.1-0.5), each with
the same first-stage coefficient per standardised dosage (`strength`). U is the
unmeasured confounder. With rho = 1 the confounder is the first-stage error
itself (the control-function model, under which two-stage residual inclusion
is consistent for beta); with rho < 1 part of U is independent of everything
observed, and every IV logistic estimator is attenuated for beta
(non-collapsibility).

Truths returned: `beta` (the log OR conditional on U) and
`population_log_or`, the log odds ratio of the population-averaged risks
P(Y(d) = 1) = E_U expit(b0 + beta d + gamma U) between d = mean + 1 and
d = mean (Gauss-Hermite quadrature over U), i.e. what a randomised trial that
set everyone's exposure would report per unit at the mean exposure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from invariant_mr.errors import InputError


@dataclass(frozen=True)
class BinaryOutcomeData:
    Z: np.ndarray
    exposure: np.ndarray
    outcome: np.ndarray
    beta: float
    population_log_or: float
    params: dict


def population_log_or(b0: float, beta: float, gamma: float, d0: float, n_nodes: int = 80) -> float:
    """logit E expit(b0 + beta (d0 + 1) + gamma U) - logit E expit(b0 + beta d0 + gamma U), U ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n_nodes)
    w = w / w.sum()
    p1 = float(w @ special.expit(b0 + beta * (d0 + 1) + gamma * x))
    p0 = float(w @ special.expit(b0 + beta * d0 + gamma * x))
    return float(special.logit(p1) - special.logit(p0))


def simulate_binary_outcome(
    n: int = 5000,
    n_variants: int = 10,
    *,
    beta: float = 0.5,
    gamma: float = 1.0,
    b0: float = -1.0,
    rho: float = 1.0,
    strength: float = 0.15,
    seed: int | np.random.Generator = 0,
) -> BinaryOutcomeData:
    """One seeded data set (see the module docstring)."""
    if n < 10 or n_variants < 1:
        raise InputError("need at least 10 samples and 1 variant")
    if not 0 <= rho <= 1:
        raise InputError(f"rho must be in [0, 1], got {rho}")
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.1, 0.5, n_variants)
    Z = rng.binomial(2, freq, size=(n, n_variants)).astype(float)
    pi = strength / np.sqrt(2 * freq * (1 - freq))
    v = rng.standard_normal(n)
    D = Z @ pi + v
    U = rho * v + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    Y = (rng.random(n) < special.expit(b0 + beta * D + gamma * U)).astype(float)
    d_mean = float(2 * freq @ pi)
    return BinaryOutcomeData(
        Z=Z,
        exposure=D,
        outcome=Y,
        beta=float(beta),
        population_log_or=population_log_or(b0, beta, gamma, d_mean),
        params={"n": n, "n_variants": n_variants, "beta": beta, "gamma": gamma, "b0": b0, "rho": rho,
                "strength": strength},
    )


__all__ = ["BinaryOutcomeData", "population_log_or", "simulate_binary_outcome"]
