"""Estimators from per-environment sufficient statistics vs the in-memory versions, and the slow methods.

Data: Balding-Nichols simulation (`simulate_balding_nichols`), 3 environments
x 10,000 samples, 1,000 variants, covariates age and sex; seed 1. Everything
runs single-threaded (OMP_NUM_THREADS=1 is set before NumPy loads), in one
process, each timing the median of `--repeats` runs.

Rows:
* bare Z'Z: `Z.T @ Z` of the float64 genotypes in memory (the unit of cost);
* first pass: `EnvironmentCrossProducts.from_arrays` over int8 blocks (shared
  by every "from statistics" row below, so reported once, not in each row);
* each estimator in memory (as the method computes it today) vs from the
  statistics, robust (HC0) where the method's default is; "from statistics"
  includes the second streamed pass over the int8 blocks when one is needed;
* the slow methods: TSHT (before: row-based fit with the per-voter vote loop
  as it was; after: the row-based fit with the vectorised vote, and
  `fit_statistics`) and the weighted mode's 1,000-draw bootstrap (before: the
  dense kernel evaluation; after: the truncated pairs).

Every pair is checked for agreement (relative difference printed).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/sufficient_stats.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from table_provenance import command_line, git_commit  # noqa: E402

from invariant_mr.estimators import tsht as robust_iv
from invariant_mr.estimators.summary import summary_mr
from invariant_mr.inference.diagnostics import first_stage_strength, sargan_hansen_j
from invariant_mr.inference.estimates import exogenous_controls, iv_estimates
from invariant_mr.estimators.kclass_from_stats import first_stage_request, kclass_from_stats, kclass_requests
from invariant_mr.estimators.sufficient_stats import EnvironmentCrossProducts, accumulate_meats, partial_out
from invariant_mr.estimators.sumstats_from_stats import summary_statistics_from_stats
from invariant_mr.passes import LocalPasses, RowVectors
from invariant_mr.inference.tests_from_stats import (
    anderson_rubin_from_stats,
    first_stage_from_stats,
    j_requests,
    sargan_hansen_j_from_stats,
)
from invariant_mr.inference.from_stats import iv_estimates_from_stats
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.methods.registry import MethodContext
from invariant_mr.simulation.balding_nichols import simulate_balding_nichols
from invariant_mr.estimators.summary.summary_mr import weighted_mode
from invariant_mr.estimators.summary.sumstats import summary_statistics
from invariant_mr.inference.weak_iv import anderson_rubin_confidence_set

RESULTS = Path(__file__).parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{os.cpu_count()}-core {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"{os.cpu_count()}-core {platform.processor() or platform.machine()}"


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def rel(a, b) -> float:
    a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def _loop_vote(Gamma, g, V_G, V_g, C_Gg, tn):
    """TSHT's vote as it was before vectorisation (one p x p matrix per voter)."""
    p = g.shape[0]
    C_sym = (C_Gg + C_Gg.T) / 2
    relevant = np.abs(g) > tn * np.sqrt(np.diag(V_g))
    S = np.flatnonzero(relevant)
    ratios = Gamma / g
    votes = np.zeros((S.size, S.size), dtype=bool)
    for col, j in enumerate(S):
        b = ratios[j]
        T = V_G + b * b * V_g - 2 * b * C_sym
        r = g / g[j]
        se2 = np.diag(T) + r * r * T[j, j] - 2 * r * T[:, j]
        votes[:, col] = (np.abs(Gamma - b * g) <= np.sqrt(np.maximum(se2, 0)) * tn)[S]
    votes = votes & votes.T
    np.fill_diagonal(votes, True)
    counts = votes.sum(axis=1)
    winners = (counts > S.size / 2) | (counts == counts.max())
    valid = np.zeros(p, dtype=bool)
    valid[S[winners]] = True
    return relevant, valid, votes, ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-per-env", type=int, default=10_000)
    ap.add_argument("--n-variants", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "sufficient_stats"))
    args = ap.parse_args()
    R = args.repeats

    sim = simulate_balding_nichols(n_envs=3, n_per_env=args.n_per_env, n_variants=args.n_variants, seed=args.seed)
    data = sim.to_mrdata(include_covariates=True)
    G8 = np.ascontiguousarray(sim.genotypes)
    vec = RowVectors.from_mrdata(data)
    passes = LocalPasses.from_array(G8, vec)
    controls = exogenous_controls(data, True)
    levels = data.env_levels
    rows: list[dict] = []

    def add(name, t_mem, t_stats, agree, note=""):
        rows.append({"step": name, "in_memory_s": t_mem, "from_stats_s": t_stats, "max_rel_diff": agree, "note": note})
        mem = "" if t_mem is None else f"{t_mem:8.2f}s"
        st = "" if t_stats is None else f"{t_stats:8.2f}s"
        print(f"{name:48s} {mem:>10s} {st:>10s}  {'' if agree is None else f'{agree:.1e}'}  {note}", flush=True)

    def zz_times():
        out = []
        for _ in range(R):
            t = time.perf_counter()
            data.Z.T @ data.Z
            out.append(time.perf_counter() - t)
        return out

    # Measured at the start and at the end of the run (the machine is shared): the median of both.
    zz_start = zz_times()
    t_first, stats = timed(lambda: EnvironmentCrossProducts.from_arrays(G8, vec), R)
    add("first pass: per-env cross-products (int8 blocks)", None, t_first, None, "shared by every row below")

    designs = [partial_out(stats)] + [partial_out(stats, env=lv) for lv in levels]
    scope_rows = [np.ones(data.n, bool)] + [data.env == lv for lv in levels]

    for kappa in ("tsls", "liml"):
        def in_memory(kappa=kappa):
            out = []
            for mask, ctrl in zip(scope_rows, [controls] + [data.covariates[m] for m in scope_rows[1:]]):
                out.append(fit_kclass(data.outcome[mask], data.exposure[mask], data.Z[mask], ctrl, kappa=kappa))
            return out

        def from_stats(kappa=kappa):
            reqs = [kclass_requests(d, kappa) for d in designs]
            meats = accumulate_meats(passes, [r for rs in reqs for r in rs])
            return [
                kclass_from_stats(d, kappa=kappa, cov_type="robust", meats=meats[2 * i : 2 * i + 2])
                for i, d in enumerate(designs)
            ]

        t_m, ref = timed(in_memory, R)
        t_s, got = timed(from_stats, R)
        agree = rel([[f.estimate, f.se, f.first_stage_f] for f in got], [[f.estimate, f.se, f.first_stage_f] for f in ref])
        add(f"{kappa}: pooled + 3 envs, robust SE and F", t_m, t_s, agree, "one shared second pass")

    ctx = MethodContext(cov_type="robust")
    methods = {"tsls_all_env": "tsls", "liml_all_env": "liml"}
    t_m, ref = timed(lambda: [iv_estimates(data, data.Z, ctx, method=m, kappa=k) for m, k in methods.items()], R)
    t_s, got = timed(lambda: iv_estimates_from_stats(stats, methods, max_ar_instruments=200, passes=passes), R)
    agree = rel([[e.estimate, e.se] for rows_ in got.values() for e in rows_],
                [[e.estimate, e.se] for rows_ in ref for e in rows_])
    add("tsls_all_env + liml_all_env Estimate rows", t_m, t_s, agree, "iv_estimates vs iv_estimates_from_stats (one pass)")

    t_m, ref = timed(lambda: anderson_rubin_confidence_set(data.outcome, data.exposure, data.Z, controls, cov_type="unadjusted"), R)
    t_s, got = timed(lambda: anderson_rubin_from_stats(designs[0], cov_type="unadjusted"), R)
    ends_got = np.array([x for iv in got.intervals for x in iv])
    ends_ref = np.array([x for iv in ref.intervals for x in iv])
    finite = np.isfinite(ends_ref)
    same_shape = got.kind == ref.kind and np.array_equal(np.isfinite(ends_got), finite)
    add(f"classical AR set, pooled, {data.p:,} instruments", t_m, t_s,
        rel(ends_got[finite], ends_ref[finite]) if same_shape and finite.any() else (0.0 if same_shape else None),
        f"{ref.kind}; no second pass")

    def jf_memory():
        return (sargan_hansen_j(data.outcome, data.exposure, data.Z, controls, cov_type="robust"),
                first_stage_strength(data.exposure, data.Z, controls, cov_type="robust"))

    def jf_stats():
        meats = accumulate_meats(passes, j_requests(designs[0]) + [first_stage_request(designs[0])])
        return (sargan_hansen_j_from_stats(designs[0], meats=meats[:1]),
                first_stage_from_stats(designs[0], meats=meats[1:]))

    t_m, ref = timed(jf_memory, R)
    t_s, got = timed(jf_stats, R)
    add("Hansen J + robust first-stage F, pooled", t_m, t_s, rel([got[0][0], got[1][0]], [ref[0][0], ref[1][0]]), "one second pass")

    t_m, ref = timed(lambda: summary_statistics(data), R)
    t_s, got = timed(lambda: summary_statistics_from_stats(stats, variant_names=data.instrument_names), R)
    add("per-variant summary statistics (GWAS SEs)", t_m, t_s,
        rel(np.r_[got.beta_exposure, got.se_outcome], np.r_[ref.beta_exposure, ref.se_outcome]), "no second pass")

    # ---- the slow methods
    y, d, Z = data.outcome, data.exposure, data.Z
    vectorised = robust_iv._vote
    robust_iv._vote = _loop_vote
    try:
        t_before, ref = timed(lambda: robust_iv.TwoStageHardThresholding().fit(y, d, Z, controls), R)
    finally:
        robust_iv._vote = vectorised
    t_rows, rows_fit = timed(lambda: robust_iv.TwoStageHardThresholding().fit(y, d, Z, controls), R)
    t_s, got = timed(lambda: robust_iv.TwoStageHardThresholding().fit_statistics(stats, passes=passes), R)
    same = bool(np.array_equal(got.valid_, ref.valid_) and np.array_equal(rows_fit.valid_, ref.valid_))
    add("TSHT pooled robust: before (rows, vote loop)", t_before, None, None,
        f"{int(ref.relevant_.sum())} relevant, {int(ref.valid_.sum())} valid")
    add("TSHT pooled robust: rows, vectorised vote", t_rows, None, rel(rows_fit.estimate_, ref.estimate_), "")
    add("TSHT pooled robust: from statistics", t_rows, t_s, rel([got.estimate_, got.se_], [ref.estimate_, ref.se_]),
        f"same valid set: {same}; two second passes")

    # The vote alone where most instruments are relevant (its cost grows as |relevant| p^2 in the loop).
    rng = np.random.default_rng(4)
    p = data.p
    g = rng.normal(0.3, 0.2, p)
    Gamma = 1.5 * g + np.where(np.arange(p) < p // 3, rng.normal(0, 0.3, p), 0.0) + rng.normal(0, 0.01, p)
    A = rng.standard_normal((p, p)) / p
    V_G, V_g, C = 1e-4 * (A @ A.T + np.eye(p)), 1e-4 * (A.T @ A + np.eye(p)), 3e-5 * (A + A.T)
    t_loop, loop = timed(lambda: _loop_vote(Gamma, g, V_G, V_g, C, 2.0), R)
    t_vec, vec_ = timed(lambda: robust_iv._vote(Gamma, g, V_G, V_g, C, 2.0), R)
    rows.append({"step": f"TSHT vote alone, {int(loop[0].sum())} of {p:,} relevant (synthetic reduced forms)",
                 "before_s": t_loop, "after_s": t_vec, "max_rel_diff": 0.0 if np.array_equal(loop[2], vec_[2]) else None})
    print(f"vote: loop {t_loop:.2f}s vectorised {t_vec:.2f}s", flush=True)

    ss = summary_statistics(data)
    dense = summary_mr._KDE_SPARSE_MAX_SHARE
    summary_mr._KDE_SPARSE_MAX_SHARE = -1.0
    try:
        t_before, ref = timed(lambda: weighted_mode(ss, n_bootstrap=1000, rng=0), R)
    finally:
        summary_mr._KDE_SPARSE_MAX_SHARE = dense
    t_after, got = timed(lambda: weighted_mode(ss, n_bootstrap=1000, rng=0), R)
    rows.append({"step": "weighted mode, 1,000 bootstrap draws", "before_s": t_before, "after_s": t_after,
                 "max_rel_diff": rel([got.estimate, got.se], [ref.estimate, ref.se])})
    print(f"weighted mode: before {t_before:.2f}s after {t_after:.2f}s diff {rows[-1]['max_rel_diff']:.1e}", flush=True)

    zz_all = zz_start + zz_times()
    t_zz = statistics.median(zz_all)
    rows.insert(0, {"step": "bare Z'Z (float64, in memory)", "in_memory_s": t_zz, "from_stats_s": None,
                    "max_rel_diff": None, "note": f"unit of cost; runs {', '.join(f'{t:.2f}' for t in zz_all)} s"})
    meta = {
        "hardware": cpu_name(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "n": data.n,
        "p": data.p,
        "envs": len(levels),
        "repeats": R,
        "seed": args.seed,
        "numpy": np.__version__,
        "command": command_line(__file__),
        "commit": git_commit(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Estimators from sufficient statistics vs in memory; the slow methods",
        "",
        f"Command: `{meta['command']}`; commit {meta['commit']}.",
        "",
        f"{meta['hardware']}, {meta['threads']} thread, n = {meta['n']:,} ({meta['envs']} environments, "
        f"Balding-Nichols, seed {meta['seed']}), p = {meta['p']:,}; medians of {R} runs in one process "
        f"(`benchmarks/sufficient_stats.py`). \"From statistics\" excludes the shared first pass (its own row) "
        "and includes any second streamed pass over the int8 blocks.",
        "",
        "| step | in memory (s) | from statistics (s) | in memory / Z'Z | statistics / Z'Z | max rel. diff | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "before_s" in r:  # the slow-method table below
            continue
        mem = "" if r["in_memory_s"] is None else f"{r['in_memory_s']:.2f}"
        st = "" if r["from_stats_s"] is None else f"{r['from_stats_s']:.2f}"
        r_mem = "" if r["in_memory_s"] is None else f"{r['in_memory_s'] / t_zz:.1f}"
        r_st = "" if r["from_stats_s"] is None else f"{r['from_stats_s'] / t_zz:.1f}"
        diff = "" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.1e}"
        lines.append(f"| {r['step']} | {mem} | {st} | {r_mem} | {r_st} | {diff} | {r['note']} |")
    wm = rows[-1]
    vote = rows[-2]
    lines += [
        "",
        "| slow method | before (s) | after (s) | max rel. diff |",
        "|---|---:|---:|---:|",
        f"| weighted mode, {data.p:,} variants, 1,000 bootstrap draws | {wm['before_s']:.2f} | {wm['after_s']:.2f} | {wm['max_rel_diff']:.1e} |",
        f"| {vote['step']} | {vote['before_s']:.2f} | {vote['after_s']:.2f} | "
        f"{'identical votes' if vote['max_rel_diff'] == 0.0 else 'votes differ'} |",
    ]
    tsht = [r for r in rows if r["step"].startswith("TSHT")]
    lines.append(
        f"| TSHT pooled, robust | {tsht[0]['in_memory_s']:.2f} | {tsht[1]['in_memory_s']:.2f} (rows) / "
        f"{tsht[2]['from_stats_s']:.2f} (statistics) | {tsht[2]['max_rel_diff']:.1e} |"
    )
    lines.append("")
    Path(args.out + ".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
