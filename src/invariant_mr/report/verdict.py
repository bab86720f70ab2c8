"""Which estimate to trust, or that none can be: a truth-free rule applied to an `AnalysisResult`.

The rule (docs/verdict.md) reads only what a run reports: pooled estimates,
intervals, first-stage F and the assumption checks (`Diagnostic` rows). It
never looks at the true effect, so it behaves the same on real data as on
simulations. It answers one question per exposure: is there an estimate
whose instruments we have evidence are not confounded with the outcome?

Principles, from what each check can and cannot see:

* **Design first.** The threat this tool is about (population
  stratification, assortative mating) makes *every* variant track the
  confounders, so every instrument shares one bias. Methods that use the
  variants as they are (2SLS/LIML on all variants, IVW, MR-Egger, medians,
  modes, MR-PRESSO) cannot remove it, and their checks (Cochran's Q, the
  Egger intercept, MR-PRESSO) only see instruments that *disagree*. On
  individual-level data they are references, never the answer. Candidates
  are the methods whose design addresses the confounding: learned
  invariant instruments (`invariant` design), and adjustment by ancestry
  PCs, TSHT's selection of valid instruments, within-family contrasts
  (`adjusted` design).
* **Evidence, ranked.** A passed invariance test across environments is
  direct evidence against the threat (the paper's identifying assumption:
  valid instruments are distributed alike in every environment). An
  overidentification test (J) is evidence only against disagreeing
  instruments. A skipped check is no evidence at all.
* **Calibrated for many checks.** A run reads a dozen p-values; at 5% each,
  a false alarm somewhere is likely even when everything is valid. The
  checks of all candidates form one family, tested by Holm's step-down
  procedure at alpha, so one marginal p-value among many does not sink an
  estimate; a permutation p-value at its floor (1/(B+1), the strongest
  evidence the test can give) always counts.
* **Agreement, then precision.** Invariant methods that pass their checks
  must agree with each other (a z-test of the difference at alpha);
  adjusted methods with only J-type support need a second adjusted design
  that agrees, since each alone could share the bias. If they disagree, or
  none qualifies, the verdict says that no estimate can be trusted, why,
  and what data would help.

Summary statistics (`invariant-mr mr`) carry no environments, so the
confounding the GWAS should have removed cannot be checked; there the rule
reads the pleiotropy checks: IVW when heterogeneity and the Egger intercept
pass and the robust estimators agree with it, else the pleiotropy-robust
estimators when they agree with each other, else none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from scipy.special import ndtri  # scipy.stats.norm.ppf is ndtri; scipy.stats is slow to import

from invariant_mr.inference.instrument_strength import RULE_OF_THUMB_F, weak_f_threshold
from invariant_mr.results import AnalysisResult, Diagnostic, Estimate, format_pvalue

#: First-stage F below which 2SLS instruments are called weak (Staiger & Stock 1997); LIML rows use
#: Stock & Yogo's LIML size thresholds (`inference.instrument_strength`).
WEAK_F = RULE_OF_THUMB_F
#: I^2_GX below which the MR-Egger slope is diluted (Bowden et al. 2016).
MIN_I_SQUARED_GX = 0.9

#: Designs that address instrument-outcome confounding. Every other method is "unadjusted".
INVARIANT = frozenset({
    "invariant_linear", "invariant_linear_crossfit", "invariant_polynomial", "invariant_autoencoder",
    "invariant_autoencoder_insample", "tsls_external", "tsri_invariant_linear", "tsps_invariant_linear",
    "invariant_genotype",
})
ADJUSTED = frozenset({"tsls_pcs", "tsht", "within_family_ivw", "within_family_egger"})
#: Methods whose overidentification test runs on instruments they selected for agreeing with each other.
POST_SELECTION = frozenset({"tsht"})
#: Cross-fitted methods -> the full-sample fit of the same design (the same learned directions, up to the
#: fold split). Cross-fitting removes the bias of learning and using instruments on the same rows; it does
#: not make invalid directions valid, so the full-sample twin's failed overidentification check (instruments
#: that disagree about the effect) counts against the cross-fitted one too, whose own test, on noisier
#: fold-interacted instruments, has less power.
CROSSFIT_TWINS: Mapping[str, str] = {
    "invariant_linear_crossfit": "invariant_linear",
    "invariant_autoencoder": "invariant_autoencoder_insample",
}
#: Randomised by design: within a family, which parental allele a child inherits is decided by meiosis,
#: so ancestry, assortative mating and dynastic effects cannot confound within-family contrasts.
FAMILY = frozenset({"within_family"})

#: Prefixed per-method checks ("<method>/<check>"): label and kind.
METHOD_CHECKS: Mapping[str, tuple[str, str]] = {
    "invariance_mmd": ("invariance (MMD)", "invariance"),
    "independence_hsic": ("independence (HSIC)", "independence"),
    "overidentification_j": ("overidentification (J)", "overidentification"),
    "leak_shift": ("leak shift", "leak"),
    "structure_shift": ("within-environment structure", "structure"),
}
#: Unprefixed summary-level checks -> the methods whose validity they test.
#: IVW and the estimators that, like it, are consistent only when every variant is valid (TwoSampleMR's
#: multiplicative random-effects IVW, maximum likelihood and unweighted regression).
_IVW = ("ivw", "ivw_fixed", "ivw_radial", "ivw_radial_iterative", "ivw_radial_exact_fe", "ivw_radial_exact_re",
        "ivw_mre", "mr_two_sample_ml", "mr_uwr")
SUMMARY_CHECKS: Mapping[str, tuple[str, ...]] = {
    # MR-PRESSO's global test is what its outlier correction answers, so it does not count against it.
    "cochran_q": _IVW,
    "egger_intercept": _IVW,
    "mr_presso_global": _IVW,
    "mv_ivw_heterogeneity": ("mv_ivw",),
    "mv_egger_intercept": ("mv_ivw",),
    "mv_egger_heterogeneity": ("mv_egger",),
}
#: Pleiotropy-robust summary estimators: consistent under other assumptions than IVW's.
ROBUST_SUMMARY = ("weighted_median", "penalised_weighted_median", "simple_median", "weighted_mode", "simple_mode",
                  "mr_egger", "mr_presso", "mr_raps", "mr_lasso", "mr_conmix")

STANDINGS = {
    "verified": "strong instruments; invariance across environments (or, within families, the design) and every "
                "other check pass",
    "supported": "addresses the confounding; strong; its overidentification check passes (cannot see a shared bias)",
    "unchecked": "addresses the confounding, but no validity check ran",
    "failed": "at least one check fails",
    "weak": "weak or unknown instrument strength (F below the estimator's threshold: 10 for 2SLS, Stock-Yogo's for LIML)",
    "unadjusted": "uses the variants as they are: cannot remove confounding shared by all variants (a reference)",
    "consistent": "pleiotropy checks pass",
}


def design_of(method: str) -> str:
    """'invariant', 'family', 'adjusted' or 'unadjusted' (how a method treats instrument-outcome confounding)."""
    if method in INVARIANT:
        return "invariant"
    return "family" if method in FAMILY else "adjusted" if method in ADJUSTED else "unadjusted"


@dataclass(frozen=True)
class Check:
    """One assumption check as the verdict read it."""

    label: str
    kind: str
    pvalue: float | None
    passed: bool
    text: str


@dataclass(frozen=True)
class MethodStanding:
    """One method with an estimate: its design, its checks and where the rule puts it."""

    method: str
    design: str
    estimate: float
    se: float | None
    ci_low: float
    ci_high: float
    first_stage_f: float | None
    checks: tuple[Check, ...]
    standing: str

    @property
    def passed(self) -> tuple[str, ...]:
        return tuple(c.text for c in self.checks if c.passed)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(c.text for c in self.checks if not c.passed)

    def agrees(self, other: "MethodStanding", alpha: float) -> bool:
        """No evidence that the two estimate different things: |difference| <= z * sqrt(se1^2 + se2^2)."""
        return abs(self.estimate - other.estimate) <= _z(alpha) * math.hypot(_se(self), _se(other))

    def describe(self) -> str:
        """One line for a reason: the method, its estimate, its standing and the checks it fails."""
        return f"{self.method} ({self.estimate:.3f}): {self.standing}" + (
            f": {'; '.join(self.failed)}" if self.failed else "")

    def to_dict(self) -> dict:
        return {"method": self.method, "design": self.design, "standing": self.standing,
                "estimate": self.estimate, "se": self.se, "ci": [self.ci_low, self.ci_high],
                "first_stage_f": self.first_stage_f, "passed": list(self.passed), "failed": list(self.failed)}


@dataclass(frozen=True)
class Verdict:
    """The rule's answer for one exposure: a recommended estimate, or none and why."""

    exposure: str | None
    kind: str  # "individual" or "summary"
    recommended: str | None
    statement: str
    reasons: tuple[str, ...]
    advice: tuple[str, ...]
    standings: tuple[MethodStanding, ...]
    abstained: tuple[tuple[str, str], ...]
    set_aside: tuple[tuple[str, str], ...]
    alpha: float

    def standing(self, method: str) -> MethodStanding:
        for s in self.standings:
            if s.method == method:
                return s
        raise KeyError(method)

    @property
    def estimate(self) -> float | None:
        return None if self.recommended is None else self.standing(self.recommended).estimate

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.recommended is None:
            return None
        s = self.standing(self.recommended)
        return (s.ci_low, s.ci_high)

    def summary(self) -> str:
        head = "Verdict" + ("" if self.exposure is None else f" for exposure {self.exposure}") + ":"
        lines = [head, f"  {self.statement}"]
        lines += [f"  - {r}" for r in self.reasons]
        if self.standings:
            lines.append("  methods:")
            width = max(len(s.method) for s in self.standings) + 2
            for s in self.standings:
                why = "; ".join(s.failed) if s.failed else ("; ".join(s.passed) or "no check available")
                lines.append(f"    {s.method:<{width}}{s.estimate:>9.4f}  {s.standing:<10}  {why}")
        for method, why in self.abstained:
            lines.append(f"    {method}: no estimate ({why})")
        for method, why in self.set_aside:
            lines.append(f"    {method}: set aside ({why})")
        if self.advice:
            lines.append("  what would help: " + "; ".join(self.advice))
        lines.append("  (rule: docs/verdict.md; a reading of the checks, never of the truth)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        interval = self.interval
        return {
            "exposure": self.exposure,
            "kind": self.kind,
            "recommended": self.recommended,
            "estimate": self.estimate,
            "ci": None if interval is None else list(interval),
            "statement": self.statement,
            "reasons": list(self.reasons),
            "advice": list(self.advice),
            "alpha": self.alpha,
            "methods": [s.to_dict() for s in self.standings],
            "abstained": [{"method": m, "reason": r} for m, r in self.abstained],
            "set_aside": [{"method": m, "reason": r} for m, r in self.set_aside],
        }


def _z(alpha: float) -> float:
    return float(ndtri(1 - alpha / 2))


def _has_se(s: MethodStanding) -> bool:
    return s.se is not None and math.isfinite(s.se) and s.se > 0


def _se(s: MethodStanding) -> float:
    if _has_se(s):
        return float(s.se)
    # No SE (e.g. ConMix's likelihood-ratio set): the interval's half width over z(0.975) stands in.
    return (s.ci_high - s.ci_low) / (2 * 1.959963984540054)


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _floor_p(d: Diagnostic) -> bool:
    """True for a permutation p-value at its smallest possible value 1/(B+1)."""
    b = d.detail.get("n_permutations") if d.detail else None
    return bool(b) and d.pvalue is not None and d.pvalue <= 1.0 / (float(b) + 1) + 1e-12


def _holm(pvalues: Mapping[str, float], alpha: float) -> set[str]:
    """The keys Holm's step-down procedure rejects at family-wise level alpha."""
    rejected: set[str] = set()
    ordered = sorted(pvalues.items(), key=lambda kv: kv[1])
    m = len(ordered)
    for i, (key, p) in enumerate(ordered):
        if p > alpha / (m - i):
            break
        rejected.add(key)
    return rejected


def _weak_below(e: Estimate) -> tuple[float, str]:
    """The first-stage F below which `e`'s instruments are weak for its estimator, and the source."""
    return weak_f_threshold(e.extra.get("estimator"), e.n_instruments)


def _strength(e: Estimate, by_name: Mapping[str, Diagnostic]) -> float | None:
    f = e.first_stage_f
    own = by_name.get(f"{e.method}/first_stage_f")
    if own is not None and _finite(own.statistic):
        f = own.statistic
    return float(f) if _finite(f) else None


#: A leak can be called immaterial only when the leak check is at least as precise as the estimate
#: itself (SE of the shift <= this times the estimate's SE): an undetected leak then moves the
#: estimate by about two of its SEs at most. The shift's SE includes the estimation of the purge,
#: which alone is of the order of the estimate's SE, so a stricter ratio would make the check unusable.
LEAK_SE_RATIO = 1.0


def _purge_values(d: Diagnostic) -> tuple:
    """(purged first-stage F, shift, SE of the shift) of a purge diagnostic (leak or structure shift)."""
    return tuple(d.detail.get(k) for k in ("purged_first_stage_f", "shift", "se"))


def _purge_blind(e: Estimate, d: Diagnostic) -> str | None:
    """Why a purge check cannot clear `e` (None when it can): the purged instruments must stay strong for
    `e`'s estimator, and the shift must be at least as precise as the estimate (its SE at most
    `LEAK_SE_RATIO` times the estimate's), or an undetected bias could exceed the estimate's own noise."""
    f_purged, _, se = _purge_values(d)
    if not _finite(f_purged):
        return "the purged instruments' strength is unknown"
    if f_purged < _weak_below(e)[0]:
        return f"the purged instruments are weak (F = {f_purged:.1f})"
    if not (_finite(se) and _finite(e.se) and se <= LEAK_SE_RATIO * float(e.se)):
        return f"the shift's SE ({se:.4f}) exceeds the estimate's" if _finite(se) else "the shift's SE is unknown"
    return None


def _weigh_leak(e: Estimate, checks: list[Check], by_name: Mapping[str, Diagnostic]) -> list[Check]:
    """A detected leak (MMD or HSIC failing) that does not matter for the estimate is not a failure.

    With thousands of rows, MMD and HSIC detect leaks far too small to bias the estimate. What matters
    is the bias: purge the instruments of everything the environment-varying component predicts
    (degree-2 features, and their interaction with the environment) and see whether the estimate moves.
    The leak is immaterial when the leak-shift check passes (within the family) and could have seen a
    bias (`_purge_blind`: the purged instruments stay strong, the shift is as precise as the estimate).
    """
    leak = next((c for c in checks if c.kind == "leak"), None)
    d = by_name.get(f"{e.method}/leak_shift")
    if leak is None or not leak.passed or d is None or _purge_blind(e, d) is not None:
        return checks
    f_purged, shift, se = _purge_values(d)
    out = []
    for c in checks:
        if c.kind in ("invariance", "independence") and not c.passed:
            c = Check(c.label, c.kind, c.pvalue, True, f"{c.text} (a leak, immaterial: see the leak shift)")
        elif c.kind == "leak":
            c = Check(c.label, c.kind, c.pvalue, True, f"{c.text}: purged of the leak, the instruments keep "
                      f"F = {f_purged:.0f} and the estimate moves by {shift:+.4f} (SE {se:.4f})")
        out.append(c)
    return out


def _weigh_structure(e: Estimate, checks: list[Check], by_name: Mapping[str, Diagnostic]) -> list[Check]:
    """The structure check passes only when it could have seen a bias.

    Invariance across environments says nothing about population structure inside each environment
    (demes within a region): it is alike everywhere, yet stratification confounds it. Purged of the top
    genotype PCs within each environment, valid instruments keep their strength and their estimate.
    If the purge leaves them weak, the instruments *are* within-environment structure, and their
    validity rests on that structure being unconfounded, which nothing here can check; if the shift is
    less precise than the estimate, the check cannot tell. Either way it fails, like a leak check too
    imprecise to tell (`_purge_blind`).
    """
    d = by_name.get(f"{e.method}/structure_shift")
    if d is None or not d.detail:
        return checks
    _, shift, se = _purge_values(d)
    why = _purge_blind(e, d)
    out = []
    for c in checks:
        if c.kind == "structure":
            c = (Check(c.label, c.kind, c.pvalue, False, f"{c.text}: purged of the top genotype PCs within each "
                       f"environment, {why}: the instruments may be within-environment population structure")
                 if why and c.passed else
                 Check(c.label, c.kind, c.pvalue, c.passed, f"{c.text}: purged of within-environment structure "
                       f"the estimate moves by {shift:+.4f} (SE {se:.4f})"))
        out.append(c)
    return out


def _assess(e: Estimate, by_name: Mapping[str, Diagnostic], rejected: set[str], alpha: float,
            summary_input: bool) -> MethodStanding:
    design = "unadjusted" if summary_input else design_of(e.method)
    checks: list[Check] = []
    f = _strength(e, by_name)
    weak_f, source = _weak_below(e)
    if f is not None:
        ok = f >= weak_f
        bar = f"{weak_f:g}" if weak_f == WEAK_F else f"{weak_f:g}, {source}"
        checks.append(Check("strength", "strength", None, ok,
                            f"strong instruments (F = {f:.1f})" if ok else f"weak instruments (F = {f:.1f} < {bar})"))
    for suffix, (label, kind) in METHOD_CHECKS.items():
        name = f"{e.method}/{suffix}"
        d = by_name.get(name)
        if d is None or not _finite(d.pvalue):
            continue
        family = design != "unadjusted"
        failed = name in rejected if family else d.pvalue < alpha
        note = " (Holm over the run's checks)" if family and d.pvalue < alpha and not failed else ""
        checks.append(Check(label, kind, d.pvalue, not failed, f"{label} p = {format_pvalue(d.pvalue)}{note}"))
    checks = _weigh_leak(e, checks, by_name)
    checks = _weigh_structure(e, checks, by_name)
    kind = e.extra.get("ar_set_kind")
    if (e.n_instruments or 0) >= 2 and kind not in (None, "not computed"):
        empty = kind == "empty"
        checks.append(Check("AR set", "overidentification", None, not empty,
                            "AR set empty (no effect fits every instrument)" if empty else "AR set non-empty"))
    for name, methods in SUMMARY_CHECKS.items():
        d = by_name.get(name)
        if e.method in methods and d is not None and _finite(d.pvalue):
            kind_ = "pleiotropy" if name.endswith("egger_intercept") else "heterogeneity"
            checks.append(Check(name, kind_, d.pvalue, d.pvalue >= alpha, f"{name} p = {format_pvalue(d.pvalue)}"))
    d = by_name.get("i_squared_gx")
    if e.method == "mr_egger" and d is not None and _finite(d.statistic):
        ok = d.statistic >= MIN_I_SQUARED_GX
        checks.append(Check("I^2_GX", "nome", None, ok, f"I^2_GX = {d.statistic:.2f}" + ("" if ok else
                            f" < {MIN_I_SQUARED_GX:g} (slope diluted)")))

    if e.method in POST_SELECTION:
        # TSHT keeps the instruments whose estimates agree, so a J test or AR set on them passes by construction:
        # passing is no evidence (a failure, despite the selection, still is).
        checks = [Check(c.label, "post-selection", c.pvalue, c.passed, c.text + " (after selecting agreeing "
                        "instruments: no evidence when it passes)") if c.kind == "overidentification" and c.passed
                  else c for c in checks]
    if design == "unadjusted" and not summary_input:
        standing = "unadjusted"
    elif any(not c.passed for c in checks if c.kind != "strength"):
        standing = "failed"
    elif f is None or f < weak_f:
        standing = "weak"
    elif summary_input:
        standing = "consistent"
    elif design == "invariant" and any(c.kind == "invariance" for c in checks):
        standing = "verified"
    elif design == "family":
        standing = "verified"  # randomised by meiosis: valid by design, not by a test
    elif any(c.kind in ("invariance", "independence", "overidentification") for c in checks):
        standing = "supported"
    else:
        standing = "unchecked"
    return MethodStanding(e.method, design, float(e.estimate), e.se, float(e.ci_low), float(e.ci_high), f,
                          tuple(checks), standing)


def verdicts(result: AnalysisResult, *, alpha: float | None = None) -> tuple[Verdict, ...]:
    """One verdict per exposure (rows of different exposures are never compared)."""
    exposures = list(dict.fromkeys(e.exposure for e in result.select(scope="pooled")))
    return tuple(verdict(result, alpha=alpha, exposure=x) for x in exposures) or (verdict(result, alpha=alpha),)


def verdict(result: AnalysisResult, *, alpha: float | None = None, exposure: str | None = None) -> Verdict:
    """Apply the rule of docs/verdict.md to the pooled estimates of one exposure (never reads the truth)."""
    if alpha is None:
        alpha = float(result.provenance.get("parameters", {}).get("alpha", 0.05))
    summary_input = (result.provenance.get("data") or {}).get("n_variants") is not None
    diags = [d for d in result.diagnostics if d.scope == "pooled"]
    by_name = {d.name: d for d in diags}
    pooled = result.select(scope="pooled")
    if exposure is None and len({e.exposure for e in pooled}) == 1:
        exposure = pooled[0].exposure if pooled else None  # a two-sample run labels its one exposure
    rows = [e for e in pooled if e.exposure == exposure]
    candidates, abstained, set_aside = [], [], []
    for e in rows:
        if not e.available:
            abstained.append((e.method, e.reason or "no estimate"))
        elif not e.n_instruments:
            set_aside.append((e.method, "no instruments: confounded by design, a reference only"))
        elif not (_finite(e.ci_low) and _finite(e.ci_high)):
            set_aside.append((e.method, "no finite confidence interval"))
        else:
            candidates.append(e)
    # One family: every p-value check of every method that addresses the confounding.
    family = {}
    for e in candidates:
        if summary_input or design_of(e.method) == "unadjusted":
            continue
        for suffix in METHOD_CHECKS:
            d = by_name.get(f"{e.method}/{suffix}")
            if d is not None and _finite(d.pvalue):
                family[d.name] = float(d.pvalue)
    rejected = _holm(family, alpha) | {n for n in family if _floor_p(by_name[n])}
    standings = _with_twin_failures(tuple(_assess(e, by_name, rejected, alpha, summary_input) for e in candidates))
    decide = _decide_summary if summary_input else _decide_individual
    recommended, statement, reasons, advice = decide(standings, alpha, len(family))
    return Verdict(exposure, "summary" if summary_input else "individual", recommended, statement,
                   tuple(reasons), tuple(advice), standings, tuple(abstained), tuple(set_aside), alpha)


def _with_twin_failures(standings: tuple[MethodStanding, ...]) -> tuple[MethodStanding, ...]:
    """A cross-fitted method fails when its full-sample twin fails an overidentification check (`CROSSFIT_TWINS`)."""
    by_method = {s.method: s for s in standings}
    out = []
    for s in standings:
        twin = by_method.get(CROSSFIT_TWINS.get(s.method, ""))
        failed = [] if twin is None else [c for c in twin.checks if c.kind == "overidentification" and not c.passed]
        if failed and s.standing != "unadjusted":
            check = Check(f"{twin.method}'s overidentification", "overidentification", failed[0].pvalue, False,
                          f"the full-sample fit of the same directions ({twin.method}) fails: {failed[0].text}; "
                          "cross-fitting does not make invalid directions valid")
            s = replace(s, checks=(*s.checks, check), standing="failed")
        out.append(s)
    return tuple(out)


def _fmt(s: MethodStanding) -> str:
    return f"{s.method} = {s.estimate:.4f} [{s.ci_low:.3f}, {s.ci_high:.3f}]"


def _all_agree(group: list[MethodStanding], alpha: float) -> tuple[MethodStanding, MethodStanding] | None:
    """The first disagreeing pair, or None when every pair agrees."""
    for i, a in enumerate(group):
        for b in group[i + 1:]:
            if not a.agrees(b, alpha):
                return a, b
    return None


def _most_precise(group: list[MethodStanding]) -> MethodStanding:
    """The smallest SE; a method that reports none (ConMix's likelihood set) corroborates but is not picked."""
    return min([s for s in group if _has_se(s)] or group, key=_se)


def _decide_individual(standings: tuple[MethodStanding, ...], alpha: float, n_checks: int):
    verified = [s for s in standings if s.standing == "verified"]
    supported = [s for s in standings if s.standing == "supported"]
    addressing = [s for s in standings if s.design != "unadjusted"]
    multiplicity = f"{n_checks} checks tested together (Holm, alpha = {alpha:g})" if n_checks > 1 else ""
    reasons: list[str] = []
    family = [s for s in verified if s.design == "family"]
    if family:
        return _decide_family(family, addressing, alpha, multiplicity)
    if verified:
        clash = _all_agree(verified, alpha)
        if clash is None:
            pick = _most_precise(verified)
            # Evidence against evidence: a design that addresses confounding by other means and passes its
            # own checks, yet disagrees, means one of the two is wrong, and the checks cannot say which.
            against = [s for s in supported if not s.agrees(pick, alpha)]
            if against:
                statement = ("no estimate can be trusted here: methods that address confounding and pass their "
                             f"checks disagree ({_fmt(pick)} vs {_fmt(against[0])})")
                return None, statement, [
                    f"{pick.method} passes the invariance checks, which cannot see confounding that is the same in "
                    f"every environment (e.g. assortative mating); {against[0].method} passes its "
                    "overidentification check, which cannot see a bias shared by every instrument",
                    *([multiplicity] if multiplicity else [])], [
                    "within-family data (--family-col): a design that neither bias reaches",
                    "more environments that differ in the confounding (so that the invariance test can see it)"]
            others = [s.method for s in verified if s is not pick]
            reasons.append(f"{pick.method}: " + "; ".join(pick.passed))
            if others:
                reasons.append("agrees with " + ", ".join(others) + ", whose checks also pass; it is the most precise")
            rest = [s for s in addressing if s.standing != "verified" and not s.agrees(pick, alpha)]
            if rest:
                reasons.append("disagreeing, without passing invariance checks: "
                               + ", ".join(f"{s.method} ({s.estimate:.3f}, {s.standing})" for s in rest)
                               + " - their adjustment may leave confounding")
            if multiplicity:
                reasons.append(multiplicity)
            statement = (f"recommended: {_fmt(pick)}: its instruments pass the test of invariance across "
                         "environments and every other check")
            return pick.method, statement, reasons, []
        a, b = clash
        statement = ("no estimate can be trusted here: methods whose instruments pass the invariance checks "
                     f"disagree ({_fmt(a)} vs {_fmt(b)})")
        return None, statement, [multiplicity] if multiplicity else [], [
            "more environments or more samples per environment sharpen the invariance tests",
            "within-family data (--family-col) or genome-wide PCs (--pcs-from) give an independent design"]
    if len(supported) >= 2 and _all_agree(supported, alpha) is None:
        pick = _most_precise(supported)
        reasons.append("no method passed an invariance test; " + ", ".join(s.method for s in supported)
                       + " adjust for confounding by different designs, pass their overidentification checks and agree")
        reasons.append("overidentification checks cannot see a bias shared by every instrument: read this as "
                       "the best available, not as verified")
        statement = f"recommended: {_fmt(pick)}: two designs that address confounding agree and pass their checks"
        return pick.method, statement, reasons, []
    # Nothing qualifies: say why, method by method.
    if not addressing:
        reasons.append("no method that addresses instrument-outcome confounding produced an estimate; the others "
                       "use the variants as they are and share any confounding of the variants")
    for s in addressing:
        why = "; ".join(s.failed) if s.failed else STANDINGS[s.standing]
        reasons.append(f"{s.method} ({s.estimate:.3f}): {s.standing}: {why}")
    if len(supported) >= 2:
        a, b = _all_agree(supported, alpha)
        reasons.append(f"designs that adjust for confounding disagree: {_fmt(a)} vs {_fmt(b)}")
    elif len(supported) == 1:
        reasons.append(f"{supported[0].method} is the only design with passing checks, and its checks cannot "
                       "see a bias shared by every instrument; nothing corroborates it")
    if multiplicity:
        reasons.append(multiplicity)
    statement = "no estimate can be trusted here: " + (
        "no method that addresses confounding passes its checks" if not (supported or verified)
        else "the methods that address confounding are not corroborated")
    advice = ["more environments (ancestry groups, cohorts) or more samples per environment",
              "less measurement error in the genotypes (hard calls, higher imputation INFO)",
              "within-family data (--family-col) or genome-wide PCs (--pcs-from)"]
    return None, statement, reasons, advice


def _decide_family(family: list[MethodStanding], addressing: list[MethodStanding], alpha: float,
                   multiplicity: str):
    """A strong within-family design is the answer: meiosis, not a test, makes its instruments valid.

    Every population-level design rests on an assumption the data check only in part: invariance tests
    cannot see confounding that is the same in every environment (dynastic effects, assortative mating of
    equal strength), and overidentification tests cannot see a bias every instrument shares. Within a
    family, which parental allele a child inherits is random, so none of these reach the contrast.
    A population-level design that disagrees is therefore read as confounded, not as evidence against
    the family design.
    """
    pick = _most_precise(family)
    agree = [s for s in addressing if s is not pick and s.agrees(pick, alpha)]
    disagree = [s for s in addressing if s is not pick and not s.agrees(pick, alpha)]
    reasons = [f"{pick.method}: " + "; ".join(pick.passed),
               "within families, meiosis randomises which parental allele a child inherits, so ancestry, "
               "assortative mating and dynastic effects cannot confound it (assumed: no effect of a sibling's "
               "genotype on the exposure or outcome)"]
    if agree:
        reasons.append("agrees with " + ", ".join(f"{s.method} ({s.estimate:.3f}, {s.standing})" for s in agree))
    if disagree:
        reasons.append("disagreeing population-level designs: "
                       + ", ".join(f"{s.method} ({s.estimate:.3f}, {s.standing})" for s in disagree)
                       + " - confounding their checks cannot see (shared by every environment or every "
                       "instrument, e.g. dynastic effects or assortative mating) is the likely cause")
    if multiplicity:
        reasons.append(multiplicity)
    statement = f"recommended: {_fmt(pick)}: a within-family design, valid by randomisation within families"
    return pick.method, statement, reasons, []


def _decide_summary(standings: tuple[MethodStanding, ...], alpha: float, n_checks: int):
    caveat = ("summary statistics carry no environments: whether the GWAS removed population stratification "
              "cannot be checked here")
    by = {s.method: s for s in standings}
    if "ivw" not in by and "mv_ivw" in by:
        return _decide_multivariable_summary(by, caveat)
    ivw = by.get("ivw")

    def usable(s: MethodStanding) -> bool:
        # Robust estimators are built for heterogeneous instruments: only strength and (for MR-Egger)
        # the NOME assumption disqualify them, not the heterogeneity tests IVW relies on.
        return all(c.passed for c in s.checks if c.kind in ("strength", "nome"))

    robust = [by[m] for m in ROBUST_SUMMARY if m in by and usable(by[m])]
    if ivw is not None and ivw.standing == "consistent":
        disagree = [s for s in robust if not s.agrees(ivw, alpha)]
        if not disagree:
            statement = f"recommended: {_fmt(ivw)}: no heterogeneity or directional pleiotropy detected"
            reasons = ["; ".join(ivw.passed)]
            if robust:
                reasons.append("agrees with the pleiotropy-robust " + ", ".join(s.method for s in robust))
            return ivw.method, statement, reasons + [caveat], []
    if len(robust) >= 2 and _all_agree(robust, alpha) is None:
        pick = _most_precise(robust)
        why = "IVW's checks fail" if ivw is not None and ivw.standing != "consistent" else "IVW disagrees with them"
        statement = (f"recommended: {_fmt(pick)}: {why}; the pleiotropy-robust estimators "
                     f"({', '.join(s.method for s in robust)}) agree")
        return pick.method, statement, [caveat], []
    reasons = [s.describe() for s in standings]
    statement = ("no estimate can be trusted here: pleiotropy is evident and the robust estimators "
                 "do not agree" if ivw is not None else "no estimate can be trusted here: too few methods to compare")
    return None, statement, reasons + [caveat], [
        "more instruments, or outcome data from a second sample, to tell pleiotropy from the effect"]


def _decide_multivariable_summary(by: Mapping[str, MethodStanding], caveat: str):
    """Direct effects: multivariable IVW when neither heterogeneity nor the MV-Egger intercept says
    pleiotropy, else MV-Egger when its own heterogeneity check passes (directional pleiotropy under
    InSIDE), else none. Each exposure is judged on its own conditional F."""
    ivw, egger = by["mv_ivw"], by.get("mv_egger")
    if ivw.standing == "consistent":
        return ivw.method, f"recommended: {_fmt(ivw)}: no heterogeneity or directional pleiotropy detected", [
            "; ".join(ivw.passed), caveat], []
    if egger is not None and egger.standing == "consistent":
        return egger.method, (f"recommended: {_fmt(egger)}: multivariable IVW fails its pleiotropy checks "
                              f"({'; '.join(ivw.failed)}); MV-Egger models directional pleiotropy and fits"), [caveat], []
    reasons = [s.describe() for s in (ivw, egger) if s is not None]
    return None, "no estimate can be trusted here: pleiotropy is evident in the multivariable model", \
        reasons + [caveat], ["more instruments, or fewer exposures sharing them"]


def verdict_payload(result: AnalysisResult) -> list[dict]:
    """The verdicts as JSON-ready dicts (results.json's `verdict`)."""
    return [v.to_dict() for v in verdicts(result)]


__all__ = ["ADJUSTED", "INVARIANT", "STANDINGS", "Check", "MethodStanding", "Verdict", "design_of", "verdict",
           "verdict_payload", "verdicts"]
