"""The `invariant-mr` command line: a thin layer over the Python API.

`build_cli()` is a parser factory tests can call; each command lives in its
own module and only parses options, calls the library and writes outputs.
User errors (`InputError`, bad options) print one line and exit with status
2; nothing half-written is left behind.
"""

from __future__ import annotations

import sys

import click

from invariant_mr import __version__
from invariant_mr.errors import InputError
from invariant_mr.io.output import release_all_locks

EXIT_USER_ERROR = 2


#: Each command's "module:attribute". A command's module is imported only when that command runs
#: (or `--help` lists it): `mr` need not pay for `demo`'s or `run`'s imports (click's LazyGroup pattern).
COMMANDS = {
    "apply": "invariant_mr.cli.portable:apply",
    "demo": "invariant_mr.cli.demo:demo",
    "fit": "invariant_mr.cli.portable:fit",
    "methods": "invariant_mr.cli.listing:methods",
    "mr": "invariant_mr.cli.mr:mr",
    "run": "invariant_mr.cli.run:run",
    "simulate": "invariant_mr.cli.simulate:simulate",
}


class _LazyCommands(dict):
    """name -> click command, importing the command's module the first time the name is looked up,
    so `group.commands["run"]` works as on a plain group."""

    def __missing__(self, name: str) -> click.Command:
        if name not in COMMANDS:
            raise KeyError(name)
        import importlib

        module, attribute = COMMANDS[name].split(":")
        command = self[name] = getattr(importlib.import_module(module), attribute)
        return command


class LazyGroup(click.Group):
    """A group whose commands are named up front (`COMMANDS`) and imported on first use."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands(self.commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        try:
            return self.commands[cmd_name]
        except KeyError:
            return None


def build_cli() -> click.Group:
    @click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.version_option(__version__, prog_name="invariant-mr")
    def cli():
        """Mendelian randomization with instruments that are invariant across environments."""

    return cli


EXIT_INTERNAL_ERROR = 1


def _internal_error(exc: Exception) -> int:
    """Report a bug in one line; the traceback goes to a file the user can attach to a report.

    Nothing is half-written either way (outputs are staged), so the line only has to say what happened.
    """
    import os
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        fd, path = tempfile.mkstemp(prefix="invariant-mr-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        where = f"the traceback is in {path}"
    except OSError:
        where = "set INVARIANT_MR_TRACEBACK=1 to see the traceback"
    first = " ".join(str(exc).split())[:200]
    click.echo(f"invariant-mr: internal error ({type(exc).__name__}: {first}); this is a bug, not a problem with "
               f"your input: {where}; please report it", err=True)
    return EXIT_INTERNAL_ERROR


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    # A warning is for the user: one line, without the source line that raised it.
    click.echo(f"invariant-mr: warning: {' '.join(str(message).split())}", err=True)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the installed command (tests call main(argv) and keep Python's warning machinery)
        import warnings

        warnings.showwarning = _one_line_warning
    cli = build_cli()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        code = cli.main(args=argv, prog_name="invariant-mr", standalone_mode=False, obj={"argv": argv})
    except InputError as exc:
        click.echo(f"invariant-mr: error: {exc}", err=True)
        return EXIT_USER_ERROR
    except click.UsageError as exc:
        # One line, like every other user error: the problem, then where the help is.
        command = exc.ctx.command_path if exc.ctx is not None else "invariant-mr"
        message = " ".join(exc.format_message().split())  # click lists choices on several lines
        if message.startswith("Got unexpected extra argument"):
            message += "; an unquoted pattern such as z* is expanded by the shell: quote it ('z*')"
        click.echo(f"invariant-mr: error: {message} (see '{command} --help')", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"invariant-mr: error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("invariant-mr: aborted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the user, the traceback kept in a file
        import os

        if os.environ.get("INVARIANT_MR_TRACEBACK"):
            raise
        return _internal_error(exc)
    finally:
        release_all_locks()
    return code if isinstance(code, int) else 0
