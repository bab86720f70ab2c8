"""The settings every inference step shares: level, covariance type, seed and test sizes.

Inference functions take one `InferenceSettings` instead of a loose set of
keyword arguments, so a pooled estimate, its per-environment rows, its
Anderson-Rubin set and its diagnostics are always computed at the same level
with the same covariance type. The methods layer builds it from the
command-line options; Python users build it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invariant_mr.errors import InputError

#: Default of `ar_max_instruments`: above it the robust AR set is not computed.
AR_MAX_INSTRUMENTS_DEFAULT = 200
#: Default number of permutations of the MMD and HSIC diagnostics.
DIAGNOSTIC_PERMUTATIONS_DEFAULT = 1000
COV_TYPES = ("robust", "unadjusted", "cluster")


@dataclass(frozen=True)
class InferenceSettings:
    """Level, covariance type and sizes shared by the inference of one analysis.

    seed: fixes every random step (`rng(salt)` gives one independent stream per step).
    alpha: 1 - confidence level of every interval and the level of every flag.
    cov_type: "robust" (HC0), "unadjusted" (classical) or "cluster" (cluster-robust; the
        cluster labels are passed to each function with the data).
    per_env: also estimate within each environment.
    ar_max_instruments: most instruments for which the robust Anderson-Rubin set
        is computed (its inversion costs O(k^3) per grid point).
    diagnostic_permutations: permutations of the MMD and HSIC tests.
    """

    seed: int = 0
    alpha: float = 0.05
    cov_type: str = "robust"
    per_env: bool = True
    ar_max_instruments: int = AR_MAX_INSTRUMENTS_DEFAULT
    diagnostic_permutations: int = DIAGNOSTIC_PERMUTATIONS_DEFAULT

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise InputError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.cov_type not in COV_TYPES:
            raise InputError(f"cov_type must be one of {', '.join(COV_TYPES)}, got {self.cov_type!r}")
        if int(self.ar_max_instruments) < 1:
            raise InputError(f"--ar-max-instruments must be at least 1, got {self.ar_max_instruments}")
        if int(self.diagnostic_permutations) < 1:
            raise InputError(
                f"--diagnostic-permutations must be at least 1, got {self.diagnostic_permutations}"
            )

    def rng(self, salt: str) -> np.random.Generator:
        """An independent generator per named random step, fixed by the seed."""
        return np.random.default_rng([self.seed, *salt.encode()])
