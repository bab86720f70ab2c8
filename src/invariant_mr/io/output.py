"""Safe outputs: a run's files appear all together or not at all, and never replace what they should not.

Rules (each a test in tests/test_output_safety.py):

* An existing `--out` is refused unless `--overwrite`, and `--overwrite`
  replaces only a directory a previous invariant-mr run wrote (its
  results.json or truth.json carries provenance) and nothing else (no
  file a user added beside the outputs), never one holding an input of
  this run, the current directory or one of its parents.
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


#: Every file name an invariant-mr command writes into its output folder (run, mr, demo and its data/ folder,
#: simulate, fit, apply). `--overwrite` replaces a previous run's folder as a whole, so it first checks that
#: nothing else is in it: a notes.txt the user added would otherwise disappear with the old outputs.
KNOWN_OUTPUT_NAMES = frozenset({
    "results.json", "estimates.tsv", "forest.png", "qc.tsv", "instruments.tsv", "report.html",
    "dropped_variants.tsv", "scatter.png", "funnel.png", "leave_one_out.png", "single_variant_forest.png",
    "data.tsv", "truth.json", "genotypes.bed", "genotypes.bim", "genotypes.fam", "phenotypes.tsv",
    "alignment.json", "provenance.json", "manifest.json", "loadings.tsv", "score.tsv", "variants.tsv",
    "model.pt", "config.json",
    # `mr`'s TwoSampleMR-style tables
    "mr_results.tsv", "harmonised_data.tsv", "single_variant.tsv", "leave_one_out.tsv",
})
KNOWN_OUTPUT_FOLDERS = frozenset({"data", "model"})
#: Files an operating system drops into any folder it shows; removing them loses nothing.
_SYSTEM_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def foreign_entries(directory: Path) -> list[str]:
    """Paths (relative) in a previous run's output folder that no invariant-mr command writes."""
    foreign = []
    for entry in sorted(directory.rglob("*")):
        rel = entry.relative_to(directory)
        if entry.name in _SYSTEM_LITTER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            if len(rel.parts) > 1 or rel.name not in KNOWN_OUTPUT_FOLDERS:
                foreign.append(f"{rel}/")
            continue
        if entry.name not in KNOWN_OUTPUT_NAMES or len(rel.parts) > 2 or (
                len(rel.parts) == 2 and rel.parts[0] not in KNOWN_OUTPUT_FOLDERS):
            foreign.append(str(rel))
    # A foreign folder's contents are covered by naming the folder.
    folders = [f for f in foreign if f.endswith("/")]
    return [f for f in foreign if f.endswith("/") or not any(f.startswith(d) for d in folders)]


def _within(path: Path, directory: Path) -> bool:
    try:
        path.relative_to(directory)
    except ValueError:
        return False
    return True


def check_output_file(path: str | os.PathLike, *, overwrite: bool, option: str,
                      inputs: Iterable[str | os.PathLike | None] = (), out_dir: str | os.PathLike | None = None) -> None:
    """Refuse, before any work, a single output file (e.g. --sumstats-out) that would destroy something.

    The same rules as an output directory: an existing file only with --overwrite, never an input of the run
    (not even with --overwrite), never inside the --out folder (which is replaced as a whole), and a parent
    folder that exists.
    """
    target = Path(path)
    final = target.resolve()
    for given in inputs:
        if given is not None and Path(given).resolve() == final:
            raise InputError(f"{option} {target}: is an input of this run ({given}); choose another file name")
    if out_dir is not None:
        out = Path(out_dir).resolve()
        if final == out or _within(final, out):
            raise InputError(f"{option} {target}: lies inside --out {out_dir}, which is written as a whole; "
                             "choose a path outside it")
    if final.exists():
        if final.is_dir():
            raise InputError(f"{option} {target}: is a folder; give a file name")
        if not overwrite:
            raise InputError(f"{option} {target}: already exists (use --overwrite to replace it)")
    parent = final.parent
    if not parent.is_dir():
        blocker = next((a for a in (parent, *parent.parents) if a.exists() and not a.is_dir()), None)
        if blocker is not None:
            raise InputError(f"{option} {target}: {blocker} is a file, not a folder")
        raise InputError(f"{option} {target}: parent folder {parent} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{option} {target}: cannot write in {parent}")


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
                raise self._fail(f"is an existing file, not a folder; {self.option} names a new folder for the "
                                 "outputs (nothing was written)")
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
            foreign = foreign_entries(final)
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise self._fail(
                    f"holds {len(foreign)} file(s) invariant-mr did not write ({shown}); --overwrite would delete "
                    "them with the old outputs: move them out, or choose another --out"
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
