"""What a method is: its output, its options and its catalogue entry (plain data, no imports of methods)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from invariant_mr.results import Diagnostic, Estimate


@dataclass(frozen=True)
class MethodOutput:
    """What a method returns: estimates, optional diagnostics and artifacts.

    Artifacts are large or non-tabular things a report may show: learned
    instruments (an (n, k) array under "instruments"), training histories.
    """

    estimates: tuple[Estimate, ...]
    diagnostics: tuple[Diagnostic, ...] = ()
    artifacts: Mapping[str, Any] = field(default_factory=dict)


#: (data: MRData, ctx: MethodContext) -> MethodOutput
MethodFunction = Callable[[Any, Any], MethodOutput]


@dataclass(frozen=True)
class MethodOption:
    """A tunable of one or more methods. The CLI turns each into a flag `--name-with-dashes`.

    Methods read it with `ctx.option(name, default)`; options with the same name
    are shared between methods and must then have the same type and meaning.
    `type` is a click-compatible type (int, float, str, bool or click.Choice).
    `group` names the family whose help section lists the flag.
    """

    name: str
    type: Any
    default: Any
    help: str
    group: str = "analysis"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class MethodSpec:
    """A method's metadata and where its function lives ("module:function" or the function itself).

    `summary_input`: the method also takes GWAS summary statistics (an
    `io.gwas_sumstats.SumstatsTable`, what `invariant-mr mr` analyses), not
    only individual-level `MRData`. `multivariable`: it estimates the direct
    effects of several exposures at once (one `Estimate` per exposure).
    `summary_default`: `mr` runs it when no `--methods` is given (False for
    methods TwoSampleMR's `mr()` leaves out by default and `mr` lacked before).
    `default_max_work`: a default method whose cost grows as n x variants^2
    runs by default only while n x variants^2 is at most this; above it, it
    runs when named, and the run reports it as not run, with the reason.
    """

    name: str
    target: str | MethodFunction
    description: str
    needs_truth: bool = False
    default: bool = True
    options: tuple[MethodOption, ...] = ()
    family: str = "other"
    summary_input: bool = False
    multivariable: bool = False
    summary_default: bool = True
    default_max_work: int | None = None

    @property
    def function(self) -> MethodFunction:
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)
