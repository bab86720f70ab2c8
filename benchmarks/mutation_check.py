"""Mutation check: inject statistical faults at run time and record which tests catch them.

Each fault is applied by this file acting as a pytest plugin
(`-p benchmarks.mutation_check`, selected by the environment variable
INVARIANT_MR_MUTATION), so the package's source is never edited: the plugin
wraps one function of the installed code before any test runs and rebinds
every reference to it inside `invariant_mr` (modules that did
`from ... import name` included). The faults:

* `bias`: the pooled estimate of every invariant method (`invariant_*`) shifted by
  +2 of its SEs, its interval moved with it; injected where every pooled IV row
  is made (`inference.estimates.estimate_from_fit`), so the in-memory,
  bootstrap and cross-fitted paths all carry it.
* `narrow`: every interval 25% too narrow: the SE of Wald results (k-class,
  TSHT, binary IV), of the Estimate rows, of the direction/stage-2 bootstrap
  and of summary-statistic MR (IVW, Egger, RAPS) times 0.75.
* `no_env_effects`: the environment fixed effects dropped from every pooled
  fit (`data.exogenous_controls` ignores `env_fixed_effects=True`).

Without a fault the same tests must pass (the `none` row). Run from the
repository root:

    python benchmarks/mutation_check.py [--faults bias,narrow,no_env_effects] [--tests FILE ...]

Writes benchmarks/results/mutation_check.{md,json}.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ENV_VAR = "INVARIANT_MR_MUTATION"
SHIFT_SES = 2.0
NARROW = 0.75
ROOT = Path(__file__).resolve().parents[1]

#: The tests that check statistics (CI tier): the mutation must make at least one of them fail.
DEFAULT_TESTS = (
    "tests/test_statistical_tier.py",
    "tests/test_invariant_linear.py",
    "tests/test_polynomial_method.py",
    "tests/test_summary_mr.py",
    "tests/test_robust_summary_mr.py",
    "tests/test_tsht.py",
    "tests/test_weak_iv.py",
)

#: Modules whose names a fault rebinds; importing them up front makes every `from x import f` visible.
_MODULES = (
    "invariant_mr.data",
    "invariant_mr.estimators.iv",
    "invariant_mr.estimators.summary.summary_mr",
    "invariant_mr.estimators.summary.mr_raps",
    "invariant_mr.estimators.tsht",
    "invariant_mr.inference.estimates",
    "invariant_mr.inference.crossfit",
    "invariant_mr.inference.weak_iv",
    "invariant_mr.inference.diagnostics",
    "invariant_mr.inference.direction_bootstrap",
    "invariant_mr.methods.invariant_linear",
    "invariant_mr.methods.polynomial",
    "invariant_mr.methods.autoencoder",
    "invariant_mr.methods.baselines",
    "invariant_mr.methods.summary_level",
    "invariant_mr.methods.two_sample",
    "invariant_mr.methods.binary",
)


def _rebind(module: str, name: str, make):
    """Replace `module.name` by `make(original)` there and wherever invariant_mr bound the original."""
    for m in _MODULES:
        importlib.import_module(m)
    original = getattr(importlib.import_module(module), name)
    patched = make(original)
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("invariant_mr") and getattr(mod, name, None) is original:
            setattr(mod, name, patched)
    return patched


def _shift_invariant_pooled(original):
    @functools.wraps(original)
    def estimate_from_fit(*args, **kwargs):
        est = original(*args, **kwargs)
        if est.method.startswith("invariant") and est.scope == "pooled" and est.se is not None:
            d = SHIFT_SES * est.se
            est = replace(est, estimate=est.estimate + d, ci_low=est.ci_low + d, ci_high=est.ci_high + d)
        return est

    return estimate_from_fit


def _narrow_rows(original):
    """Wrap a function returning an Estimate/SummaryMRFit: SE x 0.75 and the interval around the estimate shrunk."""

    @functools.wraps(original)
    def narrowed(*args, **kwargs):
        out = original(*args, **kwargs)
        if getattr(out, "ci_low", None) is None or out.se is None:
            return out
        return replace(
            out,
            se=out.se * NARROW,
            ci_low=out.estimate - NARROW * (out.estimate - out.ci_low),
            ci_high=out.estimate + NARROW * (out.ci_high - out.estimate),
        )

    return narrowed


def _scale_se(original):
    """Wrap a function returning an Estimate whose interval already comes from a narrowed `WaldInference.ci`."""

    @functools.wraps(original)
    def scaled(*args, **kwargs):
        out = original(*args, **kwargs)
        return out if out.se is None else replace(out, se=out.se * NARROW)

    return scaled


def _drop_env_effects(original):
    @functools.wraps(original)
    def exogenous_controls(data, env_fixed_effects, extra=None):
        return original(data, False, extra)

    return exogenous_controls


def apply(fault: str) -> None:
    if fault == "bias":
        _rebind("invariant_mr.inference.estimates", "estimate_from_fit", _shift_invariant_pooled)
    elif fault == "narrow":
        from invariant_mr.estimators.iv import WaldInference

        wald_ci = WaldInference.ci

        def ci(self, alpha=0.05):
            lo, hi = wald_ci(self, alpha)
            return self.estimate - NARROW * (self.estimate - lo), self.estimate + NARROW * (hi - self.estimate)

        WaldInference.ci = ci
        _rebind("invariant_mr.inference.estimates", "estimate_from_fit", _scale_se)
        _rebind("invariant_mr.inference.direction_bootstrap", "with_bootstrap_se", _narrow_rows)
        _rebind("invariant_mr.estimators.summary.summary_mr", "_wald", _narrow_rows)
    elif fault == "no_env_effects":
        _rebind("invariant_mr.data", "exogenous_controls", _drop_env_effects)
    elif fault != "none":
        raise SystemExit(f"unknown fault {fault!r}")


# ----------------------------------------------------------------------------- pytest plugin
def pytest_configure(config):
    fault = os.environ.get(ENV_VAR)
    if fault:
        apply(fault)


# ----------------------------------------------------------------------------- driver
def run_suite(fault: str, tests: list[str]) -> dict:
    env = {
        **os.environ,
        ENV_VAR: fault,
        # The repository root, not benchmarks/, goes on the path: benchmarks/coverage.py would shadow
        # the `coverage` package that numba imports. The plugin loads as benchmarks.mutation_check.
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }  # fmt: skip
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "benchmarks.mutation_check", "-rf", *tests]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    failed = sorted(set(re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)))
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    return {"fault": fault, "returncode": proc.returncode, "failed": failed, "summary": summary, "wall_s": time.time() - t0}


def write_tables(results: list[dict], tests: list[str], command: str) -> None:
    from invariant_mr.provenance import cpu_model

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "src", "tests", "benchmarks/mutation_check.py"],
                                cwd=ROOT, capture_output=True, text=True).stdout.strip())  # fmt: skip
    meta = {
        "command": command, "commit": commit + ("+uncommitted" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "hardware": cpu_model(), "tests": tests,
        "shift_ses": SHIFT_SES, "narrow": NARROW,
    }  # fmt: skip
    out = ROOT / "benchmarks" / "results"
    (out / "mutation_check.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    lines = [
        "# Mutation check: do the statistical tests fail when an estimate is wrong?",
        "",
        f"Command: `{command}`  ",
        f"Commit: {meta['commit']}; date: {meta['date']}; hardware: {meta['hardware']} (2 shared cores; wall times noisy)  ",
        f"Tests run under each fault: {', '.join(f'`{t}`' for t in tests)}",
        "",
        "Faults are injected at run time by `benchmarks/mutation_check.py` acting as a pytest plugin; the source is not edited.",
        f"bias: pooled estimates of the invariant methods + {SHIFT_SES:g} SE. narrow: every SE and interval x {NARROW:g}.",
        "no_env_effects: pooled fits without environment fixed effects. none: no fault (must pass).",
        "",
        "| fault | exit code | failed tests | summary | wall (s) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        failed = "<br>".join(f"`{f}`" for f in r["failed"]) or "none"
        lines.append(f"| {r['fault']} | {r['returncode']} | {failed} | {r['summary']} | {r['wall_s']:.0f} |")
    (out / "mutation_check.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", default="none,bias,narrow,no_env_effects")
    parser.add_argument("--tests", nargs="*", default=list(DEFAULT_TESTS))
    args = parser.parse_args(argv)
    command = "python benchmarks/mutation_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = []
    for fault in args.faults.split(","):
        res = run_suite(fault, args.tests)
        print(f"{fault}: rc={res['returncode']} failed={len(res['failed'])} ({res['summary']})", flush=True)
        results.append(res)
    write_tables(results, args.tests, command.strip())
    ok = all((r["returncode"] == 0) == (r["fault"] == "none") for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
