"""Are the leak and structure checks calibrated for `invariant_genotype` on genotypes? Rejection rates
where the method is right.

`benchmarks/leak_shift_size.py` measures the leak shift's size on synthetic many-instrument data. This
script measures both purge checks of `invariant_genotype` (`leak_shift`, `structure_shift`) on
Balding-Nichols genotypes (3 environments x 2,000, F_ST 0.1, 10% admixture: the README's PLINK example),
with 200 variants (the verdict benchmark's setting) and 500 (the README's), 20 seeds each, and reports the
method's error next to how often each check rejects at 5%. A check whose rejections are not matched by
errors of the estimate fails right answers; the verdict then declines them.

    nice -n 10 python benchmarks/leak_shift_genotypes.py --seeds 20

writes benchmarks/results/leak_shift_genotypes.{json,md}.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from table_provenance import command_line, git_commit  # noqa: E402

from invariant_mr.methods.registry import MethodContext  # noqa: E402
from invariant_mr.pipeline import run_analysis  # noqa: E402
from invariant_mr.provenance import cpu_model  # noqa: E402
from invariant_mr.simulation.genetic_dataset import simulate_genetic  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def one(seed: int, n_variants: int) -> dict:
    sim = simulate_genetic("balding-nichols", seed=seed, n_envs=3, n_per_env=2000, n_variants=n_variants, fst=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(sim.to_mrdata(), ["invariant_genotype"], MethodContext(seed=0, per_env=False),
                              command="benchmarks/leak_shift_genotypes.py")
    row = result.select("invariant_genotype")[0]
    checks = {d.name.split("/")[-1]: d for d in result.diagnostics}
    out = {"seed": seed, "n_variants": n_variants, "error": row.estimate - sim.theta, "se": row.se}
    for name in ("leak_shift", "structure_shift", "independence_hsic", "overidentification_j"):
        d = checks.get(name)
        out[name] = None if d is None else {"statistic": d.statistic, "pvalue": d.pvalue}
    return out


def summarise(rows: list[dict]) -> dict:
    err = np.array([r["error"] for r in rows])
    s = {"runs": len(rows), "bias": float(err.mean()), "sd": float(err.std(ddof=1)),
         "coverage": float(np.mean([abs(r["error"]) <= 1.96 * r["se"] for r in rows]))}
    for name in ("leak_shift", "structure_shift", "independence_hsic", "overidentification_j"):
        ps = [r[name]["pvalue"] for r in rows if r[name] and r[name]["pvalue"] is not None]
        s[f"{name}_rejects"] = int(np.sum(np.array(ps) < 0.05))
        s[f"{name}_runs"] = len(ps)
        if name.endswith("shift"):
            shifts = [r[name]["statistic"] for r in rows if r[name] and r[name]["statistic"] is not None]
            s[f"{name}_mean"] = float(np.mean(shifts))
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--variants", default="200,500")
    args = ap.parse_args()
    rows, start = [], time.perf_counter()
    for p in (int(x) for x in args.variants.split(",")):
        for seed in range(args.seeds):
            rows.append(one(seed, p))
            r = rows[-1]
            print(f"{p} variants, seed {seed}: error {r['error']:+.4f}, leak p {r['leak_shift']['pvalue']:.3g}",
                  flush=True)
    meta = {"command": command_line("benchmarks/leak_shift_genotypes.py"), "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d"), "hardware": f"{os.cpu_count()}-core {cpu_model()}",
            "minutes": round((time.perf_counter() - start) / 60, 1)}
    groups = {p: summarise([r for r in rows if r["n_variants"] == p]) for p in sorted({r["n_variants"] for r in rows})}
    (RESULTS / "leak_shift_genotypes.json").write_text(json.dumps({"meta": meta, "summary": groups, "rows": rows},
                                                                  indent=1) + "\n")
    lines = ["# The purge checks of `invariant_genotype` on genotypes where the method is right", "",
             f"Regenerate: `{meta['command']}`. Commit {meta['commit']}, {meta['date']}; {meta['hardware']}; "
             f"{meta['minutes']} min. Balding-Nichols, 3 environments x 2,000, F_ST 0.1, 10% admixture, true theta 1; "
             "default method options; each check's rejections at 5% (not Holm-adjusted).", "",
             "| variants | runs | bias | SD | coverage | leak shift: mean, rejects | structure shift: mean, rejects "
             "| HSIC rejects | J rejects |", "|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for p, s in groups.items():
        lines.append(f"| {p} | {s['runs']} | {s['bias']:+.4f} | {s['sd']:.4f} | {s['coverage']:.2f} | "
                     f"{s['leak_shift_mean']:+.4f}, {s['leak_shift_rejects']}/{s['leak_shift_runs']} | "
                     f"{s['structure_shift_mean']:+.4f}, {s['structure_shift_rejects']}/{s['structure_shift_runs']} | "
                     f"{s['independence_hsic_rejects']}/{s['independence_hsic_runs']} | "
                     f"{s['overidentification_j_rejects']}/{s['overidentification_j_runs']} |")
    (RESULTS / "leak_shift_genotypes.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'leak_shift_genotypes.md'}")


if __name__ == "__main__":
    main()
