"""Is the verdict right? Score `invariant_mr.report.verdict.verdict` against the truth on many data sets.

Two stages, so that the rule is written once and measured on analyses it
never influenced:

1. ``run``: for each scenario and seed, simulate a data set, run the default
   methods through `invariant_mr.pipeline.run_analysis` (what `invariant-mr
   run` does with default options) and append the whole result (estimates,
   per-environment rows, diagnostics; no artifacts) to
   ``benchmarks/results/verdict_runs/<scenario>.jsonl``. Resumable: a
   (scenario, seed) already there is skipped. The verdict is not involved.
2. ``patch``: after a method changes or joins the default set, rerun only
   that method on the same simulated data (seeded, so identical) and replace
   its rows and its own diagnostics (``<method>/...``) in each stored analysis;
   every other method's output is untouched. Each method draws its random
   numbers from its own named stream, so the patched record equals what a
   full rerun would store. The record lists its patches (methods, commit).
   Resumable: a record already patched with the same ``--tag`` is skipped.
3. ``score``: rebuild each result (`AnalysisResult.from_dict`), apply the
   verdict (which never sees the truth) and score it:

   * right: the pick is within 0.05 of the truth, or there is no pick and no
     reported estimate is within 0.10;
   * wrong: the pick is off by more than 0.10;
   * declined: no pick although some reported estimate was within 0.10;
   * near: the pick is off by 0.05-0.10 (neither right nor wrong).

Scenarios (K = 2 paper settings, n per environment below): linear, poly2,
poly3, mlp, discrete, each with 0, 2 and 10% measurement noise on Z (SD as a
fraction of each column's SD); Balding-Nichols (3 admixed populations,
F_ST 0.1, 200 variants); the coalescent out-of-Africa model (msprime/stdpopsim,
3 populations, 200 variants); assortative mating (3 populations, 5
generations, 200 variants).

    nice -n 10 python benchmarks/verdict_rule.py run --seeds 10
    nice -n 10 python benchmarks/verdict_rule.py patch --methods invariant_polynomial
    python benchmarks/verdict_rule.py score

writes benchmarks/results/verdict_rule.json and benchmarks/results/verdict_rule.md.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "results" / "verdict_runs"
OUT_JSON = ROOT / "benchmarks" / "results" / "verdict_rule.json"
OUT_MD = ROOT / "benchmarks" / "results" / "verdict_rule.md"
PAPER = ("linear", "poly2", "poly3", "mlp", "discrete")
NOISE = (0.0, 0.02, 0.10)
GENETIC = ("balding-nichols", "coalescent", "assortative")
SCENARIOS = tuple(f"{s}-noise{int(100 * z)}" for s in PAPER for z in NOISE) + GENETIC
#: As in genetic_settings.py: fewer bootstrap draws for the weighted median/mode SEs keep runs short.
OPTIONS = {"n_bootstrap": 200}
RIGHT, NEAR = 0.05, 0.10


def simulate(scenario: str, seed: int, n_per_env: int):
    """(MRData, theta) for one scenario and seed."""
    from invariant_mr.io.genetic_input import family_sizes
    from invariant_mr.simulation.genetic_dataset import simulate_genetic
    from invariant_mr.simulation.paper import simulate_paper

    if scenario in GENETIC:
        kw = {"n_envs": 3, "n_per_env": n_per_env, "n_variants": 200}
        if scenario == "balding-nichols":
            kw |= {"fst": 0.1, "admixture": 0.1}
        if scenario == "coalescent":
            kw = {"n_per_env": n_per_env, "n_variants": 200}
        sim = simulate_genetic(scenario, seed=seed, **kw)
        # As `run --bfile` reads the fileset: FIDs that name families (assortative mating: sibships) make
        # the families the clusters and add within_family (`--family-col auto`, the default).
        families = sim.family_ids is not None and family_sizes(sim.family_ids) is not None
        return sim.to_mrdata(families=families), sim.theta
    setting, noise = scenario.rsplit("-noise", 1)
    sim = simulate_paper(setting, n_envs=2, n_per_env=n_per_env, seed=seed, noise=int(noise) / 100)
    return sim.data, sim.theta


def _analyse(data, seed: int, methods=None, command: str = "benchmarks/verdict_rule.py"):
    """`run_analysis` as `invariant-mr run` calls it: with families, clustered SEs and within_family added."""
    from invariant_mr.methods.registry import MethodContext, resolve_methods
    from invariant_mr.pipeline import run_analysis

    families = data.clusters is not None
    if families and methods is None:
        methods = [s.name for s in resolve_methods(None)] + ["within_family"]
    ctx = MethodContext(seed=seed, progress=False, options=OPTIONS, cov_type="cluster" if families else "robust")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_analysis(data, methods, ctx, command=command)


def run(args) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    scenarios = args.scenarios.split(",") if args.scenarios else SCENARIOS
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for scenario in scenarios:
            path = RUNS / f"{scenario}.jsonl"
            done = {json.loads(line)["seed"] for line in path.open()} if path.exists() else set()
            if seed in done:
                continue
            data, theta = simulate(scenario, seed, args.n_per_env)
            start = time.perf_counter()
            result = _analyse(data, seed)
            seconds = time.perf_counter() - start
            payload = result.to_dict()
            payload.pop("verdict", None)  # stage 1 keeps the analysis only; `score` applies the rule
            record = {"scenario": scenario, "seed": seed, "theta": theta, "n_per_env": args.n_per_env,
                      "families": data.clusters is not None, "seconds": round(seconds, 2), "result": payload}
            with path.open("a") as fh:
                fh.write(json.dumps(record, default=str) + "\n")
            print(f"{scenario} seed {seed}: {seconds:.1f} s", flush=True)


def _latest(path: Path) -> list[dict]:
    """One record per seed, the last one written (an earlier analysis of the same seed is superseded)."""
    return list({r["seed"]: r for r in (json.loads(line) for line in path.open())}.values())


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def patch(args) -> None:
    methods = [m for m in args.methods.split(",") if m]
    commit = _commit()
    tag = args.tag or f"{'+'.join(methods)}@{commit}"
    scenarios = args.scenarios.split(",") if args.scenarios else SCENARIOS
    owned = lambda name: any(name == m or name.startswith(m + "/") for m in methods)
    for scenario in scenarios:
        path = RUNS / f"{scenario}.jsonl"
        if not path.exists():
            continue
        records = sorted(_latest(path), key=lambda r: r["seed"])
        for record in records:
            if tag in {p["tag"] for p in record.get("patches", [])}:
                continue
            data, theta = simulate(scenario, record["seed"], record["n_per_env"])
            if abs(theta - record["theta"]) > 1e-12:
                raise SystemExit(f"{scenario} seed {record['seed']}: the simulation changed (theta {theta} vs "
                                 f"{record['theta']}); rerun the analyses with `run`")
            if (data.clusters is not None) != bool(record.get("families")):
                raise SystemExit(f"{scenario} seed {record['seed']}: the analysis design changed (families); "
                                 "rerun the analyses with `run`")
            start = time.perf_counter()
            new = _analyse(data, record["seed"], methods, "benchmarks/verdict_rule.py patch").to_dict()
            seconds = time.perf_counter() - start
            result = record["result"]
            result["estimates"] = [e for e in result["estimates"] if e["method"] not in methods] + new["estimates"]
            result["diagnostics"] = [d for d in result["diagnostics"] if not owned(d["name"])] + [
                d for d in new["diagnostics"] if owned(d["name"])]
            record.setdefault("patches", []).append(
                {"tag": tag, "methods": methods, "commit": commit, "seconds": round(seconds, 2)})
            # Rewrite the whole file atomically after each record: an interrupted patch loses nothing.
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
            os.replace(tmp, path)
            print(f"{scenario} seed {record['seed']}: patched {','.join(methods)} in {seconds:.1f} s", flush=True)


def score_one(record: dict) -> dict:
    from invariant_mr.report.verdict import verdict
    from invariant_mr.results import AnalysisResult

    result = AnalysisResult.from_dict(record["result"])
    theta = record["theta"]
    v = verdict(result)
    errors = {e.method: e.estimate - theta for e in result.select(scope="pooled") if e.available}
    best = min(abs(b) for b in errors.values()) if errors else float("inf")
    if v.recommended is None:
        outcome = "right" if best > NEAR else "declined"
        error = None
    else:
        error = v.estimate - theta
        outcome = "right" if abs(error) <= RIGHT else ("wrong" if abs(error) > NEAR else "near")
    return {"scenario": record["scenario"], "seed": record["seed"], "recommended": v.recommended,
            "error": error, "outcome": outcome, "best_error": best,
            "best_method": min(errors, key=lambda m: abs(errors[m])) if errors else None,
            "statement": v.statement, "seconds": record["seconds"]}


def score(args) -> None:
    from invariant_mr.provenance import cpu_model

    records = [r for p in sorted(RUNS.glob("*.jsonl")) for r in _latest(p)]
    scored = [score_one(r) for r in records]
    order = {s: i for i, s in enumerate(SCENARIOS)}
    scored.sort(key=lambda r: (order.get(r["scenario"], 99), r["seed"]))
    rows = []
    for scenario in sorted({r["scenario"] for r in scored}, key=lambda s: order.get(s, 99)):
        rs = [r for r in scored if r["scenario"] == scenario]
        count = Counter(r["outcome"] for r in rs)
        picked = [abs(r["error"]) for r in rs if r["error"] is not None]
        rows.append({
            "scenario": scenario, "runs": len(rs), **{k: count.get(k, 0) for k in ("right", "wrong", "declined", "near")},
            "picks": dict(Counter(r["recommended"] or "none" for r in rs)),
            "mean_abs_error_of_pick": sum(picked) / len(picked) if picked else None,
            "best_within_0.05": sum(r["best_error"] <= RIGHT for r in rs),
            "median_seconds": sorted(r["seconds"] for r in rs)[len(rs) // 2],
        })
    total = {k: sum(r[k] for r in rows) for k in ("runs", "right", "wrong", "declined", "near")}
    commit = _commit()
    patched = sorted({r["patches"][-1]["tag"] for r in records if r.get("patches")})  # the latest rerun of each
    meta = {"date": dt.date.today().isoformat(), "cpu": cpu_model(), "python": platform.python_version(),
            "commit": commit, "command_run": "nice -n 10 python benchmarks/verdict_rule.py run --seeds 10",
            "command_score": "python benchmarks/verdict_rule.py score", "patches": patched, "argv": sys.argv}
    OUT_JSON.write_text(json.dumps({"meta": meta, "total": total, "rows": rows, "runs": scored}, indent=1))
    OUT_MD.write_text(markdown(meta, total, rows))
    print(OUT_MD.read_text())


def markdown(meta: dict, total: dict, rows: list[dict]) -> str:
    pct = lambda k: f"{100 * total[k] / total['runs']:.0f}%" if total["runs"] else "NA"
    lines = [
        "# The verdict against the truth",
        "",
        f"Regenerate: `{meta['command_run']}` (the analyses, resumable), "
        + "".join(f"`nice -n 10 python benchmarks/verdict_rule.py patch --methods {t.split('@')[0].replace('+', ',')}` "
                  f"(rerun at {t.split('@')[1]}), " for t in meta.get("patches", []))
        + f"then `{meta['command_score']}`.",
        f"Scored at commit {meta['commit']} on {meta['date']}; {meta['cpu']}, CPU only, Python {meta['python']}.",
        *([f"Methods rerun on the stored data (`patch`): {', '.join(meta['patches'])}."] if meta.get("patches") else []),
        "",
        "Each run simulates a data set, runs the default methods with `run_analysis` (as `invariant-mr run` with",
        "default options; `n_bootstrap = 200`) and applies `invariant_mr.report.verdict.verdict`, which never sees",
        "the truth. **right**: the pick is within 0.05 of the truth, or there is no pick and no reported estimate is",
        "within 0.10. **wrong**: the pick is off by more than 0.10. **declined**: no pick although some estimate was",
        "within 0.10. **near**: the pick is off by 0.05-0.10. Paper settings: K = 2; noise is the SD of measurement",
        "error on Z as a fraction of each column's SD.",
        "",
        f"**Overall: {total['runs']} runs, right {total['right']} ({pct('right')}), wrong {total['wrong']} ({pct('wrong')}), "
        f"declined {total['declined']} ({pct('declined')}), near {total['near']} ({pct('near')}).**",
        "",
        "| scenario | runs | right | wrong | declined | near | picks | mean abs error of pick | runs with some estimate within 0.05 | median s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        picks = ", ".join(f"{k} {v}" for k, v in sorted(r["picks"].items(), key=lambda kv: -kv[1]))
        err = "" if r["mean_abs_error_of_pick"] is None else f"{r['mean_abs_error_of_pick']:.3f}"
        lines.append(f"| {r['scenario']} | {r['runs']} | {r['right']} | {r['wrong']} | {r['declined']} | {r['near']} "
                     f"| {picks} | {err} | {r['best_within_0.05']} | {r['median_seconds']:.0f} |")
    history = ROOT / "benchmarks" / "verdict_rule_history.md"
    if history.exists():
        lines += ["", history.read_text().strip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    r = sub.add_parser("run", help="simulate and analyse (resumable)")
    r.add_argument("--seeds", type=int, default=10)
    r.add_argument("--first-seed", type=int, default=0)
    r.add_argument("--n-per-env", type=int, default=2000)
    r.add_argument("--scenarios", default="", help="comma-separated subset of: " + ", ".join(SCENARIOS))
    pa = sub.add_parser("patch", help="rerun some methods on the stored scenarios and replace their output")
    pa.add_argument("--methods", required=True, help="comma-separated method names")
    pa.add_argument("--scenarios", default="", help="comma-separated subset (default: all)")
    pa.add_argument("--tag", default="", help="resume key (default: METHODS@COMMIT)")
    sub.add_parser("score", help="apply the verdict to the stored analyses and write the tables")
    args = parser.parse_args()
    {"run": run, "patch": patch, "score": score}[args.stage](args)


if __name__ == "__main__":
    main()
