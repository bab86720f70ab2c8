"""Check: the streamed routes of `run --bfile` (local and on Dask workers) give the same estimates, bit for bit,
and the same passes, at this commit (HEAD) and at a base commit, on the same file.

`battery.py` compares the default route (in memory at its sizes); this compares the routes that read the
genotypes from disk in row blocks, where a change to the pass engine would show first: for each route, the
largest |difference| of an estimate from the base's, and whether the record of passes (kernel, requests
reused, where) is the same. Data as in `battery.py` (Balding-Nichols, F_ST 0.1, 3 environments, 1% missing
calls, covariates age and sex); each run a fresh process on each commit's own `src/` (`git archive`).

    nice -n 10 python benchmarks/streamed_identity.py --base f2a5e94 --size 3000x200 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from battery import export_src, run_cmd  # noqa: E402
from scale import make_fileset, run_record  # noqa: E402
from table_provenance import command_line  # noqa: E402

from invariant_mr.provenance import cpu_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _passes(record: dict) -> list[list]:
    return [[p["kind"], p.get("requests_reused", 0), p["where"]] for p in record["passes"]]


def compare(head: dict, base: dict) -> dict:
    h, b = head["estimates"], base["estimates"]
    diffs = [abs(v - b[k]) for k, v in h.items() if v is not None and b.get(k) is not None]
    return {
        "estimates": len(diffs),
        "same_estimate_keys": set(h) == set(b),
        "max_abs_difference": max(diffs) if diffs else None,
        "same_passes": _passes(head) == _passes(base),
        "passes": _passes(head),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the commit to compare with (its src/ tree)")
    ap.add_argument("--size", default="3000x200", help="n x p of the simulated fileset")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers of the distributed route")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(RESULTS / "streamed_identity"))
    args = ap.parse_args()
    n, p = (int(x) for x in args.size.split("x"))
    scratch = Path(tempfile.mkdtemp(prefix="streamed-identity-", dir=args.scratch))
    routes = {"streamed, local": ("--streaming", "on"),
              f"streamed, Dask ({args.workers} workers)": ("--streaming", "on", "--workers", str(args.workers))}
    try:
        prefix, pheno = make_fileset(scratch, n, p, args.seed)
        head_src, head = export_src("HEAD", scratch)
        base_src, base = export_src(args.base, scratch)
        rows = []
        for route, extra in routes.items():
            records = {}
            for name, src in (("head", head_src), ("base", base_src)):
                out = scratch / f"{name}-{len(rows)}"
                subprocess.run(run_cmd(src, prefix, pheno, out, *extra), check=True)
                records[name] = run_record(out)
            rows.append({"route": route, **compare(records["head"], records["base"])})
            print(route, {k: v for k, v in rows[-1].items() if k != "passes"}, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta = {"hardware": f"{os.cpu_count()}-core {cpu_model()}", "date": time.strftime("%Y-%m-%d"),
            "commit": head[:12], "base": base[:12], "n": n, "p": p, "seed": args.seed,
            "command": "nice -n 10 " + command_line(__file__)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out) + ".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    tmp.replace(Path(str(out) + ".json"))
    lines = [
        "# Streamed routes of `run --bfile`: this commit against a base, estimate by estimate",
        "",
        f"{meta['hardware']}; {meta['date']}; this commit `{meta['commit']}`, base `{meta['base']}`; "
        f"{n:,} x {p:,} (Balding-Nichols, 3 environments, 1% missing calls, covariates age and sex), the default "
        "methods with the report, each run a fresh process on its commit's own `src/`.",
        "",
        f"    {meta['command']}",
        "",
        "| route | estimates | largest abs difference | same estimates reported | same passes (kernel, reused, where) |",
        "|---|---:|---:|---|---|",
    ]
    for r in rows:
        diff = "n/a" if r["max_abs_difference"] is None else f"{r['max_abs_difference']:.1e}"
        lines.append(f"| {r['route']} | {r['estimates']} | {diff} | {'yes' if r['same_estimate_keys'] else 'NO'} | "
                     f"{'yes' if r['same_passes'] else 'NO'} ({len(r['passes'])} passes) |")
    lines.append("")
    tmp = Path(str(out) + ".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(Path(str(out) + ".md"))


if __name__ == "__main__":
    main()
