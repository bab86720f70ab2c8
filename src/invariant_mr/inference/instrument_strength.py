"""When are instruments too weak to trust a Wald interval? A first-stage F threshold per estimator.

For 2SLS the rule of thumb F >= 10 (Staiger & Stock 1997) is kept: its
many-instrument bias towards OLS grows with the number of instruments, so
the strict Stock-Yogo size thresholds for 2SLS rise steeply with it (above
40 at 20 instruments) and would call almost every polygenic design weak.

LIML is median-unbiased under many instruments, and its Wald test keeps
its size at far lower strength. Stock & Yogo (2005, Table 5.4) tabulate the
first-stage F below which a nominal 5% LIML Wald test can reject more than
10% of the time (one endogenous regressor): 16.38 with one instrument,
falling to 3.18 at 19 and levelling at about 3.9 from 33 to 100
instruments. Beyond the table the largest value of its tail (3.90) is used,
which errs towards calling instruments weak. Other estimators (Fuller,
fixed k) keep the rule of thumb.
"""

from __future__ import annotations

#: Staiger & Stock (1997) rule of thumb for 2SLS (and any estimator without a tabulated threshold).
RULE_OF_THUMB_F = 10.0

#: Stock & Yogo (2005), Table 5.4: LIML, one endogenous regressor, 10% maximal size of a nominal 5% Wald
#: test; entry i is for i + 1 excluded instruments (as tabulated in ivreg2's `cdsy`, type limlsize10).
LIML_SIZE10 = (
    16.38, 8.68, 6.46, 5.44, 4.84, 4.45, 4.18, 3.97, 3.81, 3.68, 3.58, 3.50, 3.42, 3.36, 3.31, 3.27, 3.24,
    3.20, 3.18, 3.21, 3.39, 3.57, 3.68, 3.75, 3.79, 3.82, 3.85, 3.86, 3.87, 3.88, 3.89, 3.89, 3.90, 3.90,
    3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90,
    3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.90, 3.89, 3.89, 3.89, 3.89,
    3.89, 3.89, 3.89, 3.89, 3.89, 3.89, 3.88, 3.88, 3.88, 3.88, 3.88, 3.88, 3.88, 3.87, 3.87, 3.87, 3.87,
    3.87, 3.86, 3.86, 3.86, 3.86, 3.85, 3.85, 3.85, 3.85, 3.84, 3.84, 3.84, 3.84, 3.83, 3.83,
)  # fmt: skip


def weak_f_threshold(estimator: str | None, n_instruments: int | None) -> tuple[float, str]:
    """(first-stage F below which the instruments count as weak, where the number comes from)."""
    if estimator == "liml" and n_instruments:
        k = int(n_instruments)
        value = LIML_SIZE10[k - 1] if k <= len(LIML_SIZE10) else max(LIML_SIZE10[32:])
        return value, f"Stock-Yogo LIML 10% size, {k} instruments"
    return RULE_OF_THUMB_F, "rule of thumb"


__all__ = ["LIML_SIZE10", "RULE_OF_THUMB_F", "weak_f_threshold"]
