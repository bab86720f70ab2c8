"""Benchmark: where the time of a streamed run goes, locally and on a Dask LocalCluster of 1 and 2 workers
(issue 23, item 4: measurement only).

Data: `scale.make_fileset` (Balding-Nichols, F_ST 0.1, 3 environments, 1% missing calls, covariates age
and sex), one PLINK 1 fileset per size. For each size, each a fresh process, in the same run on the same
file: a bare read + Z'Z (`scale.BARE`, the unit of cost), then `run --bfile ... --methods
tsls_all_env,liml_all_env,invariant_linear,ivw --streaming on` (`scale.run_args`) locally and with
`--workers N` for each N of `--workers`. CPU seconds include the Dask workers (children reaped by
wait4). From each run's provenance: every streamed pass (kind, seconds, where) and the chunk tasks
per worker, so the table says which part of the run the workers take and what stays in the main
process. BLAS single-threaded everywhere.

    nice -n 10 python benchmarks/dask_workers.py --sizes 60000x1000 --workers 1,2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale import fileset_and_bare, measured, peak_mib, run_args, run_record, write_json_rows  # noqa: E402
from table_provenance import command_line, git_commit  # noqa: E402

from invariant_mr.provenance import cpu_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def measure_size(n: int, p: int, workers: list[int], seed: int, scratch: Path) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"dask-{n}x{p}-", dir=scratch))
    rows = []
    try:
        prefix, pheno, n_file, bare = fileset_and_bare(work, n, p, seed)
        rows.append({"n": n_file, "p": p, "what": "bare read + Z'Z", **bare})
        for w in [0, *workers]:
            out = work / f"out{w}"
            extra = () if w == 0 else ("--workers", str(w))
            result = measured(run_args(prefix, pheno, out, *extra))
            what = "run --streaming on (local)" if w == 0 else f"run --streaming on --workers {w}"
            print(f"{n}x{p} {what}: {result}", flush=True)
            record = run_record(out)
            rows.append({"n": n_file, "p": p, "what": what, "workers": w, **result,
                         **{k: record[k] for k in ("passes", "dask", "method_seconds", "estimates")}})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    bare = write_json_rows(rows, meta, out)
    lines = [
        "# Streamed `run`: local vs a Dask LocalCluster of 1 and 2 workers, and where the time goes",
        "",
        f"{meta['hardware']}; BLAS single-threaded in every process; {meta['date']}; commit `{meta['commit']}`. "
        "Methods `tsls_all_env,liml_all_env,invariant_linear,ivw` with `--streaming on`; CPU (s) includes the "
        "Dask workers. The machine is shared (2 cores, other sessions running), so wall time includes waiting "
        "for a core.",
        "",
        f"    {meta['command']}",
        "",
        "| n | p | what | wall (s) | CPU (s) | peak RSS (MiB) | wall / bare | CPU / bare | passes (s, wall) | "
        "rest of the run (s, wall) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = bare.get((r["n"], r["p"]))
        ratios = ("", "") if r is b else (f"{r['wall_s'] / b['wall_s']:.2f}", f"{r['cpu_s'] / b['cpu_s']:.2f}")
        in_passes = sum(x["seconds"] for x in r.get("passes", []))
        pc = "" if r is b else f"{in_passes:.1f}"
        rest = "" if r is b else f"{r['wall_s'] - in_passes:.1f}"
        lines.append(f"| {r['n']:,} | {r['p']:,} | {r['what']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{peak_mib(r):,.0f} | {ratios[0]} | {ratios[1]} | {pc} | {rest} |")
    lines += ["", "Each streamed pass (kind: wall seconds, where), in order:", ""]
    for r in rows:
        if r.get("passes"):
            ps = "; ".join(f"{x['kind']} {x['seconds']:.1f}" for x in r["passes"])
            where = sorted({x["where"] for x in r["passes"]})
            lines.append(f"- {r['n']:,} x {r['p']:,}, {r['what']} ({', '.join(where)}): {ps}")
    lines += ["", "Chunk tasks per worker, and the largest |difference| of an estimate from the local run:", ""]
    for r in rows:
        if r.get("workers"):
            local = next(x for x in rows if x.get("workers") == 0 and (x["n"], x["p"]) == (r["n"], r["p"]))
            diffs = [abs(v - local["estimates"][k]) for k, v in r["estimates"].items()
                     if v is not None and local["estimates"].get(k) is not None]
            lines.append(f"- {r['n']:,} x {r['p']:,}, {r['what']}: {r['dask'] and r['dask'].get('chunk_tasks_per_worker')}; "
                         f"max |diff| {max(diffs):.1e}")
    lines.append("")
    Path(str(out) + ".md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="60000x1000")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(RESULTS / "dask_workers"))
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    meta = {"hardware": f"{os.cpu_count()}-core {cpu_model()}", "date": time.strftime("%Y-%m-%d"),
            "commit": git_commit(), "command": "nice -n 10 " + command_line(__file__), "seed": args.seed}
    rows: list[dict] = []
    for size in args.sizes.split(","):
        n, p = (int(x) for x in size.split("x"))
        rows += measure_size(n, p, workers, args.seed, Path(args.scratch))
        write_outputs(rows, meta, Path(args.out))


if __name__ == "__main__":
    main()
