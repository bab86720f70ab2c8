"""Benchmark: a streamed run locally and on a Dask LocalCluster of 1 and 2 workers, where the time goes,
and (with --base) the same Dask routes at an earlier commit (issue 23, item 4).

Data: `scale.make_fileset` (Balding-Nichols, F_ST 0.1, 3 environments, 1% missing calls, covariates age
and sex), one PLINK 1 fileset per size. For each size, on the same file: a bare read + Z'Z (`scale.BARE`,
the unit of cost), then `--repeats` rounds of `run --bfile ... --methods
tsls_all_env,liml_all_env,invariant_linear,ivw --streaming on`, locally and with `--workers N` for each
N of `--workers` (and, with `--base`, with `--workers N` on the base commit's own `src/`), each run a
fresh process, the routes of a round one after another in an order that rotates from round to round.
The machine is shared, so a route is compared with the local run of the same round (the ratio column:
the median over rounds of wall / local wall of that round), and CPU seconds (the process and the
children it reaped, i.e. the Dask workers too) are the steadier figure. From each run's provenance:
every streamed pass (kind, wall seconds) and the chunk tasks per worker. BLAS single-threaded
everywhere.

    nice -n 10 python benchmarks/dask_workers.py --sizes 60000x1000,150000x1000 --workers 1,2 --repeats 3 --base ac76e89
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from battery import export_src  # noqa: E402  (the src/ tree of an earlier commit)
from scale import METHODS, fileset_and_bare, measured, peak_mib, run_args, run_record, write_json_rows  # noqa: E402
from table_provenance import ROOT, command_line, git_commit  # noqa: E402

from invariant_mr.provenance import cpu_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"

#: What the profile of this issue found, and what the code now does about it (the table's closing note).
NOTES = """\
## What changed (since the base) and where the time still goes

Profiled on 60,000 x 1,000 (chunk timings, rusage and imports of each worker process):

- **Computation per row is the same.** A worker's chunk reads with the local route's reader
  (`StreamedGenotypes.iter_blocks`: bed-reader int8 reads, the same float64 block size) and its kernel
  CPU matches the local pass's; neither route pipelines reading and computing within a process.
- **Fixed costs were the loss**, per run: the cluster start (a Python process per worker, `distributed`,
  then at the first task pandas, pyarrow and scipy, which unpickling `io.streamed_genotypes` and the
  kernels imports: about 0.85 CPU-s per worker; no torch), the dashboard's sampling profiler, system
  monitor and event-loop tick (an idle cluster of 2 workers: 0.12 CPU-s per second), the row
  source (its sample table and n-length row maps, 3 MB at n = 60,000) pickled into every chunk's
  task, and the kernel (61.5 MB pickled for the second pass at p = 1,000, 32 MB of it the designs'
  m x m Gram matrices) and the row vectors computed into the graph on one worker, which the scheduler
  may then favour for the chunks (in one profiled run one worker took 3 of a first pass's 4 chunks).
- **Now** (`passes/dask_passes.py`, `run --workers`): the workers preload the modules the kernels
  need as they start and run no profiler; the kernel, the row source and the row
  vectors are broadcast to every worker before the chunks (no worker favoured), 4 row chunks per
  worker (a slowed worker leaves its chunks to the other), merged pairwise in a fixed order (the same
  bits on every run, within 1e-12 of the local pass). Tried and dropped: starting the cluster in a
  background thread while the data load (on this loaded machine the main process spent about 1 CPU-s
  more, its threads sharing one interpreter lock, and 1 worker ran slower in both pairs measured);
  the local run's malloc thresholds in the workers (half the page faults, but no measurable CPU saved
  and 40-120 MiB more peak RSS with 2 workers).
