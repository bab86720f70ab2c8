"""Atomic outputs: a run's files appear all together or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from invariant_mr.errors import InputError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename over it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class OutputDirectory:
    """Stage a run's outputs in a hidden sibling directory; rename it into place on success.

    Refuses an existing directory unless `overwrite`. On any error the staging
    directory is removed, so no half-written output is ever left behind.

        with OutputDirectory("results", overwrite=False) as out:
            atomic_write_text(out.path / "results.json", ...)
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, option: str = "--out"):
        self.final = Path(path)
        self.overwrite = overwrite
        self.option = option
        self.path: Path | None = None

    def check(self) -> None:
        """Fail early (before any work) if the destination cannot be used."""
        if self.final.exists() and not self.overwrite:
            raise InputError(f"{self.option} {self.final}: already exists (use --overwrite to replace it)")
        if self.final.exists() and not self.final.is_dir():
            raise InputError(f"{self.option} {self.final}: exists and is not a directory")
        parent = self.final.resolve().parent
        if not parent.is_dir():
            raise InputError(f"{self.option} {self.final}: parent directory {parent} does not exist")

    def __enter__(self) -> "OutputDirectory":
        self.check()
        parent = self.final.resolve().parent
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.staging-", dir=parent))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.path is not None
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return False
        os.chmod(self.path, 0o755)
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
            os.replace(self.path, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.path, self.final)
        return False
