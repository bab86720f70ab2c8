"""Which estimate to trust: a documented, truth-free rule applied to an `AnalysisResult`.

The rule (docs/verdict.md) only reads what a run already reports: each
method's pooled estimate and confidence interval, its first-stage F, its
Anderson-Rubin set and the assumption checks (`Diagnostic` rows). It never
looks at the true effect, so it behaves the same on real data as on
simulations. In order:

1. Candidates are the pooled rows with a finite estimate and interval.
   Rows without instruments (OLS) are set aside: they are confounded by
   design. Methods that abstained are listed with their reason.
2. Each candidate's checks: weak instruments (first-stage F below 10);
   invariance (MMD), independence (HSIC) and overidentification (J) when the
   method ran them; an empty Anderson-Rubin set with two or more instruments
   (no effect value fits every instrument: a J-type rejection); and, for
   summary-level MR, Cochran's Q, the Egger intercept and MR-PRESSO's global
   test (IVW, MR-PRESSO) and I^2_GX below 0.9 (MR-Egger). A p-value below
   alpha fails a check.
3. Tiers, by the strength of the evidence that the instruments are valid:
   (0) strong instruments, the environment-invariance test ran, nothing
   failed; (1) strong instruments, only overidentification-type checks ran
   (J, AR set, Q, Egger, MR-PRESSO), nothing failed. These detect
   instruments that disagree with each other, not a bias that all of them
   share, which is what confounding by ancestry produces; (2) nothing failed
   but validity unchecked or strength unknown; (3) at least one check
   failed, fewest failures first.
4. In the best non-empty tier, pick the method whose interval overlaps the
   most intervals of the others in that tier (agreement), then the smallest
   standard error (precision), then the catalogue order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from invariant_mr.results import AnalysisResult, Diagnostic, Estimate, format_pvalue

#: First-stage F below which instruments are called weak (Staiger & Stock 1997).
WEAK_F = 10.0
#: I^2_GX below which the MR-Egger slope is diluted (Bowden et al. 2016).
MIN_I_SQUARED_GX = 0.9

#: Unprefixed summary-level diagnostics -> the methods whose validity they test.
SUMMARY_CHECKS: Mapping[str, tuple[str, ...]] = {
    "cochran_q": ("ivw",),
    "egger_intercept": ("ivw",),
    "mr_presso_global": ("ivw", "mr_presso"),
}

#: Prefixed per-method checks ("<method>/<check>") and how a failure reads.
METHOD_CHECKS: Mapping[str, str] = {
    "invariance_mmd": "invariance (MMD)",
    "independence_hsic": "independence (HSIC)",
    "overidentification_j": "overidentification (J)",
}

TIER_NAMES = {
    0: "strong instruments; invariance across environments and every other check pass",
    1: "strong instruments; overidentification-type checks pass, invariance not tested",
    2: "no check fails, but instrument validity or strength was not checked",
    3: "at least one check fails",
}


@dataclass(frozen=True)
class MethodAssessment:
    """One candidate method: its pooled estimate and what its checks say."""

    method: str
    estimate: float
    se: float | None
    ci_low: float
    ci_high: float
    first_stage_f: float | None
    passed: tuple[str, ...]
    failed: tuple[str, ...]
    validity_checked: bool
    invariance_checked: bool = False

    @property
    def tier(self) -> int:
        if self.failed:
            return 3
        strong = self.first_stage_f is not None and self.first_stage_f >= WEAK_F
        if strong and self.invariance_checked:
            return 0
        return 1 if (strong and self.validity_checked) else 2

    def overlaps(self, other: MethodAssessment) -> bool:
        return self.ci_low <= other.ci_high and other.ci_low <= self.ci_high


@dataclass(frozen=True)
class Verdict:
    """The rule's reading of one analysis: agreement, failed checks, the recommended estimate and why."""

    assessments: tuple[MethodAssessment, ...]
    agreeing: tuple[str, ...]
    consensus: tuple[float, float] | None
    recommended: str | None
    reason: str
    abstained: tuple[tuple[str, str], ...]
    set_aside: tuple[tuple[str, str], ...]
    alpha: float

    def assessment(self, method: str) -> MethodAssessment:
        for a in self.assessments:
            if a.method == method:
                return a
        raise KeyError(method)

    @property
    def disagreeing(self) -> tuple[str, ...]:
        return tuple(a.method for a in self.assessments if a.method not in self.agreeing)

    def summary(self) -> str:
        level = f"{100 * (1 - self.alpha):g}%"
        lines = ["Verdict:"]
        if not self.assessments:
            lines.append("  no method produced an estimate with a confidence interval")
        else:
            lo, hi = self.consensus
            lines.append(
                f"  agree ({len(self.agreeing)} of {len(self.assessments)}; their {level} CIs share "
                f"[{lo:.3f}, {hi:.3f}]): {', '.join(self.agreeing)}"
            )
            if self.disagreeing:
                lines.append(
                    "  outside that range: "
                    + ", ".join(f"{m} ({self.assessment(m).estimate:.3f})" for m in self.disagreeing)
                )
            failed = [a for a in self.assessments if a.failed]
            if failed:
                lines.append("  failed checks:")
                width = max(len(a.method) for a in failed) + 2
                lines += [f"    {a.method:<{width}}{'; '.join(a.failed)}" for a in failed]
            else:
                lines.append("  failed checks: none")
            unchecked = [a.method for a in self.assessments if a.tier == 2]
            if unchecked:
                lines.append(f"  validity not checked: {', '.join(unchecked)}")
        for method, why in self.abstained:
            lines.append(f"  no estimate: {method}: {why}")
        for method, why in self.set_aside:
            lines.append(f"  set aside: {method}: {why}")
        if self.recommended is None:
            lines.append(f"  recommended: none ({self.reason})")
        else:
            a = self.assessment(self.recommended)
            lines.append(
                f"  recommended: {a.method} = {a.estimate:.4f} [{a.ci_low:.3f}, {a.ci_high:.3f}]: {self.reason}"
            )
        lines.append("  (rule: docs/verdict.md; a reading of the checks, not a guarantee)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommended": self.recommended,
            "reason": self.reason,
            "agreeing": list(self.agreeing),
            "consensus": None if self.consensus is None else list(self.consensus),
            "abstained": [list(x) for x in self.abstained],
            "set_aside": [list(x) for x in self.set_aside],
            "methods": [
                {"method": a.method, "tier": a.tier, "passed": list(a.passed), "failed": list(a.failed),
                 "first_stage_f": a.first_stage_f}
                for a in self.assessments
            ],
        }


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _checks(e: Estimate, diags: list[Diagnostic], alpha: float):
    """(passed, failed, validity_checked, invariance_checked, F) for one pooled estimate."""
    passed, failed = [], []
    checked = False
    by_name = {d.name: d for d in diags if d.scope == "pooled"}
    f = e.first_stage_f
    own_f = by_name.get(f"{e.method}/first_stage_f")
    if own_f is not None and _finite(own_f.statistic):
        f = own_f.statistic
    f = f if _finite(f) else None
    if f is not None:
        (passed if f >= WEAK_F else failed).append(
            f"strong instruments (F = {f:.1f})" if f >= WEAK_F else f"weak instruments (F = {f:.1f} < {WEAK_F:g})"
        )
    for check, label in METHOD_CHECKS.items():
        d = by_name.get(f"{e.method}/{check}")
        if d is None or not _finite(d.pvalue):
            continue
        checked = True
        p = format_pvalue(d.pvalue)
        (failed if d.pvalue < alpha else passed).append(f"{label} p = {p}")
    kind = e.extra.get("ar_set_kind")
    if (e.n_instruments or 0) >= 2 and kind not in (None, "not computed"):
        checked = True
        if kind == "empty":
            failed.append("AR set empty (no effect fits every instrument)")
        else:
            passed.append("AR set non-empty")
    for name, methods in SUMMARY_CHECKS.items():
        d = by_name.get(name)
        if e.method in methods and d is not None and _finite(d.pvalue):
            checked = True
            (failed if d.pvalue < alpha else passed).append(f"{name} p = {format_pvalue(d.pvalue)}")
    d = by_name.get("i_squared_gx")
    if e.method == "mr_egger" and d is not None and _finite(d.statistic):
        checked = True
        if d.statistic < MIN_I_SQUARED_GX:
            failed.append(f"I^2_GX = {d.statistic:.2f} < {MIN_I_SQUARED_GX:g} (slope diluted)")
        else:
            passed.append(f"I^2_GX = {d.statistic:.2f}")
    invariance = (d := by_name.get(f"{e.method}/invariance_mmd")) is not None and _finite(d.pvalue)
    return passed, failed, checked, invariance, f


