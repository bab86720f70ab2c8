"""Standard IV baselines on all instruments: OLS, 2SLS, LIML (with environment fixed effects)."""

from __future__ import annotations

from .data import MRData
from .estimation import iv_estimates
from .registry import MethodContext, MethodOutput, register_method
from .weak_iv import AR_MAX_INSTRUMENTS


@register_method("ols", description="OLS of outcome on exposure, environment fixed effects (confounded)")
def ols(data: MRData, ctx: MethodContext) -> MethodOutput:
    return MethodOutput(tuple(iv_estimates(data, None, ctx, method="ols", kappa="ols")))


@register_method(
    "tsls_all", description="2SLS with every instrument, no environment adjustment", options=(AR_MAX_INSTRUMENTS,)
)
def tsls_all(data: MRData, ctx: MethodContext) -> MethodOutput:
    return MethodOutput(
        tuple(iv_estimates(data, data.Z, ctx, method="tsls_all", env_fixed_effects=False))
    )


@register_method(
    "tsls_all_env", description="2SLS with every instrument and environment fixed effects", options=(AR_MAX_INSTRUMENTS,)
)
def tsls_all_env(data: MRData, ctx: MethodContext) -> MethodOutput:
    return MethodOutput(tuple(iv_estimates(data, data.Z, ctx, method="tsls_all_env")))


@register_method(
    "liml_all_env", description="LIML with every instrument and environment fixed effects", options=(AR_MAX_INSTRUMENTS,)
)
def liml_all_env(data: MRData, ctx: MethodContext) -> MethodOutput:
    return MethodOutput(tuple(iv_estimates(data, data.Z, ctx, method="liml_all_env", kappa="liml")))
