"""Bias and coverage of the IV log odds ratio estimators (2SRI, 2SPS) for a binary outcome.

Simulator: `invariant_mr.simulation.binary.simulate_binary_outcome` (10
variants, first-stage F about 110 at n = 5000, logistic outcome in the
exposure and an unmeasured confounder U = rho v + sqrt(1 - rho^2) e, v the
first-stage error). Cells: rho = 1 (control-function model) with beta = 0.5
and beta = 0, and rho = 0.5 (part of the confounder unexplained) with
beta = 0.5. Sandwich SEs (stacked estimating equations), nominal 95% Wald
intervals; coverage with a 95% Wilson interval, against the conditional log
OR beta and against the population-averaged log OR at the mean exposure.

Run:  python benchmarks/binary_outcome.py              (defaults, about 2 CPU-min)
      python benchmarks/binary_outcome.py --reps 50    (smoke test)
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from invariant_mr.estimators.binary_outcome import fit_binary_iv  # noqa: E402
from invariant_mr.simulation.binary import simulate_binary_outcome  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CELLS = ({"rho": 1.0, "beta": 0.5}, {"rho": 1.0, "beta": 0.0}, {"rho": 0.5, "beta": 0.5})


def wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def run_cell(cell: dict, reps: int, n: int, seed0: int) -> dict:
    rows = {"2sri": [], "2sps": []}
    for r in range(reps):
        s = simulate_binary_outcome(n=n, n_variants=10, seed=seed0 + r, **cell)
        for m in rows:
            f = fit_binary_iv(s.outcome, s.exposure, s.Z, None, method=m)
            lo, hi = f.ci(0.05)
            rows[m].append((f.estimate, f.se, lo <= s.beta <= hi, lo <= s.population_log_or <= hi))
    out = {**cell, "reps": reps, "n": n, "population_log_or": s.population_log_or, "methods": {}}
    for m, v in rows.items():
        v = np.asarray(v)
        h1, h2 = int(v[:, 2].sum()), int(v[:, 3].sum())
        out["methods"][m] = {
            "mean": float(v[:, 0].mean()),
            "mc_sd": float(v[:, 0].std(ddof=1)),
            "mean_se": float(v[:, 1].mean()),
            "coverage_beta": h1 / reps,
            "coverage_beta_ci": wilson(h1, reps),
            "coverage_population": h2 / reps,
            "coverage_population_ci": wilson(h2, reps),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--out", type=Path, default=RESULTS / "binary_outcome.md")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip() or "unknown"
    t0 = time.process_time()
    cells = [run_cell(c, args.reps, args.n, args.seed + 100_000 * i) for i, c in enumerate(CELLS)]
    cpu = time.process_time() - t0
    lines = [
        "# IV log odds ratios for a binary outcome: bias and coverage",
        "",
        f"Command: `python benchmarks/binary_outcome.py --reps {args.reps} --n {args.n} --seed {args.seed}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Hardware: {cpu_name()} ({os.cpu_count()} cores shared with other jobs; one process, one BLAS thread)  ",
        f"invariant-mr git: {commit}; total CPU time {cpu:.0f} s",
        "",
        "Simulator: `simulate_binary_outcome` (10 variants, first-stage F about 110, b0 = -1, gamma = 1).",
        "beta: the log OR conditional on the confounder U; pop: the population-averaged log OR per unit at",
        "the mean exposure. Sandwich SEs from the stacked estimating equations; nominal 95% Wald intervals;",
        "coverage with a 95% Wilson interval.",
        "",
        "| rho | beta | pop log OR | method | mean | bias vs beta | MC SD | mean SE | coverage of beta | coverage of pop |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        for m, r in c["methods"].items():
            lo1, hi1 = r["coverage_beta_ci"]
            lo2, hi2 = r["coverage_population_ci"]
            lines.append(
                f"| {c['rho']} | {c['beta']} | {c['population_log_or']:.4f} | {m} | {r['mean']:.4f} | "
                f"{r['mean'] - c['beta']:+.4f} | {r['mc_sd']:.4f} | {r['mean_se']:.4f} | "
                f"{r['coverage_beta']:.3f} [{lo1:.3f}, {hi1:.3f}] | {r['coverage_population']:.3f} [{lo2:.3f}, {hi2:.3f}] |"
            )
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(
        json.dumps({"args": {**vars(args), "out": str(args.out)}, "cells": cells}, indent=2)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
