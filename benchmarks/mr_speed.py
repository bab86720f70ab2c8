"""Run time of `invariant-mr mr` on TwoSampleMR's 79-variant BMI -> CHD example, report and plots included.

Each configuration runs in a fresh interpreter (the console script, as users run it), interleaved
with the others so machine load hits all alike. Wall time and the CPU time of the child process
(user + system, from `resource.getrusage`) are both recorded: on a shared machine the wall time
measures the neighbours, the CPU time the program. Medians over repeats.

    python benchmarks/mr_speed.py            # writes benchmarks/results/mr_speed.md and .json
    python benchmarks/mr_speed.py --baseline /work/main   # also times that checkout's src/, run by run in turn

With `--baseline`, each configuration also runs from the other checkout's `src/` (same interpreter
and dependencies) right after this one, and the table gives both medians and the median of the
per-pair CPU ratios, so a comparison holds while the machine's load drifts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from invariant_mr.provenance import cpu_model

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(Path(sys.executable).with_name("invariant-mr"))
DATA = ROOT / "tests" / "data"
BASE = ["mr", "--exposure-gwas", str(DATA / "bmi_chd_twosamplemr_exposure.tsv"),
        "--outcome-gwas", str(DATA / "bmi_chd_twosamplemr_outcome.tsv"), "--quiet"]  # fmt: skip
CONFIGS = {
    "ivw only": ["--methods", "ivw"],
    "TwoSampleMR's default set (ivw, mr_egger, weighted_median, simple_mode, weighted_mode)":
        ["--methods", "ivw,mr_egger,weighted_median,simple_mode,weighted_mode"],
    "every summary-statistic method (the mr default)": [],
}


def run_once(extra: list[str], src: Path | None = None) -> tuple[float, float]:
    out = Path(tempfile.mkdtemp(prefix="mr_speed_")) / "o"
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([ENTRY, *BASE, *extra, "--out", str(out)], check=True, capture_output=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(out.parent, ignore_errors=True)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def git_commit(root: Path = ROOT) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. the main branch) to time in turn with this one")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mr_speed")
    args = parser.parse_args()
    wall: dict[str, list[float]] = {k: [] for k in CONFIGS}
    cpu: dict[str, list[float]] = {k: [] for k in CONFIGS}
    base_wall: dict[str, list[float]] = {k: [] for k in CONFIGS}
    base_cpu: dict[str, list[float]] = {k: [] for k in CONFIGS}
    ours = ROOT / "src"
    commit = git_commit()  # the code timed, even if HEAD moves while the benchmark runs
    loads = []
    for _ in range(args.repeats):
        for name, extra in CONFIGS.items():
            w, c = run_once(extra, ours)
            wall[name].append(w)
            cpu[name].append(c)
            if args.baseline is not None:
                w, c = run_once(extra, args.baseline / "src")
                base_wall[name].append(w)
                base_cpu[name].append(c)
        loads.append(os.getloadavg()[0])
    record = {
        "command": "python benchmarks/mr_speed.py" + ("" if args.repeats == 5 else f" --repeats {args.repeats}"),
        "commit": commit, "date": date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "python": sys.version.split()[0], "repeats": args.repeats, "load_average_1min": loads,
        "bytecode_cache": not os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "results": {k: {"wall_median_s": statistics.median(wall[k]), "cpu_median_s": statistics.median(cpu[k]),
                        "wall_s": wall[k], "cpu_s": cpu[k]} for k in CONFIGS},
    }  # fmt: skip
    if args.baseline is not None:
        record["command"] += " --baseline CHECKOUT"
        record["baseline"] = {"commit": git_commit(args.baseline), "results": {
            k: {"wall_median_s": statistics.median(base_wall[k]), "cpu_median_s": statistics.median(base_cpu[k]),
                "wall_s": base_wall[k], "cpu_s": base_cpu[k],
                "cpu_ratio_median": statistics.median(a / b for a, b in zip(cpu[k], base_cpu[k]))} for k in CONFIGS}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# `invariant-mr mr` run time (79 variants, report and plots included)",
        "",
        f"{record['date']}, {record['cpu']} ({record['cores']} cores), Python {record['python']}, commit "
        f"{record['commit']}; median of {args.repeats} runs each, interleaved. Regenerate: `{record['command']}`.",
        "Data: TwoSampleMR's BMI (ieu-a-2) -> CHD (ieu-a-7) example, two GWAS files harmonised by the run.",
        f"Target (issue 21): at most 3 s. Machine load (1-min average) during the runs: "
        f"{min(loads):.1f}-{max(loads):.1f} on {record['cores']} cores, so wall time includes waiting for "
        "the CPU; the CPU time (user + system of the run) is what the program costs."
        + ("" if record["bytecode_cache"] else " PYTHONDONTWRITEBYTECODE was set: each run compiled the package's "
           "own modules from source (both checkouts alike), which an installed package does not."),
        "",
        "| configuration | median wall s | median CPU s |",
        "|---|---|---|",
    ]
    if args.baseline is None:
        lines += [f"| {k} | {v['wall_median_s']:.2f} | {v['cpu_median_s']:.2f} |" for k, v in record["results"].items()]
    else:
        base = record["baseline"]
        lines[-4] += (f" Baseline: commit {base['commit']} of another checkout, run in turn with this one (same "
                      "interpreter and packages).")
        lines[-2:] = ["| configuration | median wall s | median CPU s | baseline median wall s | baseline median CPU s "
                      "| CPU ratio (median of pairs) |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['wall_median_s']:.2f} | {v['cpu_median_s']:.2f} | {b['wall_median_s']:.2f} | "
                  f"{b['cpu_median_s']:.2f} | {b['cpu_ratio_median']:.2f} |"
                  for (k, v), b in zip(record["results"].items(), base["results"].values())]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
