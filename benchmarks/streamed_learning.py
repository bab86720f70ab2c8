"""Benchmark: `invariant_autoencoder` on streamed genotypes, trained by minibatches over every row.

Data: the `benchmarks/scale.py` fileset (Balding-Nichols, F_ST 0.1, 3
environments of n/3, 1% missing calls, covariates age and sex), written as a
PLINK 1 fileset. In the same run, each a fresh process timed wall-clock with its
CPU time and peak RSS (`scale.measured`):

* bare: the bed-reader int8 read + Z'Z of the same file (`scale.BARE`), the unit of cost;
* run: `invariant-mr run --bfile ... --streaming on --methods tsls_all_env,invariant_autoencoder`
  with this checkout's code: the encoders train by minibatches from the int8 cache over all rows;
* optionally (`--before SRC`), the same command with another checkout's `src` (e.g. the main
  branch before this change), where `invariant_autoencoder` ran on the seeded 20,000-row subsample.

The rows each method used and its route are read from the run's results.json.

    nice -n 10 python benchmarks/streamed_learning.py --sizes 50000x500 --before /work/main/src
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from scale import fileset_and_bare, measured, peak_mib, run_record, write_json_rows  # noqa: E402
from table_provenance import command_line, git_commit  # noqa: E402

from invariant_mr.provenance import cpu_model

RESULTS = Path(__file__).parent / "results"
METHODS = "tsls_all_env,invariant_autoencoder"


def run_cmd(prefix: Path, pheno: Path, out: Path, src: str | None) -> list[str]:
    """The CLI run; with `src`, that checkout's package goes first on the path (scale.thread_env puts
    this checkout's there, and `-c` with a path insert overrides it)."""
    args = ["run", "--bfile", str(prefix), "--pheno", str(pheno), "--env-col", "environment", "--exposure",
            "exposure", "--outcome", "outcome", "--covar", "age,sex", "--methods", METHODS, "--streaming", "on",
            "--quiet", "--overwrite", "--no-report", "--out", str(out)]
    if src is None:
        return [sys.executable, "-m", "invariant_mr.cli", *args]
    boot = (f"import sys; sys.path.insert(0, {src!r}); from invariant_mr.cli import main; "
            f"sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", boot, *args]


def rows_used(out: Path) -> dict:
    """Per method: its pooled estimate, n (rows in the 2SLS), route and the rows that trained a learner."""
    payload = json.loads((out / "results.json").read_text())
    got = {}
    for e in payload["estimates"]:
        if e["scope"] == "pooled":
            extra = e.get("extra") or {}
            got[e["method"]] = {"estimate": e["estimate"], "n": e["n"], "route": extra.get("route"),
                                "training_rows": extra.get("training_rows"),
                                "per_encoder": [(t.get("train_rows"), t.get("val_rows"), t.get("epochs_run"))
                                                for t in extra.get("training", []) if isinstance(t, dict)]}
    return got


def measure_size(n: int, p: int, seed: int, before: str | None, scratch: Path) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"learn-{n}x{p}-", dir=scratch))
    rows = []
    try:
        prefix, pheno, n_file, bare = fileset_and_bare(work, n, p, seed)
        rows.append({"n": n_file, "p": p, "what": "bare read + Z'Z", **bare})
        runs = [("this commit: minibatches over all rows", None)]
        if before:
            runs.append(("before: seeded 20,000-row subsample", before))
        for what, src in runs:
            out = work / f"out-{len(rows)}"
            result = measured(run_cmd(prefix, pheno, out, src))
            record = run_record(out)
            print(f"  {what}: {result}", flush=True)
            rows.append({"n": n_file, "p": p, "what": what, **result, "method_seconds": record["method_seconds"],
                         "methods": rows_used(out)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    bare = write_json_rows(rows, meta, out)
    lines = [
        "# `invariant_autoencoder` on streamed genotypes: minibatches over every row",
        "",
        f"Command: `{meta['command']}`; commit {meta['commit']}.",
        "",
        f"{meta['hardware']}; BLAS single-threaded in every process; {meta['date']}. Fileset of "
        "`benchmarks/scale.py` (Balding-Nichols, F_ST 0.1, 3 environments, 1% missing calls, covariates age and "
        f"sex); `invariant-mr run --bfile ... --streaming on --methods {METHODS} --no-report` with the default "
        "autoencoder options (2 folds, 200 epochs at most, early stopping). Each row is a fresh process; peak RSS "
        "as in `benchmarks/results/scale.md`; ratios are to the bare read + Z'Z of the same file in the same "
        "run. The machine is shared (2 cores, other engineers' jobs): CPU is the steadier figure.",
        "",
        "| n | p | what | wall (s) | CPU (s) | peak RSS (MiB) | CPU / bare | autoencoder (s) | rows that trained "
        "the encoders | rows in its 2SLS |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = bare.get((r["n"], r["p"]))
        ae = r.get("methods", {}).get("invariant_autoencoder", {})
        rc = "" if b is None or r is b else f"{r['cpu_s'] / b['cpu_s']:.1f}"
        secs = r.get("method_seconds", {}).get("invariant_autoencoder")
        # Before this change the learners saw the subsample only: the rows of its 2SLS.
        trained = ae.get("training_rows") or (ae.get("n") if str(ae.get("route", "")).startswith("subsample")
                                              else "")
        lines.append(
            f"| {r['n']:,} | {r['p']:,} | {r['what']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {peak_mib(r):,.0f} | "
            f"{rc} | {'' if secs is None else f'{secs:.1f}'} | "
            f"{trained if isinstance(trained, str) else f'{trained:,}'} | {ae.get('n', '') if ae else ''} |"
        )
    lines += ["", "Routes and estimates (pooled) recorded by each run:", ""]
    for r in rows:
        for name, m in r.get("methods", {}).items():
            enc = "; ".join(f"encoder {i}: {a} gradient + {v} validation rows, {e} epochs"
                            for i, (a, v, e) in enumerate(m["per_encoder"]) if a is not None)
            lines.append(f"- {r['what']}, `{name}`: route `{m['route']}`, n {m['n']:,}, estimate "
                         f"{m['estimate']:.4f}" + (f" ({enc})" if enc else ""))
    lines.append("")
    Path(str(out) + ".md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50000x500")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--before", default=None, help="another checkout's src/ to run the same command with")
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(RESULTS / "streamed_learning"))
    args = ap.parse_args()
    meta = {"hardware": f"{os.cpu_count()}-core {cpu_model()}", "date": time.strftime("%Y-%m-%d"),
            "commit": git_commit(), "command": command_line(__file__), "seed": args.seed, "methods": METHODS}
    rows: list[dict] = []
    for size in args.sizes.split(","):
        n, p = (int(x) for x in size.split("x"))
        rows += measure_size(n, p, args.seed, args.before, Path(args.scratch))
        write_outputs(rows, meta, Path(args.out))


if __name__ == "__main__":
    main()
