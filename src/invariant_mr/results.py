"""Immutable result objects: one `Estimate` per (method, scope), collected in an `AnalysisResult`."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from invariant_mr.provenance import json_default

#: Columns of `estimates.tsv`, in order. Later fields are optional per method.
ESTIMATE_COLUMNS = (
    "method",
    "scope",
    "estimate",
    "se",
    "ci_low",
    "ci_high",
    "n",
    "n_instruments",
    "first_stage_f",
    "ar_ci_low",
    "ar_ci_high",
    "pvalue",
    "exposure",
)


def _clean(value):
    """NaN/inf become None so the JSON is valid and 'not available' is explicit."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class Estimate:
    """One causal-effect estimate.

    `scope` is "pooled" or "env:<label>". `ar_ci_low`/`ar_ci_high` are the
    Anderson-Rubin set's bounds (None on an unbounded side). `extra` holds
    method-specific numbers (kappa, fold estimates, intercepts, ...).
    `exposure` names the exposure the row is about: set by multivariable
    methods (one row per exposure) and by two-sample runs; None otherwise.
    """

    method: str
    scope: str
    estimate: float
    se: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    n_instruments: int | None = None
    first_stage_f: float | None = None
    ar_ci_low: float | None = None
    ar_ci_high: float | None = None
    pvalue: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    exposure: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    @property
    def label(self) -> str:
        """The method, with the exposure when the row is one of several (multivariable MR)."""
        return self.method if self.exposure is None else f"{self.method}[{self.exposure}]"

    @classmethod
    def unavailable(
        cls, method: str, scope: str, n: int, n_instruments: int | None, reason: str, exposure: str | None = None
    ) -> "Estimate":
        """A row saying why a method has no estimate here (estimate NaN, no SE or interval)."""
        return cls(
            method, scope, float("nan"), None, None, None, n, n_instruments, extra={"reason": reason}, exposure=exposure
        )

    def to_dict(self) -> dict:
        out = {f.name: _clean(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        out["extra"] = {k: _clean(v) for k, v in self.extra.items()}
        return out


@dataclass(frozen=True)
class Diagnostic:
    """An assumption check: a statistic, a p-value and a plain-language flag."""

    name: str
    scope: str
    statistic: float | None
    pvalue: float | None
    flag: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "detail", MappingProxyType(dict(self.detail)))

    def to_dict(self) -> dict:
        out = {f.name: _clean(getattr(self, f.name)) for f in fields(self) if f.name != "detail"}
        out["detail"] = {k: _clean(v) for k, v in self.detail.items()}
        return out


@dataclass(frozen=True)
class AnalysisResult:
    """All estimates and diagnostics of one analysis, with provenance.

    Self-contained: `summary()`, `to_json()` and `to_tsv()` never need the data.
    """

    estimates: tuple[Estimate, ...]
    provenance: Mapping[str, Any]
    diagnostics: tuple[Diagnostic, ...] = ()
    truth: Mapping[str, Any] | None = None
    artifacts: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "estimates", tuple(self.estimates))
        object.__setattr__(self, "diagnostics", tuple(self.diagnostics))
        object.__setattr__(self, "provenance", MappingProxyType(dict(self.provenance)))
        object.__setattr__(self, "artifacts", MappingProxyType(dict(self.artifacts)))

    def select(self, method: str | None = None, scope: str | None = None) -> tuple[Estimate, ...]:
        return tuple(
            e
            for e in self.estimates
            if (method is None or e.method == method) and (scope is None or e.scope == scope)
        )

    def to_dict(self) -> dict:
        out = {
            "estimates": [e.to_dict() for e in self.estimates],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "provenance": dict(self.provenance),
        }
        if self.truth is not None:
            out["truth"] = dict(self.truth)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=json_default)

    def to_tsv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
        writer.writerow(ESTIMATE_COLUMNS)
        for est in self.estimates:
            row = est.to_dict()
            writer.writerow(["NA" if row[c] is None else row[c] for c in ESTIMATE_COLUMNS])
        return buf.getvalue()

    def summary(self, scopes: Sequence[str] | None = ("pooled",)) -> str:
        """A fixed-width table of estimates (pooled only by default), plus diagnostics."""
        theta = None if self.truth is None else self.truth.get("theta")
        level = f"{100 * (1 - self.provenance.get('parameters', {}).get('alpha', 0.05)):g}%"
        header = (
            f"{'method':<32}{'scope':<12}{'estimate':>10}{'se':>9}{level + ' CI':>22}{'AR ' + level + ' set':>26}"
            f"{'F':>9}{'#IV':>6}"
        )
        if theta is not None:
            header += f"{'bias':>9}"
        lines = [header, "-" * len(header)]
        for e in self.estimates:
            if scopes is not None and e.scope not in scopes:
                continue
            ci = _fmt_interval(e.ci_low, e.ci_high)
            line = (
                f"{e.label:<32}{e.scope:<12}{_fmt(e.estimate, 10)}{_fmt(e.se, 9)}{ci:>22}{_fmt_ar(e):>26}"
                f"{_fmt(e.first_stage_f, 9, '.1f')}{'' if e.n_instruments is None else e.n_instruments:>6}"
            )
            if theta is not None:
                line += _fmt(e.estimate - theta, 9)
            lines.append(line)
        if self.diagnostics:
            lines += ["", "Diagnostics:"]
            width = max(len(d.name) for d in self.diagnostics) + 2
            scope_width = max(len(d.scope) for d in self.diagnostics) + 2
            for d in self.diagnostics:
                lines.append(
                    f"  {d.name:<{width}}{d.scope:<{scope_width}}stat={_fmt(d.statistic, 0)}  "
                    f"p={_fmt(d.pvalue, 0, '.3g')}  {d.flag}"
                )
        return "\n".join(lines)


def _fmt(value, width: int, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'NA':>{width}}"
    return f"{value:>{width}{spec}}"


def _fmt_ar(e: "Estimate") -> str:
    """The Anderson-Rubin set as printed: an interval, two rays, 'empty', or '' when not computed."""
    kind = e.extra.get("ar_set_kind")
    if kind is None or kind == "not computed":
        return ""
    if kind == "empty":
        return "empty"
    intervals = e.extra.get("ar_set") or []
    if kind == "two_rays" and len(intervals) == 2:
        return f"[-inf, {intervals[0][1]:.3f}] U [{intervals[1][0]:.3f}, inf]"
    return _fmt_interval(e.ar_ci_low, e.ar_ci_high) + (" (hull)" if kind == "union" else "")


def _fmt_interval(low, high) -> str:
    lo = "-inf" if low is None or (isinstance(low, float) and math.isinf(low)) else f"{low:.3f}"
    hi = "inf" if high is None or (isinstance(high, float) and math.isinf(high)) else f"{high:.3f}"
    return f"[{lo}, {hi}]"


def estimates_from_dicts(rows: Sequence[dict]) -> tuple[Estimate, ...]:
    names = {f.name for f in fields(Estimate)}
    return tuple(Estimate(**{k: v for k, v in r.items() if k in names}) for r in rows)


__all__ = ["Estimate", "Diagnostic", "AnalysisResult", "ESTIMATE_COLUMNS", "asdict"]
