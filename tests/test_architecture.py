"""The layering rules of docs/architecture.md, checked by reading every module's imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "invariant_mr"
SCIENCE = ("io", "passes", "simulation", "instruments", "estimators", "inference")
UPPER = ("methods", "pipeline", "report", "cli")
#: Lower layers first: a module may import its own layer and the layers before it (plus the
#: foundation modules at the top level: data, results, errors, provenance, config). `passes`, the
#: pass engine, stands beside io: it may read io, and everything that computes may run its passes.
ORDER = ("io", "passes", "simulation", "instruments", "estimators", "inference", "methods", "report", "pipeline",
         "cli")
FOUNDATION = ("data", "results", "errors", "provenance", "config", "__init__", "__version__")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every invariant_mr module `path` imports, at any depth of the file (lazy imports count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("invariant_mr"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("invariant_mr"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    for path in MODULES:
        layer = layer_of(module_name(path))
        assert layer is None or layer in ORDER or layer in FOUNDATION, f"{path}: unknown layer {layer}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_upward_imports(path):
    """io, simulation, instruments, estimators and inference never import methods, pipeline, report or cli;
    more generally no layer imports a later one."""
    own = layer_of(module_name(path))
    if own not in ORDER:
        return  # the foundation and the package's public API: checked below
    for mod in imported_modules(path):
        target = layer_of(mod)
        if target not in ORDER:
            continue
        if own in SCIENCE:
            assert target not in UPPER, f"{module_name(path)} imports {mod} (science imports no {UPPER})"
        assert ORDER.index(target) <= ORDER.index(own), f"{module_name(path)} ({own}) imports {mod}, a later layer"


def test_the_pass_engine_knows_no_statistic():
    """The pass engine imports only io and the foundation, and every read of the rows by a statistic
    goes through it: no module outside it defines a pass runner of its own."""
    for path in sorted((PACKAGE / "passes").rglob("*.py")):
        for mod in imported_modules(path):
            assert layer_of(mod) in ("io", "passes") or layer_of(mod) in FOUNDATION, f"{module_name(path)} imports {mod}"
    runners = ("class LocalPasses", "class DaskPasses", "class RecordedPasses", "def row_passes(")
    for path in MODULES:
        if layer_of(module_name(path)) == "passes":
            continue
        text = path.read_text()
        for word in runners:
            assert word not in text, f"{module_name(path)} defines {word!r}: pass runners live in invariant_mr.passes"


def test_foundation_imports_only_foundation():
    for name in ("data", "results", "errors", "provenance", "config"):
        path = PACKAGE / f"{name}.py"
        for mod in imported_modules(path):
            assert layer_of(mod) in FOUNDATION or layer_of(mod) is None, f"{name}.py imports {mod}"


def test_only_methods_know_the_registry():
    for path in MODULES:
        own = layer_of(module_name(path))
        if own in ("methods", "pipeline", "cli") or path == PACKAGE / "__init__.py":  # the public API re-exports
            continue
        text = path.read_text()
        for word in ("MethodContext", "MethodOption", "register_method"):
            assert word not in text, f"{module_name(path)} mentions {word}"


def test_no_import_cycles():
    graph = {module_name(p): {m for m in imported_modules(p)} for p in MODULES}
    graph = {k: {m for m in v if m in graph} for k, v in graph.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_cli_help_imports_no_heavy_library():
    """Building the CLI and listing methods must not import torch, dask, matplotlib or pandas."""
    code = (
        "import sys; from invariant_mr.cli import build_cli; from invariant_mr.methods.registry import "
        "registered_methods, all_method_options; build_cli(); registered_methods(); all_method_options(); "
        "print(','.join(m for m in ('torch', 'dask', 'matplotlib', 'pandas', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"heavy modules imported at start-up: {out}"
