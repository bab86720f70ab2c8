"""The command group imports a command's module only when that command is used, and still lists every one."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from invariant_mr.cli import COMMANDS, build_cli, main


def _command(name: str) -> click.Command:
    module, attribute = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def test_every_command_module_defines_the_command_it_is_listed_under():
    assert set(COMMANDS) == {"apply", "demo", "fit", "methods", "mr", "run", "simulate"}
    for name in COMMANDS:
        command = _command(name)
        assert isinstance(command, click.Command) and command.name == name


def test_help_lists_every_command_with_its_short_help():
    out = CliRunner().invoke(build_cli(), ["--help"], terminal_width=100)
    assert out.exit_code == 0, out.output
    listing = out.output.split("Commands:", 1)[1].splitlines()
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in listing if line.strip()}
    assert list(rows) == sorted(COMMANDS)
    for name, short in rows.items():
        assert short and short == _command(name).get_short_help_str(limit=len(short)), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_resolves_and_parses(name, capsys):
    assert main([name, "--help"]) == 0
    assert f"Usage: invariant-mr {name} [OPTIONS]" in capsys.readouterr().out
    group = build_cli()
    assert group.commands[name] is _command(name)  # the group's dict, as on a plain click group
    assert group.get_command(click.Context(group), "no-such-command") is None


def test_unknown_command_is_a_one_line_usage_error(capsys):
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err.strip()
    assert "No such command 'no-such-command'" in err and len(err.splitlines()) == 1


def test_a_command_imports_no_other_command_module():
    code = (
        "import sys; from invariant_mr.cli import main; code = main(['methods']); "
        "print('EXIT', code, ','.join(sorted(m for m in sys.modules if m.startswith('invariant_mr.cli.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    _, exit_code, modules = out.strip().splitlines()[-1].split(" ")
    assert exit_code == "0"
    assert set(modules.split(",")) <= {"invariant_mr.cli.listing", "invariant_mr.cli.common"}, modules
