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
    "note",
)

#: p-values below this print as "<1e-16": double precision cannot resolve smaller tail areas.
PVALUE_FLOOR = 1e-16


#: Provenance entries that differ between two identical analyses: when it ran, how long each step took, and the
#: command line as typed (it names the --out folder and --overwrite). results.json keeps them apart, in a last
#: "volatile" block, so that a rerun can be diffed byte for byte above it; every option's value stays in
#: "parameters" and `from_dict` puts them back into the provenance.
VOLATILE_KEYS = frozenset({"created_utc", "method_seconds", "seconds", "command"})
VOLATILE_ABOUT = ("the command line as typed (with its --out), when the run happened and how long its steps took: "
                  "the only part of this file that two runs of the same analysis do not share")


def split_volatile(provenance: Mapping[str, Any]) -> tuple[dict, dict]:
    """(stable provenance, volatile entries by dotted path, e.g. "streamed_passes.passes[0].seconds")."""
    volatile: dict[str, Any] = {}

    def walk(value, path):
        if isinstance(value, Mapping):
            kept = {}
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if key in VOLATILE_KEYS:
                    volatile[where] = item
                else:
                    kept[key] = walk(item, where)
            return kept
        if isinstance(value, (list, tuple)):
            return [walk(item, f"{path}[{i}]") for i, item in enumerate(value)]
        return value

    return walk(dict(provenance), ""), volatile


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

    @property
    def available(self) -> bool:
        """True when the method produced a finite point estimate."""
        return self.estimate is not None and math.isfinite(self.estimate)

    @property
    def reason(self) -> str | None:
        """Why there is no estimate (`Estimate.unavailable`), or None."""
        reason = self.extra.get("reason")
        if reason:
            return str(reason)
        return None if self.available else "no estimate (no reason recorded)"

    @property
    def note(self) -> str:
        """What a reader of the numbers must know: why the estimate is NA, why the AR set is missing."""
        parts = []
        if self.reason is not None:
            parts.append(f"NA: {self.reason}")
        if self.extra.get("ar_set_kind") == "not computed" and self.extra.get("ar_error"):
            parts.append(f"AR set not computed: {self.extra['ar_error']}")
        return "; ".join(parts)

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
    #: The verdict (report/verdict.py) as JSON-ready dicts, one per exposure; set by `pipeline.run_analysis`.
    verdict: tuple[Mapping[str, Any], ...] | None = None

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
        stable, volatile = split_volatile(self.provenance)
        out = {
            "estimates": [e.to_dict() for e in self.estimates],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "provenance": stable,
        }
        if self.verdict is not None:
            out["verdict"] = [dict(v) for v in self.verdict]
        if self.truth is not None:
            out["truth"] = dict(self.truth)
        out["volatile"] = {"about": VOLATILE_ABOUT, **volatile}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=json_default)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "AnalysisResult":
        """Rebuild a result from `to_dict()` / results.json (artifacts are not stored there, so none come back).

        JSON has no NaN: an unavailable estimate written as null reads back as NaN.
        """
        rows = [{**r, "estimate": math.nan if r.get("estimate") is None else r["estimate"]}
                for r in payload.get("estimates", [])]
        names = {f.name for f in fields(Diagnostic)}
        diagnostics = tuple(Diagnostic(**{k: v for k, v in d.items() if k in names})
                            for d in payload.get("diagnostics", []))
        provenance = dict(payload.get("provenance", {}))
        # Top-level time stamps and durations go back where they came from; nested ones stay in "volatile".
        provenance.update({k: v for k, v in payload.get("volatile", {}).items()
                           if k != "about" and "." not in k and "[" not in k})
        return cls(estimates_from_dicts(rows), provenance, diagnostics, payload.get("truth"))

    def to_tsv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
        writer.writerow(ESTIMATE_COLUMNS)
        for est in self.estimates:
            row = est.to_dict()
            # Tabs and newlines in a note would break the one-line-per-row format.
            row["note"] = " ".join(est.note.split())
            writer.writerow(["NA" if row[c] is None else row[c] for c in ESTIMATE_COLUMNS])
        return buf.getvalue()

    def summary(self, scopes: Sequence[str] | None = ("pooled",)) -> str:
        """A fixed-width table of estimates and diagnostics (pooled only by default; None = every scope).

        A method that abstained shows "NA: <reason>" across its number columns.
        Column widths follow the widest cell, so a long AR set never runs into
        its neighbour; AR sets that were not computed are left blank with a
        footnote saying why.
        """
        theta = None if self.truth is None else self.truth.get("theta")
        level = f"{100 * (1 - self.provenance.get('parameters', {}).get('alpha', 0.05)):g}%"
        shown = [e for e in self.estimates if scopes is None or e.scope in scopes]
        columns = ["method", "scope", "estimate", "se", f"{level} CI", f"AR {level} set", "p", "F", "#IV"]
        if theta is not None:
            columns.append("bias")
        rows, na_rows, footnotes = [], [], {}
        for e in shown:
            if not e.available:
                na_rows.append((len(rows), f"NA: {e.reason}"))
                rows.append([e.method, e.scope] + [""] * (len(columns) - 2))
                continue
            ar = _fmt_ar(e)
            if e.extra.get("ar_set_kind") == "not computed":
                error = str(e.extra.get("ar_error") or "not computed")
                mark = footnotes.setdefault(error, f"[{len(footnotes) + 1}]")
                ar = mark
            row = [
                e.label,
                e.scope,
                _fmt(e.estimate, 0),
                _fmt(e.se, 0),
                _fmt_interval(e.ci_low, e.ci_high),
                ar,
                format_pvalue(e.pvalue),
                _fmt(e.first_stage_f, 0, ".1f"),
                "" if e.n_instruments is None else str(e.n_instruments),
            ]
            if theta is not None:
                row.append(_fmt(e.estimate - theta, 0))
            rows.append(row)
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        gap = "  "

        def line(cells):
            out = [f"{cells[0]:<{widths[0]}}", f"{cells[1]:<{widths[1]}}"]
            out += [f"{c:>{w}}" for c, w in zip(cells[2:], widths[2:])]
            return gap.join(out).rstrip()

        header = line(columns)
        lines = [header, "-" * len(header)]
        na = dict(na_rows)
        for i, r in enumerate(rows):
            if i in na:
                lines.append(gap.join([f"{r[0]:<{widths[0]}}", f"{r[1]:<{widths[1]}}", na[i]]))
            else:
                lines.append(line(r))
        for error, mark in footnotes.items():
            lines.append(f"{mark} AR set left blank: {error}")
        diagnostics = [d for d in self.diagnostics if scopes is None or d.scope in scopes]
        if diagnostics:
            lines += ["", "Diagnostics:"]
            width = max(len(d.name) for d in diagnostics) + 2
            scope_width = max(len(d.scope) for d in diagnostics) + 2
            for d in diagnostics:
                lines.append(
                    f"  {d.name:<{width}}{d.scope:<{scope_width}}stat={_fmt(d.statistic, 0)}  "
                    f"p={format_pvalue(d.pvalue)}  {d.flag}"
                )
        return "\n".join(lines)