def _max_overlap(items: list[MethodAssessment]) -> tuple[tuple[str, ...], tuple[float, float]]:
    """The methods whose intervals share the point covered by the most intervals, and that common range.

    Intervals on a line that overlap pairwise share a common point (Helly), so
    the largest group that mutually agrees is the set covering one point.
    """
    best: tuple[int, float] = (-1, 0.0)
    for x in sorted({a.ci_low for a in items}):
        count = sum(a.ci_low <= x <= a.ci_high for a in items)
        if count > best[0]:
            best = (count, x)
    x = best[1]
    group = [a for a in items if a.ci_low <= x <= a.ci_high]
    return tuple(a.method for a in group), (max(a.ci_low for a in group), min(a.ci_high for a in group))


def verdict(result: AnalysisResult, *, alpha: float | None = None) -> Verdict:
    """Apply the rule of docs/verdict.md to the pooled estimates of `result` (never reads the truth)."""
    if alpha is None:
        alpha = float(result.provenance.get("parameters", {}).get("alpha", 0.05))
    diags = list(result.diagnostics)
    assessments, abstained, set_aside = [], [], []
    for e in result.select(scope="pooled"):
        if not e.available:
            abstained.append((e.method, e.reason or "no estimate"))
            continue
        if not e.n_instruments:
            set_aside.append((e.method, "no instruments: confounded by design, a reference only"))
            continue
        if not (_finite(e.ci_low) and _finite(e.ci_high)):
            set_aside.append((e.method, "no finite confidence interval"))
            continue
        passed, failed, checked, invariance, f = _checks(e, diags, alpha)
        assessments.append(
            MethodAssessment(e.method, float(e.estimate), e.se, float(e.ci_low), float(e.ci_high), f,
                             tuple(passed), tuple(failed), checked, invariance)
        )
    if not assessments:
        return Verdict((), (), None, None, "no method produced an estimate with a finite interval",
                       tuple(abstained), tuple(set_aside), alpha)
    agreeing, consensus = _max_overlap(assessments)

    best_tier = min(a.tier for a in assessments)
    pool = [a for a in assessments if a.tier == best_tier]
    if best_tier == 3:
        fewest = min(len(a.failed) for a in pool)
        pool = [a for a in pool if len(a.failed) == fewest]
    order = {a.method: i for i, a in enumerate(assessments)}

    def key(a: MethodAssessment):
        agree = sum(a.overlaps(b) for b in pool if b is not a)
        se = a.se if _finite(a.se) else math.inf
        return (-agree, se, order[a.method])

    pick = min(pool, key=key)
    reason = _reason(pick, pool, best_tier)
    return Verdict(tuple(assessments), agreeing, consensus, pick.method, reason,
                   tuple(abstained), tuple(set_aside), alpha)


def _reason(pick: MethodAssessment, pool: list[MethodAssessment], tier: int) -> str:
    checks = ", ".join(pick.passed) if pick.passed else "no check available"
    others = [a for a in pool if a is not pick]
    if tier == 0:
        head = "its checks pass, invariance across environments included (" + checks + ")"
    elif tier == 1:
        head = (
            "its checks pass (" + checks + "), but no method with passing checks tested invariance across "
            "environments, and these checks cannot see a bias shared by all instruments"
        )
    elif tier == 2:
        head = "no check fails, but its instrument validity was not checked (" + checks + "); no method passes every check"
    else:
        head = (
            f"CAUTION: every method fails a check; this one fails the fewest ({'; '.join(pick.failed)})"
        )
    if not others:
        return head + ("" if tier == 3 else "; it is the only such method")
    agree = [b.method for b in others if pick.overlaps(b)]
    tail = (
        f"; among {len(pool)} methods in this tier its CI overlaps {len(agree)} other(s)"
        + (f" ({', '.join(agree)})" if agree else "")
        + " and it is the most precise of those that agree most"
    )
    return head + tail


__all__ = ["TIER_NAMES", "WEAK_F", "MethodAssessment", "Verdict", "verdict"]
