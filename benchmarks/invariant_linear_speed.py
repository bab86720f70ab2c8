"""Speed and memory of the closed-form invariant method at biobank scale.

n = 100,000 per environment, K = 2, 1,000 columns: 4 latent factors (paper's
linear setting) mixed into 1,000 unit-norm columns plus unit-variance noise.
Compares `LinearInvariantInstruments.fit` with a bare `Z.T @ Z` on the same
array in the same process (medians over repeats, interleaved so machine load
hits both alike). Peak memory is measured with tracemalloc (numpy reports its
allocations to it) and compared with the size of Z.

    python benchmarks/invariant_linear_speed.py            # writes benchmarks/results/invariant_linear_speed.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from datetime import date
from pathlib import Path

import numpy as np

from invariant_mr.instruments.linear import LinearInvariantInstruments
from invariant_mr.provenance import cpu_model
from table_provenance import command_line, git_commit  # noqa: E402
from invariant_mr.simulation.paper import simulate_paper


def make_data(n_per_env: int, p: int, seed: int):
    sim = simulate_paper("linear", n_envs=2, n_per_env=n_per_env, seed=seed)
    latents = np.column_stack([sim.V, sim.W])
    rng = np.random.default_rng(seed + 1)
    A = rng.standard_normal((latents.shape[1], p))
    A /= np.linalg.norm(A, axis=0)  # equal signal variance per column
    Z = latents @ A + rng.standard_normal((latents.shape[0], p))
    return Z, sim.data.env, sim



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-per-env", type=int, default=100_000)
    ap.add_argument("--p", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "invariant_linear_speed.md")
    args = ap.parse_args(argv)

    Z, env, sim = make_data(args.n_per_env, args.p, seed=0)
    t_fit, t_gram = [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        _ = Z.T @ Z
        t_gram.append(time.perf_counter() - start)
        start = time.perf_counter()
        model = LinearInvariantInstruments(random_state=r).fit(Z, env)
        t_fit.append(time.perf_counter() - start)
    tracemalloc.start()
    LinearInvariantInstruments(random_state=0).fit(Z, env)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    hw = model.transform(Z)
    W = sim.W
    coef, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(W)), W]), hw, rcond=None)
    resid = hw - np.column_stack([np.ones(len(W)), W]) @ coef
    r2_w = float(1 - resid.var(axis=0).mean() / hw.var(axis=0).mean())

    row = {
        "n": Z.shape[0], "p": Z.shape[1], "K": 2,
        "fit_median_s": statistics.median(t_fit), "gram_median_s": statistics.median(t_gram),
        "ratio": statistics.median(t_fit) / statistics.median(t_gram),
        "peak_extra_bytes": peak, "Z_bytes": Z.nbytes,
        "peak_over_Z": (peak + Z.nbytes) / Z.nbytes,
        "signal_rank": model.signal_rank_, "n_components": model.n_components_, "r2_on_W": r2_w,
        "fit_times_s": t_fit, "gram_times_s": t_gram,
    }
    text = f"""# Closed-form invariant instruments: speed and memory

Command: `{command_line(__file__)}`  
Commit: {git_commit()}  
Hardware: {cpu_model()}, {len(__import__('os').sched_getaffinity(0))} cores; numpy {np.__version__}. Date: {date.today()}.
Data: paper linear setting (K=2), 4 latent factors mixed into {args.p} unit-norm columns + N(0,1) noise.

| n | p | fit median (s) | bare Z.T@Z median (s) | ratio | peak memory incl. Z / size of Z | signal rank | components | R² of hW on W |
|---|---|---|---|---|---|---|---|---|
| {row['n']:,} | {row['p']} | {row['fit_median_s']:.2f} | {row['gram_median_s']:.2f} | {row['ratio']:.2f} | {row['peak_over_Z']:.2f} | {row['signal_rank']} | {row['n_components']} | {r2_w:.3f} |

Individual times: fit {', '.join(f'{t:.2f}' for t in t_fit)} s; Z.T@Z {', '.join(f'{t:.2f}' for t in t_gram)} s (interleaved).
Peak memory is Z itself plus tracemalloc's peak of new allocations during one fit.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(row, indent=2))
    print(text)


if __name__ == "__main__":
    main()
