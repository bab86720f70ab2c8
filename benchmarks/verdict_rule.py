"""How often does the verdict rule (docs/verdict.md) pick the least-biased method?

For each scenario and seed: simulate, run the default methods through
`invariant_mr.pipeline.run_analysis`, apply `invariant_mr.report.verdict.verdict`
(which never sees the truth), then compare the recommended method's |bias|
with the smallest |bias| among the methods that produced an estimate.

Scenarios: the paper's settings linear, poly2, poly3, mlp and discrete with
K = 2 environments, and one Balding-Nichols genetic setting (3 admixed
populations, F_ST 0.1, 200 variants).

    nice -n 10 python benchmarks/verdict_rule.py --seeds 5 --n-per-env 2000

writes benchmarks/results/verdict_rule.json and benchmarks/results/verdict_rule.md.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from invariant_mr.methods.registry import MethodContext
from invariant_mr.pipeline import run_analysis
from invariant_mr.provenance import cpu_model
from table_provenance import git_commit  # noqa: E402
from invariant_mr.report.verdict import verdict
from invariant_mr.simulation.genetic_dataset import simulate_genetic
from invariant_mr.simulation.paper import simulate_paper

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "benchmarks" / "results" / "verdict_rule.json"
OUT_MD = ROOT / "benchmarks" / "results" / "verdict_rule.md"
PAPER_SETTINGS = ("linear", "poly2", "poly3", "mlp", "discrete")
GENETIC = "bn-fst0.1"
#: Fewer bootstrap draws for the weighted median/mode SEs keep the run short (as in genetic_settings.py).
OPTIONS = {"n_bootstrap": 200}


def simulate(scenario: str, seed: int, n_per_env: int):
    """(MRData, theta) for one scenario and seed."""
    if scenario == GENETIC:
        sim = simulate_genetic("balding-nichols", seed=seed, n_envs=3, n_per_env=n_per_env, n_variants=200,
                               fst=0.1, admixture=0.1)
        return sim.to_mrdata(), sim.theta
    sim = simulate_paper(scenario, n_envs=2, n_per_env=n_per_env, seed=seed)
    return sim.data, sim.theta


def one_run(scenario: str, seed: int, n_per_env: int) -> dict:
    data, theta = simulate(scenario, seed, n_per_env)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(data, None, MethodContext(seed=seed, per_env=False, progress=False, options=OPTIONS),
                              command="benchmarks/verdict_rule.py")
    seconds = time.perf_counter() - start
    v = verdict(result)
    bias = {e.method: e.estimate - theta for e in result.select(scope="pooled") if e.available}
    best = min(bias, key=lambda m: abs(bias[m]))
    ranked = sorted(bias, key=lambda m: abs(bias[m]))
    return {
        "scenario": scenario,
        "seed": seed,
        "n_per_env": n_per_env,
        "recommended": v.recommended,
        "tier": None if v.recommended is None else v.assessment(v.recommended).tier,
        "least_biased": best,
        "bias": bias,
        "rank": None if v.recommended is None else ranked.index(v.recommended) + 1,
        "n_methods": len(bias),
        "seconds": round(seconds, 2),
    }


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for scenario in dict.fromkeys(r["scenario"] for r in records):
        rs = [r for r in records if r["scenario"] == scenario]
        picked = [abs(r["bias"][r["recommended"]]) for r in rs if r["recommended"] is not None]
        best = [abs(r["bias"][r["least_biased"]]) for r in rs]
        median_method = [float(np.median(np.abs(list(r["bias"].values())))) for r in rs]
        # Per run, a noisy weak-instrument estimate can land near theta by chance; the method with the
        # smallest |mean bias| over the scenario's runs is the steadier target.
        methods = sorted({m for r in rs for m in r["bias"]})
        mean_bias = {m: float(np.mean([r["bias"][m] for r in rs if m in r["bias"]])) for m in methods
                     if all(m in r["bias"] for r in rs)}
        steady = min(mean_bias, key=lambda m: abs(mean_bias[m]))
        rows.append({
            "scenario": scenario,
            "runs": len(rs),
            "hits": sum(r["recommended"] == r["least_biased"] for r in rs),
            "least_biased_on_average": steady,
            "hits_on_average": sum(r["recommended"] == steady for r in rs),
            "top3": sum(r["rank"] is not None and r["rank"] <= 3 for r in rs),
            "mean_rank": float(np.mean([r["rank"] for r in rs if r["rank"] is not None])) if picked else math.nan,
            "n_methods": max(r["n_methods"] for r in rs),
            "abs_bias_picked": float(np.mean(picked)) if picked else math.nan,
            "abs_bias_best": float(np.mean(best)),
            "abs_bias_median_method": float(np.mean(median_method)),
            "picked": dict(Counter(r["recommended"] for r in rs)),
            "least_biased": dict(Counter(r["least_biased"] for r in rs)),
            "tiers": dict(Counter(str(r["tier"]) for r in rs)),
        })
    return rows


def markdown(meta: dict, rows: list[dict]) -> str:
    total = sum(r["runs"] for r in rows)
    hits = sum(r["hits"] for r in rows)
    lines = [
        "# Verdict rule: how often it picks the least-biased method",
        "",
        f"Regenerate: `{meta['command']}`  ",
        f"Commit: {meta.get('commit', 'not recorded')}",
        (f"Hardware: {meta['cpu']}, {meta['cores']} cores, CPU only (shared machine, niced). "
        f"Date: {meta['date']}. Wall time {meta['wall_minutes']:.1f} min. Python {meta['python']}."),
        "",
        "Each run simulates a fresh data set (seed = run number), runs the default methods with",
        "`run_analysis` (pooled only, `n_bootstrap = 200`) and applies `invariant_mr.report.verdict.verdict`,",
        "which never sees the true effect. *Hit* = the recommended method is the one with the smallest",
        "|estimate - theta| in that run (among methods with an estimate, OLS included). *Top 3* = it is",
        "among the three least biased. |bias| columns are means over runs: of the recommended method, of",
        "the least-biased method in each run (an oracle choice), and of the median method.",
        f"Paper settings: K = 2, n = {meta['n_per_env']} per environment. {GENETIC}: 3 admixed",
        f"Balding-Nichols populations (F_ST 0.1, 10% admixture, 200 variants), n = {meta['n_per_env']} per environment.",
        "",
        "*Hit (avg)* = the recommended method is the one with the smallest |mean bias| over the scenario's",
        "runs (named in the next column): a per-run hit can reward a noisy method that landed near theta by chance.",
        "",
        "| scenario | runs | hits | top 3 | hits (avg) | least biased on average | mean rank (of methods) | mean abs bias: recommended | least-biased | median method | recommended (count) | least biased (count) | tier of pick |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {r['scenario']} | {r['runs']} | {r['hits']} | {r['top3']} | {r['hits_on_average']} "
            f"| {r['least_biased_on_average']} | {r['mean_rank']:.1f} (of {r['n_methods']}) "
            f"| {r['abs_bias_picked']:.3f} | {r['abs_bias_best']:.3f} | {r['abs_bias_median_method']:.3f} "
            f"| {fmt(r['picked'])} | {fmt(r['least_biased'])} | {fmt(r['tiers'])} |"
        )
    lines += [
        "",
        (f"Overall hit rate: {hits}/{total} = {hits / total:.2f} per run; "
        f"{sum(r['hits_on_average'] for r in rows)}/{total} = {sum(r['hits_on_average'] for r in rows) / total:.2f} "
        "against the least biased on average."),
        "",
        "Tier of the pick (docs/verdict.md): 0 = strong instruments, invariance across environments and every",
        "other check pass; 1 = strong, only overidentification-type checks ran and pass; 2 = nothing fails but",
        "validity or strength unchecked; 3 = every method fails a check (the pick fails the fewest).",
        "",
        "History, for honesty: a first version of the rule put every passing check on one level (no tier 1/0",
        "split). Its partial run (linear and poly2, 5 seeds each) picked IVW, MR-Egger or MR-PRESSO in 7 of 10",
        "runs, whose heterogeneity checks passed although they were among the most biased: those tests only",
        "see instruments that disagree, not a bias shared by all of them. The rule was changed once, on that",
        "principle (invariance evidence ranks above overidentification evidence), and not tuned further. On",
        "those 10 runs both versions hit 2 (the change moved linear seed 0 from MR-Egger to invariant_linear_crossfit).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n-per-env", type=int, default=2000)
    ap.add_argument("--scenarios", default=",".join((*PAPER_SETTINGS, GENETIC)))
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the saved .json")
    args = ap.parse_args(argv)
    if args.report_only:
        saved = json.loads(OUT_JSON.read_text())
        saved["summary"] = summarise(saved["runs"])
        OUT_JSON.write_text(json.dumps(saved, indent=1) + "\n")
        OUT_MD.write_text(markdown(saved["meta"], saved["summary"]))
        print(OUT_MD.read_text())
        return 0
    start = time.perf_counter()
    records = []
    for scenario in args.scenarios.split(","):
        for seed in range(args.seeds):
            rec = one_run(scenario, seed, args.n_per_env)
            records.append(rec)
            print(f"{scenario} seed {seed}: picked {rec['recommended']} (rank {rec['rank']}), "
                  f"least biased {rec['least_biased']}, {rec['seconds']} s", flush=True)
    meta = {
        "command": "nice -n 10 python benchmarks/verdict_rule.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "date": dt.date.today().isoformat(),
        "wall_minutes": (time.perf_counter() - start) / 60,
        "python": platform.python_version(),
        "n_per_env": args.n_per_env,
    }
    rows = summarise(records)
    OUT_JSON.write_text(json.dumps({"meta": meta, "summary": rows, "runs": records}, indent=1) + "\n")
    OUT_MD.write_text(markdown(meta, rows))
    print(OUT_MD.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