def format_pvalue(p) -> str:
    """A p-value as people read it: 3 significant digits, "<1e-16" below double precision, NA when absent."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "NA"
    if p < PVALUE_FLOOR:
        return f"<{PVALUE_FLOOR:.0e}"
    return f"{p:.3g}"


def _fmt(value, width: int, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'NA':>{width}}"
    return f"{value:>{width}{spec}}"


def _num(value: float) -> str:
    """A confidence bound: 3 decimals, or 3 significant digits when huge (a weak-instrument interval)."""
    return f"{value:.3f}" if abs(value) < 1e5 else f"{value:.3g}"


def format_ar_set(e: "Estimate") -> str:
    """The Anderson-Rubin set as printed: an interval, a union of rays, 'empty', or '' when not computed.

    Unbounded sides use round brackets: `(-inf, 0.8] U [1.3, inf)`.
    """
    kind = e.extra.get("ar_set_kind")
    if kind is None or kind == "not computed":
        return ""
    if kind == "empty":
        return "empty"
    intervals = e.extra.get("ar_set") or []
    if intervals:
        return " U ".join(_fmt_interval(lo, hi) for lo, hi in intervals)
    return _fmt_interval(e.ar_ci_low, e.ar_ci_high) + (" (hull)" if kind == "union" else "")


_fmt_ar = format_ar_set


def _fmt_interval(low, high) -> str:
    lo_open = low is None or (isinstance(low, float) and math.isinf(low))
    hi_open = high is None or (isinstance(high, float) and math.isinf(high))
    lo = "(-inf" if lo_open else f"[{_num(low)}"
    hi = "inf)" if hi_open else f"{_num(high)}]"
    return f"{lo}, {hi}"


def estimates_from_dicts(rows: Sequence[dict]) -> tuple[Estimate, ...]:
    names = {f.name for f in fields(Estimate)}
    return tuple(Estimate(**{k: v for k, v in r.items() if k in names}) for r in rows)


__all__ = ["Estimate", "Diagnostic", "AnalysisResult", "ESTIMATE_COLUMNS", "format_ar_set", "format_pvalue", "asdict"]
