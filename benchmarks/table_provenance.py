"""The commit and the exact command a benchmark table records in its header (issue 24).

Benchmark scripts run as `python benchmarks/NAME.py ...`, so this module is
importable from them by its bare name.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """Short hash of HEAD, marked when the code that produces results (src/, benchmarks/) has uncommitted edits."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "benchmarks/*.py", "benchmarks/*.sh"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return rev.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The exact command that regenerates the table: `python benchmarks/<script> <arguments as given>`."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", f"benchmarks/{Path(script).name}", *(shlex.quote(a) for a in args)])
