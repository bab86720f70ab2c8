"""Semi-synthetic benchmark: every registered method on genetics-grounded simulations.

Scenarios (see `SCENARIOS`): admixed Balding-Nichols populations at two levels
of differentiation, coalescent genotypes from stdpopsim's OutOfAfrica_3G09 and
AmericanAdmixture_4B18, and assortative mating over generations. Each
replicate simulates a fresh data set (seed = replicate number), runs the
methods through `invariant_mr.pipeline.run_analysis` and records the pooled
estimate, its CI and the method's time. Two references computed here, not
registry methods, bracket the results:

* `ref_tsls_causal_env`: 2SLS on the true exposure-causal variants with
  environment fixed effects (what an analyst who knew the causal variants
  would do; still confounded when those variants track ancestry);
* `ref_oracle_H`: 2SLS on every variant with environment fixed effects and
  the true confounder H as a control (valid by construction).

Usage (one scenario per call keeps each job short; `report` assembles):

    python benchmarks/genetic_settings.py run --scenario bn-fst0.1 --replicates 20
    python benchmarks/genetic_settings.py run --scenario bn-fst0.1 --replicates 5 \\
        --methods invariant_autoencoder --tag neural
    python benchmarks/genetic_settings.py report

`run` writes benchmarks/results/genetic_settings/<scenario>[-<tag>].json;
`report` writes benchmarks/results/genetic_settings.md and the figures in
docs/img/. BLAS and torch are pinned to one thread: on a shared 2-core box,
multithreaded OpenBLAS was 6-8x slower than single-threaded.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from invariant_mr.estimators.iv import fit_kclass  # noqa: E402
from invariant_mr.pipeline import run_analysis  # noqa: E402
from invariant_mr.provenance import cpu_model  # noqa: E402
from table_provenance import git_commit  # noqa: E402
from invariant_mr.methods.registry import MethodContext, resolve_methods  # noqa: E402
from invariant_mr.simulation.genetic_dataset import simulate_genetic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results" / "genetic_settings"
REPORT = ROOT / "benchmarks" / "results" / "genetic_settings.md"
FIGURES = ROOT / "docs" / "img"
#: The write-up whose headline table `report` rewrites, between these two marker lines.
WRITE_UP = ROOT / "docs" / "genetic_simulations.md"
TABLE_BEGIN = "<!-- headline table: written by `python benchmarks/genetic_settings.py report`, do not edit -->"
TABLE_END = "<!-- end of headline table -->"
CELLS_BEGIN = "<!-- scenario table: written by `python benchmarks/genetic_settings.py report`, do not edit -->"
CELLS_END = "<!-- end of scenario table -->"

#: name -> (model, parameters, one-line description)
SCENARIOS: dict[str, tuple[str, dict, str]] = {
    "bn-fst0.1": (
        "balding-nichols",
        dict(n_envs=3, n_per_env=3000, n_variants=200, fst=0.1, admixture=0.1),
        "3 admixed Balding-Nichols populations, F_ST 0.1 (continental scale), 10% admixture",
    ),
    "bn-fst0.01": (
        "balding-nichols",
        dict(n_envs=3, n_per_env=3000, n_variants=200, fst=0.01, admixture=0.1),
        "3 admixed Balding-Nichols populations, F_ST 0.01 (within-continent scale), 10% admixture",
    ),
    "coalescent-ooa": (
        "coalescent",
        dict(demography="OutOfAfrica_3G09", n_per_env=3000, length_mb=5.0, chunk_mb=1.0, n_variants=200),
        "OutOfAfrica_3G09 (YRI/CEU/CHB), 5 x 1 Mb chunks, 200 common SNPs",
    ),
    "coalescent-admix": (
        "coalescent",
        dict(demography="AmericanAdmixture_4B18", n_per_env=2250, length_mb=5.0, chunk_mb=1.0, n_variants=200),
        "AmericanAdmixture_4B18 (AFR/EUR/ASIA/ADMIX), 4 x 2250, 5 x 1 Mb chunks, 200 common SNPs",
    ),
    "assortative": (
        "assortative",
        dict(n_envs=3, n_per_env=3000, n_variants=200, generations=5, mating_correlation=0.5),
        "3 populations, cross-trait assortative mating r = 0 / 0.25 / 0.5, 5 generations, "
        "family environment (parents' mean exposure) effect 0.3",
    ),
    "assortative-nofamily": (
        "assortative",
        dict(n_envs=3, n_per_env=3000, n_variants=200, generations=5, mating_correlation=0.8,
             family_effect=0.0, h2=0.5, h2_outcome=0.5),
        "3 populations, cross-trait assortative mating r = 0 / 0.4 / 0.8, 5 generations, no family "
        "effect, h2 0.5 for exposure and outcome: the Hartwig et al. mechanism alone",
    ),
    "coalescent-ooa-gwanc": (
        "coalescent",
        dict(demography="OutOfAfrica_3G09", n_per_env=3000, length_mb=5.0, chunk_mb=1.0, n_variants=200,
             ancestry_snps="genome", keep_genome=True),
        "coalescent-ooa with the confounder following ancestry estimated from every common SNP (about 10,000) "
        "rather than from the 200 instrument SNPs",
    ),
    "coalescent-admix-gwanc": (
        "coalescent",
        dict(demography="AmericanAdmixture_4B18", n_per_env=2250, length_mb=5.0, chunk_mb=1.0, n_variants=200,
             ancestry_snps="genome", keep_genome=True),
        "coalescent-admix with the confounder following ancestry estimated from every common SNP",
    ),
    "sibships": (
        "sibships",
        dict(n_envs=3, n_families_per_env=1500, n_sibs=2, n_variants=200, fst=0.05, admixture=0.2, generations=3,
             mating_correlation=0.5, stratification=0.5, family_effect=0.3, dynastic=0.3, household_sd=0.5),
        "3 Balding-Nichols populations (F_ST 0.05, 20% admixture) of 1500 sibling pairs each, cross-trait "
        "assortative mating r = 0 / 0.25 / 0.5 for 3 generations, dynastic effect 0.3 (parents' exposure on the "
        "child's outcome), household effect; SEs clustered by family",
    ),
    "demes": (
        "demes",
        dict(n_envs=3, n_demes=8, n_per_env=3000, n_variants=200, fst_region=0.05, fst_deme=0.02,
             local_confounding=0.8, keep_genome=True, n_genome_variants=2000),
        "fine-scale structure: 3 regions x 8 demes (F_ST 0.05 between regions, 0.02 between demes), 3000 per "
        "region, a local confounder (a random effect of each deme, 80% of H); 2,200 variants for genome-wide PCs",
    ),
    "nonlinear-ancestry": (
        "nonlinear-ancestry",
        dict(n_envs=3, n_per_env=3000, n_variants=200, fst=0.1, admixture=0.3, curvature=1.5,
             ancestry_confounding=0.8, keep_genome=True, n_genome_variants=2000),
        "3 admixed Balding-Nichols populations (F_ST 0.1, 30% admixture), confounder exp(1.5 s) of an ancestry "
        "axis s (80% of H); 2,200 variants for genome-wide PCs",
    ),
    "am-varying": (
        "assortative",
        dict(n_envs=3, n_per_env=3000, n_variants=200, generations=5, mating_correlation=0.8,
             family_effect=0.0, h2=0.5, h2_outcome=0.5),
        "assortative-nofamily with the sibling pairs' family IDs: cross-trait assortative mating r = 0 / 0.4 / "
        "0.8 (strength differing between environments), no family effect",
    ),
    "dynastic": (
        "assortative",
        dict(n_envs=3, n_per_env=3000, n_variants=200, generations=5, mating_correlation=0.0,
             family_effect=0.3),
        "random mating, a dynastic effect: the parents' mean exposure (0.3) on the child's exposure and outcome; "
        "sibling pairs' family IDs",
    ),
}

#: Scenarios with sibships: the data carry the family IDs (SEs clustered by family for every method,
#: as `run --family-col FID` does) and the within-family methods join the defaults.
FAMILY_SCENARIOS = {"sibships", "am-varying", "dynastic"}
FAMILY_METHODS = ("within_family", "within_family_ivw", "within_family_egger")

#: Methods whose runtime is dominated by resampling get fewer draws here (stated in the report).
BENCHMARK_OPTIONS = {"n_bootstrap": 200}


def reference_estimates(sim, data) -> dict[str, dict]:
    """The two non-registry references (see module docstring)."""
    env = data.env_dummies()
    theta = sim.theta
    out = {}
    causal = np.array(sim.truth["causal_variant_index"])
    start = time.perf_counter()
    # Clustered by family where the data have families, like every method.
    cov = {"cov_type": "cluster", "clusters": data.clusters} if data.clusters is not None else {}
    fit = fit_kclass(data.outcome, data.exposure, sim.genotypes[:, causal].astype(float), exog=env, **cov)
    out["ref_tsls_causal_env"] = _row(fit, theta, time.perf_counter() - start, len(causal))
    H = np.asarray(sim.latent["H"], dtype=float)
    H = H[:, None] if H.ndim == 1 else H
    start = time.perf_counter()
    fit = fit_kclass(data.outcome, data.exposure, data.Z, exog=np.column_stack([env, H]), **cov)
    out["ref_oracle_H"] = _row(fit, theta, time.perf_counter() - start, data.p)
    if "genome_genotypes" in sim.latent:
        # tsls_pcs as `run --pcs-from` runs it: 2SLS on every variant, environment fixed effects and the
        # top 10 genome-wide PCs (streamed randomised SVD over every distinct common SNP) as covariates.
        start = time.perf_counter()
        gw, _ = with_genome_wide_pcs(data, sim, seed=int(sim.truth.get("seed", 0)))
        fit = fit_kclass(data.outcome, data.exposure, data.Z, exog=np.column_stack([env, gw.covariates]), **cov)
        out["tsls_pcs_genome"] = _row(fit, theta, time.perf_counter() - start, data.p)
    return out


def _row(fit, theta, seconds, n_instruments) -> dict:
    lo, hi = fit.ci(0.05)
    return {
        "estimate": float(fit.estimate), "se": float(fit.se), "ci_low": float(lo), "ci_high": float(hi),
        "seconds": float(seconds), "n_instruments": int(n_instruments),
        "first_stage_f": None if fit.first_stage_f is None else float(fit.first_stage_f),
    }


def run_scenario(
    name: str, replicates: int, methods: list[str] | None, tag: str | None, first: int, prep: str = "raw",
    options: dict | None = None,
) -> Path:
    import torch

    torch.set_num_threads(1)
    model, params, description = SCENARIOS[name]
    families = name in FAMILY_SCENARIOS
    specs = resolve_methods(",".join(methods) if methods else None)
    method_names = [s.name for s in specs]
    if families and not methods:
        method_names += list(FAMILY_METHODS)
    method_options = {**BENCHMARK_OPTIONS, **(options or {})}
    records = _earlier_records(name, tag, method_names, prep, method_options, first)
    for rep in range(first, first + replicates):
        t0 = time.perf_counter()
        genome_pcs = prep == "genome-pcs"
        sim = simulate_genetic(model, seed=rep, **{**params, **({"keep_genome": True} if genome_pcs else {})})
        sim_seconds = time.perf_counter() - t0
        pcs_record = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate/monomorphic column notices
            data = sim.to_mrdata(families=families)
            if prep == "within-env-standardized":
                data = within_env_standardized(data)
            if genome_pcs:
                data, pcs_record = with_genome_wide_pcs(data, sim, seed=rep)
        ctx = MethodContext(seed=rep, per_env=False, options={**BENCHMARK_OPTIONS, **(options or {})},
                            cov_type="cluster" if families else "robust")
        rows = {}
        # One call per method, so that a method that raises is recorded and the others still run.
        for method in method_names:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = run_analysis(data, [method], ctx, command="benchmarks/genetic_settings.py")
            except Exception as exc:  # noqa: BLE001 - a benchmark records failures, it does not stop
                rows[method] = {"estimate": None, "se": None, "ci_low": None, "ci_high": None, "seconds": None,
                                "n_instruments": None, "first_stage_f": None,
                                "error": f"{type(exc).__name__}: {exc}"[:300]}
                continue
            seconds = result.provenance["method_seconds"]
            for est in result.estimates:
                if est.scope != "pooled":
                    continue
                rows[est.method] = {
                    "estimate": _num(est.estimate), "se": _num(est.se), "ci_low": _num(est.ci_low),
                    "ci_high": _num(est.ci_high), "seconds": seconds.get(est.method),
                    "n_instruments": est.n_instruments, "first_stage_f": _num(est.first_stage_f),
                    "reason": (est.extra or {}).get("reason"),
                }
        if not tag:
            rows.update(reference_estimates(sim, data))
        records.append({
            "replicate": rep, "simulation_seconds": sim_seconds, "theta": sim.theta, "n": sim.n, "m": sim.m,
            "fst": sim.truth.get("hudson_fst_between_environments") or sim.truth.get("hudson_fst_common_snps"),
            "methods": rows, **({"genome_pcs": pcs_record} if pcs_record else {}),
        })
        done = ", ".join(f"{k}={v['estimate']:.3f}" for k, v in rows.items() if v["estimate"] is not None)
        print(f"[{name}] replicate {rep}: simulated in {sim_seconds:.1f}s; {done}", flush=True)
        path = _write_payload(name, tag, model, params, description, method_names, records, prep, method_options)
    print(f"wrote {path}")
    return path


def _result_path(name: str, tag: str | None) -> Path:
    return RESULTS_DIR / (f"{name}-{tag}.json" if tag else f"{name}.json")


def _earlier_records(name, tag, method_names, prep, options, first) -> list[dict]:
    """Replicates 0 .. first-1 from an earlier run of the same configuration, so a job can be resumed.

    Replicate r always uses seed r, so replicates from separate calls are
    exactly the ones a single call would produce (up to timings). A stored
    file from another configuration, or with a gap before `first`, is refused
    rather than silently mixed.
    """
    if first == 0:
        return []
    path = _result_path(name, tag)
    if not path.exists():
        raise SystemExit(f"--first-replicate {first}: no earlier results in {path} to continue")
    payload = json.loads(path.read_text())
    same = (payload["methods"] == method_names and payload.get("instrument_preparation", "raw") == prep
            and payload["method_options"] == options and payload["parameters"] == SCENARIOS[name][1])
    if not same:
        raise SystemExit(f"--first-replicate {first}: {path} holds another configuration; rerun from 0")
    records = [r for r in payload["replicates"] if r["replicate"] < first]
    if sorted(r["replicate"] for r in records) != list(range(first)):
        raise SystemExit(f"--first-replicate {first}: {path} lacks some of replicates 0..{first - 1}")
    return records


def _command(records: list[dict]) -> str:
    """The single call that reproduces the stored replicates (resumed runs are recorded as one run)."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--first-replicate", "--replicates"):
            skip = True
            continue
        if arg.startswith(("--first-replicate=", "--replicates=")):
            continue
        argv.append(arg)
    at = next((i + 1 for i, a in enumerate(argv) if a.startswith("--scenario")), 0)
    at += 1 if at and argv[at - 1] == "--scenario" else 0
    argv[at:at] = ["--replicates", str(len(records))]
    return " ".join(["python", "benchmarks/genetic_settings.py", *argv])


