"""Start-up time of the command line: how long `--help`, `run --help` and `methods` take.

Each command runs in a fresh interpreter, interleaved with a bare
`python -c pass` so machine load hits all alike; medians over repeats. The
second table lists the heavy libraries each command imports (none should).

    python benchmarks/startup.py            # writes benchmarks/results/startup.md and .json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from invariant_mr.provenance import cpu_model
from table_provenance import command_line, git_commit  # noqa: E402

#: The installed console script, as users run it.
ENTRY = str(Path(sys.executable).with_name("invariant-mr"))
COMMANDS = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "invariant-mr --help": [ENTRY, "--help"],
    "invariant-mr run --help": [ENTRY, "run", "--help"],
    "invariant-mr methods": [ENTRY, "methods"],
}
HEAVY = ("torch", "dask", "matplotlib", "pandas", "scipy")
PROBE = (
    "import sys, runpy; sys.argv = ['invariant-mr', *{args!r}]\n"
    "try:\n    runpy.run_module('invariant_mr.cli', run_name='__main__', alter_sys=True)\nexcept SystemExit:\n    pass\n"
    "print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)"
)


def time_once(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - start


def heavy_imports(args: list[str]) -> str:
    if args[0] != ENTRY:
        return ""
    code = PROBE.format(args=args[1:], heavy=HEAVY)
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr
    line = [x for x in err.splitlines() if x.startswith("HEAVY=")]
    return line[-1][6:] if line else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "startup")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for name, argv in COMMANDS.items():  # warm the file cache once
        time_once(argv)
    for _ in range(args.repeats):
        for name, argv in COMMANDS.items():
            times[name].append(time_once(argv))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    heavy = {name: heavy_imports(argv) for name, argv in COMMANDS.items()}
    record = {
        "date": date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0],
        "repeats": args.repeats, "median_s": medians, "all_s": times, "heavy_imports": heavy,
    }  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Command-line start-up time",
        "",
        f"{record['date']}, {record['cpu']} ({record['cores']} cores), Python {record['python']}; "
        f"median of {args.repeats} runs each, interleaved. Regenerate: `{command_line(__file__)}`. "
        f"Commit: {git_commit()}.",
        "Target (issue 9): each `invariant-mr` command under 1.5 s on 2 cores (it was about 5.5 s idle, 12 s busy).",
        "",
        "| command | median s | heavy libraries imported |",
        "|---|---|---|",
        *[f"| `{name}` | {medians[name]:.3f} | {heavy[name] or 'none'} |" for name in COMMANDS],
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
