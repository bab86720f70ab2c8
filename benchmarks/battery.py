"""Benchmark: the default battery of `run --bfile` (every default method, with the report) against a bare
read + Z'Z of the same file, for a commit (HEAD) and, side by side in the same run, a base commit.

Data: Balding-Nichols simulation (F_ST 0.1, 3 environments of n/3, 1% of genotype calls missing,
covariates age and sex), written as a PLINK 1 fileset (`scale.make_fileset`).

For each size, each a fresh process, timed with its CPU seconds and peak RSS (`scale.measured`):

* bare: bed-reader int8 blocks -> float64 -> Z'Z (`scale.BARE`), the unit of cost;
* run (this commit, its src/ exported with `git archive` so that editing the checkout during a long
  run changes nothing): `invariant-mr run --bfile ... --covar age,sex` with the default methods and the
  report, on the default route (in memory at these sizes), and with `--streaming on`;
* run (base): the same command with the source tree of `--base` (exported with `git archive`), so
  the speed-up is measured on the same file, machine and load.

BLAS single-threaded in every process. The machine is shared, so the CPU seconds (user + system)
are the figure to compare; wall time includes waiting for a core.

    nice -n 10 python benchmarks/battery.py --sizes 6000x500,30000x1000 --base 5b59313
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale import fileset_and_bare, measured, peak_mib, run_record, write_json_rows  # noqa: E402

from invariant_mr.provenance import cpu_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def run_cmd(src: Path, prefix: Path, pheno: Path, out: Path, *extra: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {str(src)!r}); from invariant_mr.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, "run", "--bfile", str(prefix), "--pheno", str(pheno), "--env-col",
            "environment", "--exposure", "exposure", "--outcome", "outcome", "--covar", "age,sex", "--quiet",
            "--overwrite", "--out", str(out), *extra]


def export_src(commit: str, scratch: Path) -> tuple[Path, str]:
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], capture_output=True, text=True,
                          check=True).stdout.strip()
    dest = Path(tempfile.mkdtemp(prefix="battery-src-", dir=scratch))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", full, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src", full


def _row(what: str, n: int, p: int, result: dict, out: Path | None) -> dict:
    row = {"n": n, "p": p, "what": what, **result}
    if out is not None:
        record = run_record(out)
        row["method_seconds"] = record["method_seconds"]
        row["n_methods"] = len(record["method_seconds"])
        row["estimates"] = record["estimates"]
    return row


def measure_size(n: int, p: int, seed: int, head_src: Path, base_src: Path | None, scratch: Path,
                 streaming: bool) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"battery-{n}x{p}-", dir=scratch))
    rows = []
    try:
        prefix, pheno, n_file, bare = fileset_and_bare(work, n, p, seed)
        rows.append(_row("bare read + Z'Z", n_file, p, bare, None))
        runs = [("run (this commit)", head_src, ())]
        if streaming:
            runs.append(("run --streaming on (this commit)", head_src, ("--streaming", "on")))
        if base_src is not None:
            runs.append(("run (base)", base_src, ()))
        for what, src, extra in runs:
            out = work / what.replace(" ", "_").replace("(", "").replace(")", "")
            result = measured(run_cmd(src, prefix, pheno, out, *extra))
            print(f"{n}x{p} {what}: {result}", flush=True)
            rows.append(_row(what, n_file, p, result, out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    bare = write_json_rows(rows, meta, out)
    lines = [
        "# The default battery of `run --bfile` vs a bare read + Z'Z of the same file",
        "",
        f"{meta['hardware']}; BLAS single-threaded in every process; {meta['date']}; this commit "
        f"`{meta['commit']}`, base `{meta.get('base') or 'not run'}`. `benchmarks/battery.py` "
        "(Balding-Nichols, F_ST 0.1, 3 environments, 1% missing calls, covariates age and sex): every default "
        "method with the report, one fresh process per row, all rows of a size in the same run on the same "
        "file. The machine is shared (2 cores, load often above 4), so wall time includes waiting for a "
        "core: compare CPU seconds (user + system). Peak RSS as in `scale.py`.",
        "",
        f"    {meta['command']}",
        "",
        "| n | p | what | methods | wall (s) | CPU (s) | peak RSS (MiB) | CPU / bare | RSS / bare |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = bare.get((r["n"], r["p"]))
        rc = "" if b is None or r is b else f"{r['cpu_s'] / b['cpu_s']:.1f}"
        rr = "" if b is None or r is b else f"{peak_mib(r) / peak_mib(b):.1f}"
        lines.append(f"| {r['n']:,} | {r['p']:,} | {r['what']} | {r.get('n_methods', '')} | {r['wall_s']:.1f} | "
                     f"{r['cpu_s']:.1f} | {peak_mib(r):,.0f} | {rc} | {rr} |")
    lines += ["", "Seconds per method inside `run` (wall, from its provenance; shared passes are charged to the "
              "first method that needs them):", ""]
    for r in rows:
        if "method_seconds" in r:
            ms = ", ".join(f"{k} {v:.1f}" for k, v in r["method_seconds"].items())
            lines.append(f"- {r['n']:,} x {r['p']:,}, {r['what']}: {ms}")
    lines += ["", "Largest |difference| of an estimate from the base commit's (same file):", ""]
    for r in rows:
        base = next((x for x in rows if x["what"] == "run (base)" and (x["n"], x["p"]) == (r["n"], r["p"])), None)
        if base is None or r is base or "estimates" not in r:
            continue
        diffs = [abs(v - base["estimates"][k]) for k, v in r["estimates"].items()
                 if v is not None and base["estimates"].get(k) is not None]
        lines.append(f"- {r['n']:,} x {r['p']:,}, {r['what']}: {max(diffs):.1e} over {len(diffs)} estimates")
    lines.append("")
    Path(str(out) + ".md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="6000x500,30000x1000")
    ap.add_argument("--base", default=None, help="a commit to measure side by side (its src/ tree)")
    ap.add_argument("--streaming", action="store_true", help="also a --streaming on row")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(RESULTS / "battery"))
    args = ap.parse_args()
    head_src, commit = export_src("HEAD", Path(args.scratch))
    base_src, base = (None, None)
    if args.base:
        base_src, base = export_src(args.base, Path(args.scratch))
    meta = {"hardware": f"{os.cpu_count()}-core {cpu_model()}", "date": time.strftime("%Y-%m-%d"),
            "commit": commit[:12], "base": base and base[:12], "seed": args.seed,
            "command": "nice -n 10 python benchmarks/battery.py " + " ".join(sys.argv[1:])}
    rows: list[dict] = []
    try:
        for size in args.sizes.split(","):
            n, p = (int(x) for x in size.split("x"))
            rows += measure_size(n, p, args.seed, head_src, base_src, Path(args.scratch), args.streaming)
            write_outputs(rows, meta, Path(args.out))
    finally:
        for src in (head_src, base_src):
            if src is not None:
                shutil.rmtree(src.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