- **Still**: a worker process and `distributed` cost about 1.5-2 CPU-s per worker and 1-2 CPU-s in the
  main process per run, whatever n; the passes are the only part that divides among workers (the rest
  of the run, loading, QC and estimation, is the main process's). The second pass's kernel still ships
  the designs' Gram matrices, which the workers do not use (an `estimators` change), and a worker
  imports pandas and pyarrow only to unpickle the genotype source's sample table (an `io` change).
- **Reading the table**: where the 2-worker rows' CPU / wall stays near 1, the workers never had two
  cores at once (on this 2-core machine, other sessions' jobs held one), so those rows measure the
  cluster's overhead, not what 2 workers gain on free cores.
"""


def src_command(src: Path, cmd: list[str]) -> list[str]:
    """`cmd` (a `python -m invariant_mr.cli ...` command) run on the `invariant_mr` of `src`; the Dask workers
    (spawned) inherit the path."""
    code = f"import sys; sys.path.insert(0, {str(src)!r}); from invariant_mr.cli import main; sys.exit(main())"
    assert cmd[1:3] == ["-m", "invariant_mr.cli"]
    return [cmd[0], "-c", code, *cmd[3:]]


def measure_size(n: int, p: int, workers: list[int], seed: int, scratch: Path, repeats: int,
                 base: tuple[Path, str] | None) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"dask-{n}x{p}-", dir=scratch))
    routes = [("run --streaming on (local)", 0, None)]
    routes += [(f"run --streaming on --workers {w}", w, None) for w in workers]
    if base is not None:
        routes += [(f"run --streaming on --workers {w} (base {base[1][:7]})", w, base[0]) for w in workers]
    runs: dict[str, list[dict]] = {what: [] for what, _, _ in routes}
    try:
        prefix, pheno, n_file, bare = fileset_and_bare(work, n, p, seed)
        for r in range(repeats):
            order = routes[r % len(routes):] + routes[: r % len(routes)]
            for what, w, src in order:
                out = work / f"out-{r}-{len(runs[what])}-{w}-{'base' if src else 'head'}"
                cmd = run_args(prefix, pheno, out, *(("--workers", str(w)) if w else ()))
                result = measured(cmd if src is None else src_command(src, cmd))
                record = run_record(out)
                print(f"{n}x{p} round {r + 1} {what}: {result}", flush=True)
                runs[what].append({"round": r, **result,
                                   **{k: record[k] for k in ("passes", "dask", "method_seconds", "estimates")}})
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [{"n": n_file, "p": p, "what": "bare read + Z'Z", **bare}]
    local = runs[routes[0][0]]
    for what, w, src in routes:
        rows.append(summarise(n_file, p, what, w, src is not None, runs[what], local))
    return rows


def summarise(n: int, p: int, what: str, workers: int, is_base: bool, runs: list[dict], local: list[dict]) -> dict:
    """Medians over the rounds, the per-round ratio to the local run, and every run's numbers."""
    med = statistics.median
    by_round = {x["round"]: x for x in local}
    passes = {}
    for x in runs:
        for i, ps in enumerate(x["passes"]):
            passes.setdefault((i, ps["kind"]), []).append(ps["seconds"])
    diffs = [abs(v - by_round[x["round"]]["estimates"][k]) for x in runs for k, v in x["estimates"].items()
             if v is not None and by_round[x["round"]]["estimates"].get(k) is not None]
    return {
        "n": n, "p": p, "what": what, "workers": workers, "base": is_base, "rounds": len(runs),
        "wall_s": med(x["wall_s"] for x in runs), "cpu_s": med(x["cpu_s"] for x in runs),
        "peak_rss_tree_mib": max(x["peak_rss_tree_mib"] for x in runs),
        "peak_hwm_largest_mib": max(x["peak_hwm_largest_mib"] for x in runs),
        "wall_vs_local": med(x["wall_s"] / by_round[x["round"]]["wall_s"] for x in runs),
        "cpu_vs_local": med(x["cpu_s"] / by_round[x["round"]]["cpu_s"] for x in runs),
        "passes_s": med(sum(ps["seconds"] for ps in x["passes"]) for x in runs),
        "pass_medians": [{"kind": kind, "seconds": med(s)} for (_, kind), s in sorted(passes.items())],
        "where": sorted({ps["where"] for x in runs for ps in x["passes"]}),
        "chunk_tasks_per_worker": [x["dask"] and x["dask"].get("chunk_tasks_per_worker") for x in runs],
        "max_abs_diff_vs_local": max(diffs) if diffs else None,
        "runs": runs,
    }


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    bare = write_json_rows(rows, meta, out)
    lines = [
        "# Streamed `run`: local vs a Dask LocalCluster of 1 and 2 workers, and where the time goes",
        "",
        f"{meta['hardware']}; BLAS single-threaded in every process; {meta['date']}; commit `{meta['commit']}`"
        + (f", base `{meta['base']}`" if meta.get("base") else "") + f". Methods `{METHODS}` with "
        "`--streaming on`, each run a fresh process; medians over the rounds; \"vs local\": the median over "
        "rounds of the route's wall (CPU) over the local run's in the same round. CPU (s) includes the Dask "
        "workers. The machine is shared (2 cores, other sessions running), so wall time includes waiting for "
        "a core; CPU / wall is the parallelism a run obtained (near 1: its processes shared one core).",
        "",
        f"    {meta['command']}",
        "",
        "| n | p | what | rounds | wall (s) | CPU (s) | CPU / wall | peak RSS (MiB) | wall vs local | CPU vs local | "
        "wall / bare | passes (s, wall) | rest of the run (s, wall) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = bare.get((r["n"], r["p"]))
        if r is b:
            lines.append(f"| {r['n']:,} | {r['p']:,} | {r['what']} |  | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                         f"{r['cpu_s'] / r['wall_s']:.2f} | {peak_mib(r):,.0f} |  |  |  |  |  |")
            continue
        lines.append(f"| {r['n']:,} | {r['p']:,} | {r['what']} | {r['rounds']} | {r['wall_s']:.1f} | "
                     f"{r['cpu_s']:.1f} | {r['cpu_s'] / r['wall_s']:.2f} | {peak_mib(r):,.0f} | {r['wall_vs_local']:.2f} | {r['cpu_vs_local']:.2f} | "
                     f"{r['wall_s'] / b['wall_s']:.2f} | {r['passes_s']:.1f} | {r['wall_s'] - r['passes_s']:.1f} |")
    lines += ["", "Each streamed pass (kind: median wall seconds), in order, and where:", ""]
    for r in rows:
        if r.get("pass_medians"):
            ps = "; ".join(f"{x['kind']} {x['seconds']:.1f}" for x in r["pass_medians"])
            lines.append(f"- {r['n']:,} x {r['p']:,}, {r['what']} ({', '.join(r['where'])}): {ps}")
    lines += ["", "Chunk tasks per worker (each round), and the largest |difference| of an estimate from the "
              "local run of the same round:", ""]
    for r in rows:
        if r.get("workers"):
            lines.append(f"- {r['n']:,} x {r['p']:,}, {r['what']}: "
                         f"{[sorted(t.values()) if t else None for t in r['chunk_tasks_per_worker']]}; "
                         f"max |diff| {r['max_abs_diff_vs_local']:.1e}")
    lines += ["", NOTES]
    Path(str(out) + ".md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="60000x1000")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the routes, the median reported")
    ap.add_argument("--base", default=None, help="also run the Dask routes on this commit's src/")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(RESULTS / "dask_workers"))
    ap.add_argument("--render", action="store_true", help="rewrite OUT.md from OUT.json (no runs)")
    args = ap.parse_args()
    if args.render:
        import json

        saved = json.loads(Path(args.out + ".json").read_text())
        write_outputs(saved["rows"], saved["meta"], Path(args.out))
        return
    workers = [int(w) for w in args.workers.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="dask-workers-", dir=args.scratch))
    base = export_src(args.base, scratch) if args.base else None
    meta = {"hardware": f"{os.cpu_count()}-core {cpu_model()}", "date": time.strftime("%Y-%m-%d"),
            "commit": git_commit(), "base": base and base[1][:12], "command": "nice -n 10 " + command_line(__file__),
            "seed": args.seed, "repeats": args.repeats}
    rows: list[dict] = []
    try:
        for size in args.sizes.split(","):
            n, p = (int(x) for x in size.split("x"))
            rows += measure_size(n, p, workers, args.seed, scratch, args.repeats, base)
            write_outputs(rows, meta, Path(args.out))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
