"""Why PC adjustment works or fails on a genetic scenario: how much of the confounder the instruments
still predict after each adjustment (issue 20).

2SLS on the instruments Z with controls C is biased through the part of the confounder H that Z
predicts once C is partialled out. For each scenario and seed this measures that part directly,
on the simulation's true H:

    leak(C) = R²(H_C ~ Z_C) - m / n,

where H_C and Z_C are H and Z residualised on C (environment dummies plus the PCs), and m / n is the
R² that m unrelated columns reach by chance (so leak ≈ 0 means the adjustment removed what Z knows
of H). C is environment fixed effects alone, plus 10 PCs of the instruments, or plus 10 PCs of the
genome-wide panel (every distinct common SNP for the coalescent scenarios; instruments plus 2,000
neutral variants for the Balding-Nichols ones), computed as `run --pcs-from` does (randomised SVD).

    python benchmarks/confounder_visibility.py --seeds 5

writes benchmarks/results/confounder_visibility.{md,json}.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from genetic_settings import SCENARIOS, genome_wide_pcs  # noqa: E402
from table_provenance import git_commit  # noqa: E402

from invariant_mr.estimators.genotype_pcs import genotype_pcs  # noqa: E402
from invariant_mr.estimators.iv import orthonormal_basis, residualize  # noqa: E402
from invariant_mr.io.output import atomic_write_text  # noqa: E402
from invariant_mr.provenance import cpu_model  # noqa: E402
from invariant_mr.simulation.genetic_dataset import simulate_genetic  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "confounder_visibility"
DEFAULT_SCENARIOS = ("bn-fst0.1", "coalescent-ooa", "coalescent-ooa-gwanc", "coalescent-admix",
                     "coalescent-admix-gwanc")
ADJUSTMENTS = ("environment only", "+ 10 instrument PCs", "+ 10 genome-wide PCs")


def leak(H: np.ndarray, Z: np.ndarray, C: np.ndarray) -> float:
    """R² of H on Z after partialling out C, less the m / n that m unrelated columns reach by chance."""
    adjustment = orthonormal_basis(C)
    h = residualize(H[:, None], adjustment)[:, 0]
    fitted = h - residualize(h[:, None], orthonormal_basis(residualize(Z, adjustment)))[:, 0]
    return float(fitted @ fitted / (h @ h) - Z.shape[1] / Z.shape[0])


def measure(name: str, seed: int) -> dict:
    model, params, _ = SCENARIOS[name]
    sim = simulate_genetic(model, seed=seed, **{**params, "keep_genome": True})
    Z = sim.genotypes.astype(float)
    keep = Z.std(axis=0) > 0
    Z = Z[:, keep]
    env = np.unique(sim.env, return_inverse=True)[1]
    E = np.eye(env.max() + 1)[env]
    gw = genome_wide_pcs(sim, k=10, seed=seed).scores
    controls = {
        ADJUSTMENTS[0]: E,
        ADJUSTMENTS[1]: np.column_stack([E, genotype_pcs(Z, 10)]),
        ADJUSTMENTS[2]: np.column_stack([E, gw]),
    }
    H = np.asarray(sim.latent["H"], dtype=float)
    return {"scenario": name, "seed": seed, "n": int(Z.shape[0]), "m": int(Z.shape[1]),
            "leak": {k: leak(H, Z, C) for k, C in controls.items()}}


def write_report(rows: list[dict], command: str) -> str:
    lines = [
        "# How much of the confounder the instruments still predict after PC adjustment",
        "",
        f"Regenerate: `{command}` (commit {git_commit()}; {dt.date.today()}; {cpu_model()}).",
        "",
        "leak = R²(H ~ Z) after partialling out the adjustment, less m/n (the chance level); H is the "
        "simulation's true confounder, Z the instruments. 2SLS is biased in proportion to what is left. "
        "Mean (min, max) over seeds.",
        "",
        "| scenario | seeds | " + " | ".join(ADJUSTMENTS) + " |",
        "|---|---|" + "---|" * len(ADJUSTMENTS),
    ]
    for name in dict.fromkeys(r["scenario"] for r in rows):
        mine = [r for r in rows if r["scenario"] == name]
        cells = []
        for adj in ADJUSTMENTS:
            v = np.array([r["leak"][adj] for r in mine])
            cells.append(f"{v.mean():.4f} ({v.min():.4f}, {v.max():.4f})")
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS))
    args = parser.parse_args(argv)
    rows = []
    for name in args.scenarios.split(","):
        for seed in range(args.seeds):
            rows.append(measure(name, seed))
            print(name, seed, {k: round(v, 4) for k, v in rows[-1]["leak"].items()}, flush=True)
    command = "python benchmarks/confounder_visibility.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(OUT.with_suffix(".json"), json.dumps({"command": command.strip(), "rows": rows}, indent=1))
    atomic_write_text(OUT.with_suffix(".md"), write_report(rows, command.strip()))


if __name__ == "__main__":
    main()
