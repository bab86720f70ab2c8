"""CPU time of `GenotypeInvariantInstruments.fit` (the learner of `invariant_genotype`), optionally against another checkout.

Balding-Nichols-like genotypes (3 environments, allele frequencies drawn around a shared Beta(2, 2)
with SD 0.1 between environments), the default 49 relabellings. Each fit runs in a fresh interpreter with
one BLAS thread; CPU seconds (user + system of the child) are reported, medians over repeats, this
checkout and the baseline interleaved so machine load hits both alike.

    python benchmarks/genotype_invariant_speed.py --baseline /path/to/other/checkout

writes benchmarks/results/genotype_invariant_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

from invariant_mr.provenance import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES = ((6000, 500), (30000, 1000))
CHILD = """
import sys, numpy as np
from invariant_mr.instruments.genotype_invariant import GenotypeInvariantInstruments
n, p, K = int(sys.argv[1]), int(sys.argv[2]), 3
rng = np.random.default_rng(0)
freqs = np.clip(rng.beta(2, 2, size=p)[None, :] + rng.normal(0, 0.1, size=(K, p)), 0.05, 0.95)
env = np.repeat(np.arange(K), n // K)
Z = rng.binomial(2, freqs[env]).astype(float)
fit = GenotypeInvariantInstruments(random_state=0).fit(Z, env)
print(fit.n_mean_removed_, fit.n_cov_removed_)
"""


def _git(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


def time_fit(n: int, p: int, src: Path) -> tuple[float, str]:
    """(CPU seconds of a fresh interpreter that simulates and fits, the removed counts it printed)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(p)], check=True, capture_output=True, text=True,
                         env=env).stdout.strip()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, timed in turn with this one")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    checkouts = {"this": ROOT} | ({"baseline": args.baseline} if args.baseline else {})
    rows = []
    for n, p in SIZES:
        times = {k: [] for k in checkouts}
        removed = {}
        for _ in range(args.repeats):
            for name, root in checkouts.items():
                seconds, removed[name] = time_fit(n, p, root / "src")
                times[name].append(seconds)
        rows.append({"n": n, "p": p, **{f"{k}_cpu_s": statistics.median(v) for k, v in times.items()},
                     "removed": removed})
        print(rows[-1], flush=True)
    meta = {"date": date.today().isoformat(), "cpu": cpu_model(), "commit": _git(ROOT),
            "baseline": _git(args.baseline) if args.baseline else None, "repeats": args.repeats,
            "command": "python benchmarks/genotype_invariant_speed.py" + (" --baseline CHECKOUT" if args.baseline else "")}
    (RESULTS / "genotype_invariant_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    base = args.baseline is not None
    lines = [
        "# `invariant_genotype`'s learner: CPU seconds of one fit",
        "",
        f"{meta['date']}, {meta['cpu']}, one BLAS thread; commit {meta['commit']}"
        + (f", baseline commit {meta['baseline']} (run in turn)" if base else "")
        + f"; median of {args.repeats} fresh interpreters (simulation included, under 1 s). Regenerate: "
        f"`{meta['command']}`.",
        "",
        "| n | variants | CPU s | " + ("baseline CPU s | ratio | " if base else "") + "directions removed (mean, covariance) |",
        "|---:|---:|---:|" + ("---:|---:|" if base else "") + "---|",
    ]
    for r in rows:
        extra = f" {r['baseline_cpu_s']:.1f} | {r['baseline_cpu_s'] / r['this_cpu_s']:.1f}x |" if base else ""
        lines.append(f"| {r['n']:,} | {r['p']:,} | {r['this_cpu_s']:.1f} |{extra} {r['removed']} |")
    (RESULTS / "genotype_invariant_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
