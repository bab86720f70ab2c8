"""Safe outputs: a run's files appear all together or not at all, and never replace what they should not.

Rules (each a test in tests/test_output_safety.py):

* An existing `--out` is refused unless `--overwrite`, and `--overwrite`
  replaces only a directory a previous invariant-mr run wrote (its
  results.json or truth.json carries provenance), never one holding an
  input of this run, the current directory or one of its parents.
* One run at a time per output: a lock file beside the destination is taken
  before any work starts; a second run exits with status 2 and says which
  process holds it. A lock left by a killed process is taken over.
* Every file is staged in `.NAME.invariant-mr-staging-PID-*` in the same
  parent and the folder is renamed into place at the end; staging folders
  whose process is gone (kill -9) are removed by the next run into that parent.
* Whether the destination can be written is checked before any work starts.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from invariant_mr.errors import InputError

_STAGING = ".invariant-mr-staging-"
_LOCK = ".invariant-mr-lock"
#: Output directories whose lock this process holds (released by `release_all_locks`).
_HELD: list["OutputDirectory"] = []


def release_all_locks() -> None:
    """Give up every output lock this process holds (the CLI calls it when a command ends, however it ends)."""
    for out in list(_HELD):
        out.release()


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


def publish_directory(stage: Path, target: Path) -> None:
    """Move a fully written `stage` directory to `target`, replacing what was there in two renames."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(stage, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, target)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def written_by_invariant_mr(directory: Path) -> bool:
    """True for a directory a previous run wrote: its results.json, truth.json or provenance.json
    (`fit` and `apply`) records provenance."""
    for name in ("results.json", "truth.json", "provenance.json"):
        try:
            record = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and "provenance" in record:
            return True
    return False


def _within(path: Path, directory: Path) -> bool:
    try:
        path.relative_to(directory)
    except ValueError:
        return False
    return True


class OutputDirectory:
    """Stage a run's outputs in a recognisable sibling directory; rename it into place on success.

        out = OutputDirectory("results", overwrite=False, inputs=[table])
        out.check()          # before any work: refuses unsafe destinations, takes the lock
        ...                  # the analysis
        with out:
            atomic_write_text(out.path / "results.json", ...)

    On any error the staging directory is removed, so no half-written output
    is ever left behind.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        overwrite: bool = False,
        option: str = "--out",
        inputs: Iterable[str | os.PathLike | None] = (),
    ):
        self.final = Path(path)
        self.overwrite = overwrite
        self.option = option
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.path: Path | None = None
        self._lock: Path | None = None

    # ------------------------------------------------------------------ checks
    def _fail(self, why: str) -> InputError:
        return InputError(f"{self.option} {self.final}: {why}")

    def check(self) -> None:
        """Fail early (before any work) if the destination cannot be used; then hold the lock."""
        final = self.final.resolve()
        if final.name in ("", ".", "..") or final == Path(final.anchor):
            raise self._fail("name a new folder for the outputs")
        cwd = Path.cwd().resolve()
        if final.exists():
            if not final.is_dir():
                raise self._fail("exists and is not a directory")
            if not self.overwrite:
                raise self._fail("already exists (use --overwrite to replace a previous run's output)")
            if final == cwd or _within(cwd, final):
                raise self._fail("is the current directory or one of its parents; --overwrite will not replace it")
            held = [p for p in self.inputs if _within(p.resolve(), final)]
            if held:
                raise self._fail(
                    f"holds an input of this run ({held[0]}); --overwrite never replaces a folder with inputs in it"
                )
            if not written_by_invariant_mr(final):
                raise self._fail(
                    "was not written by invariant-mr (no results.json or truth.json with provenance); "
                    "--overwrite replaces only a previous run's output folder"
                )
        parent = final.parent
        if not parent.is_dir():
            blocker = next((a for a in (parent, *parent.parents) if a.exists() and not a.is_dir()), None)
            if blocker is not None:
                raise self._fail(f"{blocker} is a file, not a folder; choose an {self.option} path inside a folder")
            raise self._fail(f"parent folder {parent} does not exist; create it first (mkdir -p {parent})")
        self._remove_stale_staging(parent, final.name)
        self._probe_writable(parent)
        self._take_lock(parent, final.name)

    def _probe_writable(self, parent: Path) -> None:
        try:
            probe = tempfile.mkdtemp(prefix=f".{self.final.name}{_STAGING}probe-", dir=parent)
            os.rmdir(probe)
        except OSError as exc:
            raise self._fail(f"cannot write in {parent} ({exc.strerror or exc})") from None

    @staticmethod
    def _remove_stale_staging(parent: Path, name: str) -> None:
        pattern = re.compile(rf"^\.{re.escape(name)}{re.escape(_STAGING)}(\d+)-")
        try:
            entries = list(parent.iterdir())
        except OSError:
            return
        for entry in entries:
            m = pattern.match(entry.name)
            if m and entry.is_dir() and not _pid_alive(int(m.group(1))):
                shutil.rmtree(entry, ignore_errors=True)

    def _take_lock(self, parent: Path, name: str) -> None:
        if self._lock is not None:
            return
        lock = parent / f".{name}{_LOCK}"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _pid_alive(pid) and pid != os.getpid():
                    raise self._fail(
                        f"another invariant-mr run (process {pid}) is writing there; wait for it or choose "
                        f"another {self.option}"
                    ) from None
                lock.unlink(missing_ok=True)  # left by a process that is gone
                continue
            except OSError as exc:
                raise self._fail(f"cannot write in {parent} ({exc.strerror or exc})") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self._lock = lock
            _HELD.append(self)
            atexit.register(self.release)
            return
        raise self._fail("could not take the output lock")

    def release(self) -> None:
        """Give up the lock (also done on exit and after the outputs are in place)."""
        if self._lock is not None:
            try:
                if self._lock.read_text().strip() == str(os.getpid()):
                    self._lock.unlink()
            except OSError:
                pass
            self._lock = None
        if self in _HELD:
            _HELD.remove(self)

    # ------------------------------------------------------------------ staging
    def __enter__(self) -> "OutputDirectory":
        self.check()
        parent = self.final.resolve().parent
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.final.name}{_STAGING}{os.getpid()}-", dir=parent))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.path is not None
        try:
            if exc_type is not None:
                shutil.rmtree(self.path, ignore_errors=True)
                return False
            os.chmod(self.path, 0o755)
            final = self.final.resolve()
            if final.exists():
                old = final.with_name(f".{final.name}{_STAGING}{os.getpid()}-old")
                os.replace(final, old)
                os.replace(self.path, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                try:
                    os.replace(self.path, final)
                except OSError as err:  # appeared meanwhile (a process that ignored the lock)
                    shutil.rmtree(self.path, ignore_errors=True)
                    if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
                        raise self._fail("appeared while this run was working; nothing was written") from None
                    raise
            return False
        finally:
            self.release()
