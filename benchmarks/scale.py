"""Benchmark: `run --bfile` at biobank scale, against a bare read + Z'Z of the same file.

Data: Balding-Nichols simulation (F_ST 0.1, 3 environments of n/3, 1% of
genotype calls set missing, covariates age and sex), written as a PLINK 1
fileset by `simulation.genetic_dataset` (the simulator holds the genotypes as
int8, 1 byte per call, so 500,000 x 1,000 is 0.5 GB while writing).

For each size, in the same run, each a fresh process, timed wall-clock with
its peak RSS (sampled every 0.1 s with psutil, summed over the process and its
children, i.e. the Dask workers too, and the high-water mark VmHWM of the largest
process):

* bare: bed-reader int8 blocks -> float64 blocks of the same size the
  pipeline uses -> Z'Z accumulated (one pass, no QC, no imputation) — the
  unit of cost;
* run: `invariant-mr run --bfile ... --methods tsls_all_env,liml_all_env,
  invariant_linear,ivw --streaming on` (robust SEs, per-environment rows, AR
  sets up to --ar-max-instruments, diagnostics, report);
* run --workers 2 (a Dask LocalCluster of 2 worker processes) at the sizes in
  `--dask-sizes`;
* run --meat-precision float32 at the sizes in `--float32-sizes`, with the
  largest relative difference of every reported number from the float64 run.

BLAS single-threaded in every process (OMP_NUM_THREADS=1). Sizes run one at a
time; each size's fileset is deleted after it is measured.

    nice -n 10 python benchmarks/scale.py --sizes 50000x1000,150000x1000,500000x1000,100000x10000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from invariant_mr.provenance import cpu_model
from table_provenance import command_line, git_commit  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = "tsls_all_env,liml_all_env,invariant_linear,ivw"
BARE = r"""
import sys, time
import numpy as np
from bed_reader import open_bed
from invariant_mr.io.streamed_genotypes import FLOAT_BLOCK_BYTES, READ_BLOCK_BYTES
bed, n, p = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
step = max(64, FLOAT_BLOCK_BYTES // (8 * p))
big = max(step, (READ_BLOCK_BYTES // p) // step * step)
zz = np.zeros((p, p))
with open_bed(bed, iid_count=n, sid_count=p, num_threads=1) as f:
    for lo in range(0, n, big):
        raw = f.read(index=np.s_[lo:lo + big, :], dtype="int8", order="C", num_threads=1)
        for a in range(0, raw.shape[0], step):
            x = raw[a:a + step].astype(np.float64)
            zz += x.T @ x
print(float(zz[0, 0]))
"""


def thread_env() -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _hwm_bytes(pid: int) -> int:
    """The process's peak resident set since it exec'd (VmHWM), in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measured(cmd: list[str]) -> dict:
    """Wall seconds, CPU seconds, and peak memory: the largest VmHWM (peak RSS since exec) of any
    process of the tree, and the peak of the tree's summed RSS (Dask workers included), both
    sampled every 0.1 s. (ru_maxrss from wait4 is not used: on Linux it includes the parent's RSS
    copied at vfork, i.e. this harness's.)"""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0, 0]
    done = threading.Event()

    def sample():
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
            except psutil.Error:
                tree = []
            total = 0
            for p in tree:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
                peak[1] = max(peak[1], _hwm_bytes(p.pid))
            peak[0] = max(peak[0], total)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {err[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_tree_mib": round(peak[0] / 2**20, 1),
        "peak_hwm_largest_mib": round(peak[1] / 2**20, 1),
    }


def make_fileset(directory: Path, n: int, p: int, seed: int) -> tuple[Path, Path]:
    from invariant_mr.simulation.genetic_dataset import GENOTYPE_PREFIX, PHENOTYPE_FILE, simulate_genetic, write_fileset_into

    sim = simulate_genetic("balding-nichols", n_envs=3, n_per_env=n // 3, n_variants=p, fst=0.1, seed=seed)
    rng = np.random.default_rng(seed + 1)
    G = np.array(sim.genotypes)
    G[rng.random(G.shape, dtype=np.float32) < 0.01] = -127  # bed-reader's int8 missing code
    object.__setattr__(sim, "genotypes", G)
    write_fileset_into(sim, directory)
    del sim, G
    return directory / GENOTYPE_PREFIX, directory / PHENOTYPE_FILE


def run_args(prefix: Path, pheno: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "invariant_mr.cli", "run", "--bfile", str(prefix), "--pheno", str(pheno),
            "--env-col", "environment", "--exposure", "exposure", "--outcome", "outcome", "--covar", "age,sex",
            "--methods", METHODS, "--streaming", "on", "--quiet", "--overwrite", "--out", str(out), *extra]


def fileset_and_bare(work: Path, n: int, p: int, seed: int) -> tuple[Path, Path, int, dict]:
    """Write the benchmark fileset into `work` and time the bare read + Z'Z of it:
    (PLINK prefix, phenotype file, rows in the file, the bare row's measurements)."""
    t = time.perf_counter()
    prefix, pheno = make_fileset(work, n, p, seed)
    print(f"{n}x{p}: fileset written in {time.perf_counter() - t:.0f} s", flush=True)
    n_file = sum(1 for _ in open(str(prefix) + ".fam"))
    bare = measured([sys.executable, "-c", BARE, str(prefix) + ".bed", str(n_file), str(p)])
    print(f"  bare read + Z'Z: {bare}", flush=True)
    return prefix, pheno, n_file, bare


def run_record(out: Path) -> dict:
    """What the benchmarks read from a run's results.json. Durations live in its "volatile" block
    (`results.split_volatile`): `AnalysisResult.from_dict` puts the top-level ones (method_seconds) back
    into the provenance, and each streamed pass's seconds are read from their dotted path."""
    from invariant_mr.results import AnalysisResult

    payload = json.loads((out / "results.json").read_text())
    prov = AnalysisResult.from_dict(payload).provenance
    volatile = payload.get("volatile", {})
    streamed = prov.get("streamed_passes") or {}
    passes = [{**x, "seconds": volatile.get(f"streamed_passes.passes[{i}].seconds", x.get("seconds"))}
              for i, x in enumerate(streamed.get("passes", []))]
    return {"provenance": prov, "method_seconds": prov.get("method_seconds", {}), "passes": passes,
            "dask": streamed.get("dask"),
            "estimates": {f"{e['method']}/{e['scope']}": e["estimate"] for e in payload["estimates"]}}


#: The fields whose single-precision meats (`--meat-precision float32`) may move, compared with float64.
ACCURACY_FIELDS = ("estimate", "se", "first_stage_f", "ar_ci_low", "ar_ci_high", "pvalue")


def float32_accuracy(out64: Path, out32: Path) -> dict:
    """The largest relative difference, field by field, of the float32-meat run from the float64 one:
    every estimate row's numbers and every diagnostic's statistic and p-value (by name and scope)."""
    a, b = (json.loads((o / "results.json").read_text()) for o in (out64, out32))
    worst: dict[str, float] = {}

    def note(field, x, y):
        if x is None or y is None or not np.isfinite(x) or not np.isfinite(y):
            worst.setdefault(field, 0.0)
            if (x is None) != (y is None):
                worst[field] = float("inf")
            return
        worst[field] = max(worst.get(field, 0.0), abs(x - y) / max(abs(x), abs(y), 1e-300))

    rows_b = {(e["method"], e["scope"]): e for e in b["estimates"]}
    for e in a["estimates"]:
        f = rows_b[(e["method"], e["scope"])]
        for field in ACCURACY_FIELDS:
            note(field, e.get(field), f.get(field))
    diag_b = {(d["name"], d["scope"]): d for d in b.get("diagnostics", [])}
    for d in a.get("diagnostics", []):
        g = diag_b.get((d["name"], d["scope"]))
        if g is not None:
            for field in ("statistic", "pvalue"):
                note(f"{d['name']}.{field}", d.get(field), g.get(field))
    return worst


def measure_size(n: int, p: int, seed: int, dask_workers: int | None, scratch: Path,
                 float32: bool = False) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"scale-{n}x{p}-", dir=scratch))
    rows = []
    try:
        prefix, pheno, n_file, bare = fileset_and_bare(work, n, p, seed)
        rows.append({"n": n_file, "p": p, "what": "bare read + Z'Z", **bare})
        out = work / "out"
        result = measured(run_args(prefix, pheno, out))
        local = run_record(out)
        prov = local["provenance"]
        print(f"  run: {result}", flush=True)
        rows.append({"n": n_file, "p": p, "what": "run --streaming on", **result,
                     "method_seconds": local["method_seconds"], "passes": local["passes"],
                     "n_analysed": prov["samples"]["n_analysed"], "n_variants": prov["qc"]["n_variants_out"]})
        if float32:
            out32 = work / "out_float32"
            result = measured(run_args(prefix, pheno, out32, "--meat-precision", "float32"))
            single = run_record(out32)
            print(f"  run --meat-precision float32: {result}", flush=True)
            rows.append({"n": n_file, "p": p, "what": "run --streaming on --meat-precision float32", **result,
                         "method_seconds": single["method_seconds"], "passes": single["passes"],
                         "float32_vs_float64": float32_accuracy(out, out32)})
        if dask_workers:
            out2 = work / "out_dask"
            result = measured(run_args(prefix, pheno, out2, "--workers", str(dask_workers)))
            dask = run_record(out2)
            a, b = local["estimates"], dask["estimates"]
            diff = max(abs(a[k] - b[k]) for k in a if a[k] is not None and b.get(k) is not None)
            print(f"  run --workers {dask_workers}: {result}", flush=True)
            rows.append({"n": n_file, "p": p, "what": f"run --workers {dask_workers} (Dask LocalCluster)", **result,
                         "method_seconds": dask["method_seconds"], "dask": dask["dask"],
                         "max_abs_diff_vs_local": diff})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def peak_mib(r: dict) -> float:
    """The peak RSS of a row: the sampled sum over the process tree, or the kernel's high-water mark
    of its largest process when sampling (every 0.1 s) missed a short peak."""
    return max(r["peak_rss_tree_mib"], r["peak_hwm_largest_mib"])


def write_json_rows(rows: list[dict], meta: dict, out: Path) -> dict:
    """Write `out`.json ({meta, rows}) and return the bare rows by (n, p), which the tables divide by."""
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return {(r["n"], r["p"]): r for r in rows if r["what"].startswith("bare")}


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    rows = sorted(rows, key=lambda r: (r["p"], r["n"]))  # stable: bare, run, Dask within a size
    bare = write_json_rows(rows, meta, out)
    lines = [
        "# `run --bfile` at scale vs a bare read + Z'Z of the same file",
        "",
        f"Command: `{meta.get('command', 'not recorded')}`; commit {meta.get('commit', 'not recorded')}.",
        "",
        f"{meta['hardware']}; BLAS single-threaded in every process; {meta['date']}. "
        f"`benchmarks/scale.py` (Balding-Nichols, F_ST 0.1, 3 environments, 1% missing calls, covariates age "
        f"and sex), methods `{METHODS}` with `--streaming on` (robust SEs, per-environment rows, AR sets, "
        "diagnostics, report). Peak RSS: the larger of the process tree's summed RSS (Dask workers included), "
        "sampled every 0.1 s, and the largest process's high-water mark VmHWM; ratios are to the "
        "bare read + Z'Z of the same file measured in the same run. CPU (s) is user + system time of the process "
        "and of the children it reaped (wait4), so the Dask workers' CPU is included. The machine is shared: "
        "wall time includes waiting for a core, so the CPU ratio is the steadier figure.",
        "",
        "| n | p | what | wall (s) | CPU (s) | peak RSS (MiB) | time / bare | CPU / bare | RSS / bare |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = bare.get((r["n"], r["p"]))
        rt = "" if b is None or r is b else f"{r['wall_s'] / b['wall_s']:.2f}"
        rc = "" if b is None or r is b else f"{r['cpu_s'] / b['cpu_s']:.2f}"
        rr = "" if b is None or r is b else f"{peak_mib(r) / peak_mib(b):.2f}"
        lines.append(f"| {r['n']:,} | {r['p']:,} | {r['what']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{peak_mib(r):,.0f} | {rt} | {rc} | {rr} |")
    lines += ["", "Seconds per method inside `run` (from its provenance):", ""]
    for r in rows:
        if "method_seconds" in r:
            ms = ", ".join(f"{k} {v:.1f}" for k, v in r["method_seconds"].items())
            lines.append(f"- {r['n']:,} x {r['p']:,}, {r['what']}: {ms}")
    dask_rows = [r for r in rows if r.get("dask")]
    if dask_rows:
        lines += ["", "Dask rows: chunk tasks per worker, and the largest |difference| of an estimate from the "
                  "local run:", ""]
        for r in dask_rows:
            lines.append(f"- {r['n']:,} x {r['p']:,}: {r['dask']['chunk_tasks_per_worker']}; "
                         f"max |diff| {r['max_abs_diff_vs_local']:.1e}")
    pass_rows = [r for r in rows if r.get("passes")]
    if pass_rows:
        lines += ["", "Passes over the genotype file inside `run` (kernel, seconds; kernels in brackets rode on "
                  "the same read; the streamed QC's read is not among them):", ""]
        for r in pass_rows:
            ps = "; ".join(f"{x['kind']}" + (f" [{', '.join(x['carried'])}]" if x.get("carried") else "")
                           + f" {x['seconds']:.1f}" for x in r["passes"])
            lines.append(f"- {r['n']:,} x {r['p']:,}, {r['what']}: {ps}")
    acc_rows = [r for r in rows if r.get("float32_vs_float64")]
    if acc_rows:
        lines += ["", "Accuracy of `--meat-precision float32`: the largest relative difference from the float64 "
                  "run of the same file, by field (estimates, SEs and CIs use float64 meats in both):", ""]
        for r in acc_rows:
            acc = ", ".join(f"{k} {v:.1e}" for k, v in sorted(r["float32_vs_float64"].items(), key=lambda t: -t[1]))
            lines.append(f"- {r['n']:,} x {r['p']:,}: {acc}")
    if meta.get("not_run"):
        lines += ["", f"Not run: {meta['not_run']}"]
    lines.append("")
    Path(str(out) + ".md").write_text("\n".join(lines))
    plot(rows, Path(str(out) + ".png"))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for what, style in (("bare read + Z'Z", "o--"), ("run --streaming on", "s-")):
        sel = sorted((r for r in rows if r["what"] == what and r["p"] == 1000), key=lambda r: r["n"])
        if sel:
            axes[0].plot([r["n"] for r in sel], [r["wall_s"] for r in sel], style, label=what)
            axes[1].plot([r["n"] for r in sel], [peak_mib(r) / 1024 for r in sel], style, label=what)
    axes[1].axhline(2.5, color="grey", lw=0.8, ls=":", label="bar: 2.5 GiB")
    axes[0].set_ylabel("wall time (s)")
    axes[1].set_ylabel("peak RSS (GiB)")
    for ax in axes:
        ax.set_xlabel("samples n (p = 1,000 variants)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50000x1000,150000x1000,500000x1000,100000x10000")
    ap.add_argument("--dask-sizes", default="150000x1000", help="sizes that also get a --workers 2 row")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(RESULTS / "scale"))
    ap.add_argument("--append", action="store_true", help="keep the rows already in OUT.json")
    ap.add_argument("--render", action="store_true", help="only rewrite OUT.md and OUT.png from OUT.json")
    ap.add_argument("--not-run", default="", help="sizes not measured, and why (written under the table)")
    ap.add_argument("--float32-sizes", default="", help="sizes that also get a --meat-precision float32 row")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render:
        old = json.loads(Path(str(out) + ".json").read_text())
        if args.not_run:
            old["meta"]["not_run"] = args.not_run
        write_outputs(old["rows"], old["meta"], out)
        return
    rows, meta = [], {}
    if args.append and Path(str(out) + ".json").exists():
        old = json.loads(Path(str(out) + ".json").read_text())
        rows, meta = old["rows"], old["meta"]
    meta.update({"hardware": f"{os.cpu_count()}-core {cpu_model()}", "date": time.strftime("%Y-%m-%d"),
                 "commit": git_commit(), "command": command_line(__file__),
                 "seed": args.seed, "methods": METHODS})
    dask_sizes = set(args.dask_sizes.split(",")) if args.dask_sizes else set()
    for size in args.sizes.split(","):
        n, p = (int(x) for x in size.split("x"))
        new = measure_size(n, p, args.seed, 2 if size in dask_sizes else None, Path(args.scratch),
                           float32=size in set(args.float32_sizes.split(",")))
        rows = [r for r in rows if (r["n"], r["p"]) != (new[0]["n"], p)] + new
        write_outputs(rows, meta, out)  # after every size, so a long run leaves its results behind


if __name__ == "__main__":
    main()