def _write_payload(name, tag, model, params, description, method_names, records, prep, options) -> Path:
    """Rewrite the scenario's JSON after every replicate, so a stopped job keeps what it finished."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = _result_path(name, tag)
    payload = {
        "scenario": name, "tag": tag, "model": model, "parameters": params, "description": description,
        "instrument_preparation": prep, "methods": method_names, "method_options": options,
        "replicates": records,
        "command": _command(records),
        "hardware": _hardware(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
    return path


def within_env_standardized(data):
    """Each variant centred and scaled within each environment.

    Allele-frequency differences give every variant a different mean and
    variance in every population, so no linear direction of raw dosages is
    exactly invariant; per-environment standardisation removes those first
    and second marginal moments and leaves only the cross-variant structure.
    """
    from dataclasses import replace

    Z = np.array(data.Z, dtype=float)
    for level in data.env_levels:
        rows = data.env == level
        sd = Z[rows].std(axis=0)
        Z[rows] = (Z[rows] - Z[rows].mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return replace(data, Z=Z)


def genome_wide_pcs(sim, *, k: int = 10, seed: int = 0):
    """The top-k PCs of the simulation's genome-wide panel (`latent["genome_genotypes"]`): the streamed
    randomised SVD that `run --pcs-from` computes."""
    from invariant_mr.estimators.genotype_pcs import randomized_genotype_pcs, row_blocks_of_array

    return randomized_genotype_pcs(row_blocks_of_array(sim.latent["genome_genotypes"]), k, seed=seed)


def with_genome_wide_pcs(data, sim, *, k: int = 10, seed: int = 0):
    """The data with the top-k genome-wide PCs (`genome_wide_pcs`) as covariates PC1..PCk."""
    from dataclasses import replace

    start = time.perf_counter()
    pcs = genome_wide_pcs(sim, k=k, seed=seed)
    record = {"n_variants": int(pcs.variant_mask.sum()), "seconds": time.perf_counter() - start,
              "passes": pcs.passes}
    return replace(data, covariates=pcs.scores, covariate_names=tuple(f"PC{j + 1}" for j in range(k))), record


def _num(value):
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _hardware() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


# ---------------------------------------------------------------------------- report
def summarise(records: list[dict], method: str) -> dict:
    est, covered, secs, k = [], [], [], []
    failed = 0
    reasons: dict[str, int] = {}
    for rec in records:
        row = rec["methods"].get(method)
        if row is None:
            continue
        if row["estimate"] is None:
            failed += 1
            why = row.get("reason") or row.get("error") or "no estimate"
            reasons[why] = reasons.get(why, 0) + 1
            continue
        est.append(row["estimate"] - rec["theta"])
        if row["ci_low"] is not None and row["ci_high"] is not None:
            covered.append(row["ci_low"] <= rec["theta"] <= row["ci_high"])
        if row["seconds"] is not None:
            secs.append(row["seconds"])
        if row["n_instruments"] is not None:
            k.append(row["n_instruments"])
    err = np.array(est)
    return {
        "n": len(err), "failed": failed,
        "bias": float(err.mean()) if len(err) else None,
        "sd": float(err.std(ddof=1)) if len(err) > 1 else None,
        "rmse": float(np.sqrt(np.mean(err**2))) if len(err) else None,
        "coverage": float(np.mean(covered)) if covered else None,
        "n_coverage": len(covered),
        "median_seconds": float(np.median(secs)) if secs else None,
        "median_instruments": float(np.median(k)) if k else None,
        "failure_reasons": reasons,
    }


def _fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def build_report() -> None:
    files = sorted(RESULTS_DIR.glob("*.json"))
    if not files:
        raise SystemExit(f"no results in {RESULTS_DIR}; run a scenario first")
    by_scenario: dict[str, list[dict]] = {}
    for f in files:
        payload = json.loads(f.read_text())
        by_scenario.setdefault(payload["scenario"], []).append(payload)
    lines = [
        "# Genetics-grounded benchmark: stratification and assortative mating",
        "",
        "Regenerate: see the reproduction guide at the end. Every row is over independent replicates",
        "(fresh genotypes and phenotypes per seed); true theta = 1. Bias = mean(estimate - theta),",
        "SD = standard deviation of the estimates, coverage = share of 95% CIs containing theta",
        "(a CI within binomial noise of 0.95 needs roughly 0.85-1.0 at 20 replicates). Time is the",
        "median seconds of one method call. `failed` counts replicates without an estimate",
        "(e.g. no invariant direction found). Methods use their defaults, except `n_bootstrap = 200`",
        "(weighted median/mode SEs) to keep the run short.",
        "",
    ]
    summaries = {}
    for scenario in SCENARIOS:
        payloads = by_scenario.get(scenario)
        if not payloads:
            continue
        payloads.sort(key=lambda p: (p.get("tag") is not None, p.get("tag") or ""))
        lines += [f"## {scenario}: {payloads[0]['description']}", ""]
        for p in payloads:
            lines.append(f"- `{p['command']}` (commit {p.get('commit', 'not recorded')}; {p['date']}; {p['hardware']}; "
                         f"{len(p['replicates'])} replicates, median simulation time "
                         f"{np.median([r['simulation_seconds'] for r in p['replicates']]):.1f} s)")
        fst = payloads[0]["replicates"][0].get("fst")
        if fst:
            lines.append("- Hudson F_ST between environments, replicate 0 (SNPs with pooled MAF > 0.05 for the "
                         "coalescent): " + ", ".join(f"{k} {v:.3f}" for k, v in fst.items()))
        lines += ["", "| method | reps | failed | bias | SD | RMSE | coverage | instruments | time (s) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        summaries[scenario] = {}
        notes = []
        for p in payloads:
            names = list(p["methods"]) + [m for m in ("tsls_pcs_genome", "ref_tsls_causal_env", "ref_oracle_H")
                                          if any(m in r["methods"] for r in p["replicates"])]
            for method in names:
                label = method if not p.get("tag") else f"{method} [{p['tag']}]"
                s = summarise(p["replicates"], method)
                summaries[scenario][label] = s
                lines.append(
                    f"| {label} | {s['n']} | {s['failed']} | {_fmt(s['bias'])} | {_fmt(s['sd'])} | "
                    f"{_fmt(s['rmse'])} | {_fmt(s['coverage'], 2)} | {_fmt(s['median_instruments'], 0)} | "
                    f"{_fmt(s['median_seconds'], 2)} |"
                )
                for why, count in s["failure_reasons"].items():
                    notes.append(f"- {label}: no estimate in {count} replicate(s): {why}")
            if p.get("tag"):
                extra = {k: v for k, v in p["method_options"].items() if k not in BENCHMARK_OPTIONS}
                notes.append(f"- [{p['tag']}]: instruments {p.get('instrument_preparation', 'raw')}"
                             + (f", options {extra}" if extra else ""))
        if notes:
            lines += [""] + notes
        lines.append("")
    lines += headline_table(summaries)
    lines += reproduction_guide(by_scenario)
    REPORT.write_text("\n".join(lines) + "\n")
    (RESULTS_DIR.parent / "genetic_settings_summary.json").write_text(json.dumps(summaries, indent=1))
    print(f"wrote {REPORT}")
    update_write_up({(TABLE_BEGIN, TABLE_END): headline_rows(summaries),
                     (CELLS_BEGIN, CELLS_END): scenario_cells(summaries)})
    plot_bias(summaries)


def update_write_up(tables: dict[tuple[str, str], list[str]]) -> None:
    """Put the tables into the write-up between their marker lines, so their numbers cannot drift from the results."""
    text = WRITE_UP.read_text()
    for (begin, end), table in tables.items():
        if text.count(begin) != 1 or text.count(end) != 1:
            raise SystemExit(f"{WRITE_UP} needs exactly one pair of table marker lines:\n{begin}\n{end}")
        head, rest = text.split(begin)
        _, tail = rest.split(end)
        text = head + begin + "\n" + "\n".join(table) + "\n" + end + tail
    tmp = WRITE_UP.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, WRITE_UP)
    print(f"updated the tables in {WRITE_UP}")


HEADLINE = (
    ("tsls_all", "naive 2SLS, all variants, no FE"),
    ("tsls_all_env", "2SLS all + env FE"),
    ("tsls_pcs", "2SLS + 10 PCs"),
    ("tsls_pcs_genome", "2SLS + 10 genome-wide PCs"),
    ("within_family", "within-family MR"),
    ("invariant_linear", "invariant_linear"),
    ("invariant_linear_crossfit", "invariant_linear_crossfit"),
    ("invariant_genotype", "invariant_genotype"),
    ("invariant_genotype [gi-gwpcs]", "invariant_genotype + 10 genome-wide PCs"),
    ("invariant_autoencoder [neural]", "invariant autoencoder"),
)

#: Tagged runs that stand in for a headline method where the scenario's main run lacks it.
HEADLINE_FALLBACKS = {
    "tsls_pcs_genome": ("tsls_pcs [gwpcs]",),  # scenarios that keep no genome in their main run
    "invariant_genotype": ("invariant_genotype [gi]",),  # scenarios run before the method existed
}


def headline_table(summaries: dict) -> list[str]:
    return ["## Headline: bias (SD) of the pooled estimate", "", *headline_rows(summaries), "",
            "## Headline: RMSE of the pooled estimate", "", *headline_rows(summaries, metric="rmse"), ""]


def _method_table(summaries: dict, columns, render) -> list[str]:
    """One row per scenario, one cell per (label, summaries that stand for it, the first found) column.

    A cell is `render(summary, note)`, the note naming the replicate count whenever it is not 20 of 20
    with estimates; 'abstained k/k' where a method gave no estimate. Within-family MR needs families:
    on scenarios of unrelated people its cell says so rather than "not run".
    """
    lines = ["| scenario | " + " | ".join(label for label, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for scenario, rows in summaries.items():
        cells = []
        for _, sources in columns:
            s = next((rows[k] for k in sources if rows.get(k) is not None), None)
            if s is None:
                unrelated = sources[0] == "within_family" and scenario not in FAMILY_SCENARIOS
                cells.append("no families" if unrelated else "not run")
            elif s["bias"] is None:
                cells.append(f"abstained {s['failed']}/{s['failed']}")
            else:
                reps = s["n"] + s["failed"]
                cells.append(render(s, f"{s['n']}/{reps} reps" if s["failed"] or reps < 20 else ""))
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return lines


def headline_rows(summaries: dict, metric: str = "bias") -> list[str]:
    """Bias (SD), or RMSE, of the key methods per scenario."""
    columns = [(label, (method, *HEADLINE_FALLBACKS.get(method, ()), f"{method} [extra]"))
               for method, label in HEADLINE]
    if metric == "rmse":
        return _method_table(summaries, columns, lambda s, note: f"{s['rmse']:.3f}" + (f" ({note})" if note else ""))
    return _method_table(summaries, columns,
                         lambda s, note: f"{s['bias']:.3f} ({_fmt(s['sd'])}{', ' + note if note else ''})")


#: The write-up's per-scenario table: (column, the summaries that stand for it, first found).
SCENARIO_COLUMNS = (
    ("tsls_pcs", ("tsls_pcs",)),
    ("tsls_pcs_genome", ("tsls_pcs_genome", "tsls_pcs [gwpcs]")),
    ("tsht", ("tsht",)),
    ("within_family", ("within_family",)),
    ("invariant_linear", ("invariant_linear",)),
    ("invariant_genotype", ("invariant_genotype", "invariant_genotype [gi]")),
    ("invariant_genotype + gw PCs", ("invariant_genotype [gi-gwpcs]",)),
    ("ref_oracle_H", ("ref_oracle_H",)),
)


def scenario_cells(summaries: dict) -> list[str]:
    """Bias / RMSE / coverage of the designs per scenario (docs/genetic_simulations.md)."""
    return _method_table(summaries, SCENARIO_COLUMNS, lambda s, note: (
        f"{s['bias']:+.3f} / {s['rmse']:.3f} / {_fmt(s['coverage'], 2)}" + (f" ({note})" if note else "")))


def reproduction_guide(by_scenario) -> list[str]:
    lines = ["## Reproduction guide", "",
             "Each `run` call is one job; wall times below were measured on the hardware stated above",
             "while other jobs shared the two cores, so treat them as upper bounds.", "",
             "| command | replicates | wall time (min) |", "|---|---|---|"]
    for scenario, payloads in by_scenario.items():
        for p in payloads:
            total = sum(r["simulation_seconds"] + sum((m["seconds"] or 0) for m in r["methods"].values())
                        for r in p["replicates"])
            lines.append(f"| `{p['command']}` | {len(p['replicates'])} | {total / 60:.1f} |")
    lines += ["", "Then `python benchmarks/genetic_settings.py report` (a few seconds) rebuilds this file",
              "and the figures `docs/img/genetic_bias.png`."]
    return lines


def plot_bias(summaries: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    scenarios = list(summaries)
    methods = sorted({m for s in summaries.values() for m in s})
    fig, axes = plt.subplots(1, len(scenarios), figsize=(3.2 * len(scenarios), 0.32 * len(methods) + 1.5),
                             sharey=True)
    axes = np.atleast_1d(axes)
    y = np.arange(len(methods))
    for ax, scenario in zip(axes, scenarios):
        for i, method in enumerate(methods):
            s = summaries[scenario].get(method)
            if not s or s["bias"] is None:
                ax.text(0, i, "n/a", va="center", ha="center", fontsize=7, color="grey")
                continue
            colour = "tab:green" if method.startswith("invariant") else (
                "tab:purple" if method.startswith("ref_") else "tab:blue")
            ax.errorbar(s["bias"], i, xerr=s["sd"] or 0, fmt="o", color=colour, ms=4, capsize=2)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(scenario, fontsize=9)
        ax.set_xlabel("bias (mean +/- SD)")
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(y, methods)
    axes[0].invert_yaxis()
    fig.tight_layout()
    path = FIGURES / "genetic_bias.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    print(f"wrote {path}")


def model_figures() -> None:
    """Figures of the generators themselves: assortative-mating build-up and coalescent F_ST."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    model, params, _ = SCENARIOS["assortative"]
    sim = simulate_genetic(model, seed=0, **{**params, "generations": 10})
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    keys = [("exposure_outcome_score_correlation", "corr(exposure score, outcome score)"),
            ("exposure_cross_locus_correlation", "mean cross-locus corr, exposure alleles"),
            ("exposure_score_variance", "variance of exposure score")]
    for ax, (key, title) in zip(axes, keys):
        for env, history in sim.truth["generation_history"].items():
            r = sim.truth["partner_correlation_by_environment"][env]
            ax.plot([h["generation"] for h in history], [h[key] for h in history], marker="o", ms=3,
                    label=f"{env} (partner r = {r:.2f})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("generation")
    axes[0].legend(fontsize=7)
    fig.suptitle("Cross-trait assortative mating, 3 x 3000 individuals, 200 variants (seed 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(FIGURES / "assortative_generations.png", dpi=130)
    plt.close(fig)

    from invariant_mr.simulation.coalescent import EXPECTED_FST_OOA
    from invariant_mr.simulation.fst import pairwise_hudson_fst

    values = {pair: [] for pair in EXPECTED_FST_OOA}
    for seed in range(5):
        sim = simulate_genetic("coalescent", n_per_env=200, length_mb=20, chunk_mb=0.5, seed=seed)
        fst = pairwise_hudson_fst(sim.genotypes, sim.env, min_maf=0.05)
        for (a, b), v in fst.items():
            key = (a, b) if (a, b) in EXPECTED_FST_OOA else (b, a)
            values[key].append(v)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for i, (pair, expected) in enumerate(EXPECTED_FST_OOA.items()):
        ax.scatter([i] * len(values[pair]), values[pair], color="tab:blue", s=14, label="simulated" if i == 0 else None)
        ax.hlines(expected, i - 0.3, i + 0.3, color="black", label="expected" if i == 0 else None)
        ax.fill_between([i - 0.3, i + 0.3], expected - 0.03, expected + 0.03, color="grey", alpha=0.2)
    ax.set_xticks(range(3), ["-".join(p) for p in EXPECTED_FST_OOA])
    ax.set_ylabel("Hudson F_ST, SNPs with MAF > 0.05")
    ax.set_title("OutOfAfrica_3G09: 5 seeds, 3 x 200, 40 x 0.5 Mb", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "coalescent_fst.png", dpi=130)
    plt.close(fig)
    print(f"wrote {FIGURES / 'assortative_generations.png'} and {FIGURES / 'coalescent_fst.png'}")
    print({"-".join(k): [round(x, 3) for x in v] for k, v in values.items()})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario")
    run.add_argument("--scenario", choices=list(SCENARIOS), required=True)
    run.add_argument("--replicates", type=int, default=20)
    run.add_argument("--first-replicate", type=int, default=0,
                     help="continue an earlier run of the same configuration: keep its replicates "
                          "0..N-1 and append from N")
    run.add_argument("--methods", default=None, help="comma-separated registry methods (default: every default method)")
    run.add_argument("--tag", default=None, help="suffix of the result file, for extra method runs (e.g. neural)")
    run.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                     help="method option passed through MethodContext.options (repeatable), e.g. signal_rank=50")
    run.add_argument("--prep", choices=["raw", "within-env-standardized", "genome-pcs"], default="raw",
                     help="instruments handed to the methods: raw dosages or per-environment standardised")
    sub.add_parser("report", help="assemble the markdown table and the figures")
    sub.add_parser("figures", help="figures of the generators (assortative build-up, coalescent F_ST)")
    args = parser.parse_args(argv)
    if args.command == "run":
        methods = args.methods.split(",") if args.methods else None
        options = dict(item.split("=", 1) for item in args.option)
        run_scenario(args.scenario, args.replicates, methods, args.tag, args.first_replicate, args.prep, options)
    elif args.command == "figures":
        model_figures()
    else:
        build_report()


if __name__ == "__main__":
    main()
