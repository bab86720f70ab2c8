"""One registry of effect-estimation methods, shared by `run`, `demo` and the benchmarks.

A method is a function `(data: MRData, ctx: MethodContext) -> MethodOutput`.
Modules register their methods on import with `@register_method`; the list of
built-in modules lives in `pipeline.BUILTIN_METHOD_MODULES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from .errors import InputError
from .results import Diagnostic, Estimate


@dataclass(frozen=True)
class MethodContext:
    """Settings shared by every method in one analysis.

    `options` maps option names (e.g. "n_components", "epochs") to values;
    a method reads the ones it understands and ignores the rest.
    """

    seed: int = 0
    alpha: float = 0.05
    cov_type: str = "robust"
    per_env: bool = True
    progress: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise InputError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.cov_type not in ("robust", "unadjusted"):
            raise InputError(f"cov_type must be 'robust' or 'unadjusted', got {self.cov_type!r}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def rng(self, salt: str) -> np.random.Generator:
        """An independent generator per named random step, fixed by the seed."""
        return np.random.default_rng([self.seed, *salt.encode()])

    def option(self, name: str, default: Any = None) -> Any:
        value = self.options.get(name)
        return default if value is None else value


@dataclass(frozen=True)
class MethodOutput:
    """What a method returns: estimates, optional diagnostics and artifacts.

    Artifacts are large or non-tabular things a report may show: learned
    instruments (an (n, k) array under "instruments"), training histories.
    """

    estimates: tuple[Estimate, ...]
    diagnostics: tuple[Diagnostic, ...] = ()
    artifacts: Mapping[str, Any] = field(default_factory=dict)


MethodFunction = Callable[[Any, MethodContext], MethodOutput]


@dataclass(frozen=True)
class MethodOption:
    """A tunable of one or more methods. The CLI turns each into a flag `--name-with-dashes`.

    Methods read it with `ctx.option(name, default)`; options with the same name
    are shared between methods and must then have the same type and meaning.
    `type` is a click-compatible type (int, float, str, bool or click.Choice).
    """

    name: str
    type: Any
    default: Any
    help: str


@dataclass(frozen=True)
class MethodSpec:
    name: str
    function: MethodFunction
    description: str
    needs_truth: bool = False
    default: bool = True
    options: tuple[MethodOption, ...] = ()


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    description: str,
    default: bool = True,
    needs_truth: bool = False,
    options: tuple[MethodOption, ...] = (),
):
    """Decorator: register `function` under `name` (unique).

    `default=False` keeps a method out of "all methods" (e.g. slow ones); it
    still runs when named in `--methods`.
    """

    def wrap(function: MethodFunction) -> MethodFunction:
        if name in _REGISTRY and _REGISTRY[name].function is not function:
            raise RuntimeError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name, function, description, needs_truth, default, tuple(options))
        return function

    return wrap


def all_method_options() -> dict[str, MethodOption]:
    """Every option of every registered method, by name (first registration wins)."""
    out: dict[str, MethodOption] = {}
    for spec in registered_methods().values():
        for opt in spec.options:
            out.setdefault(opt.name, opt)
    return out


def registered_methods() -> dict[str, MethodSpec]:
    from .pipeline import load_builtin_methods

    load_builtin_methods()
    return dict(_REGISTRY)


def resolve_methods(names: str | list[str] | None) -> list[MethodSpec]:
    """Method specs from a comma-separated list; None means every default method."""
    available = registered_methods()
    if names is None or names == "all" or names == ["all"]:
        return [s for s in available.values() if s.default and not s.needs_truth]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise InputError("--methods is empty")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InputError(
            f"--methods: unknown method(s) {', '.join(unknown)}; available: {', '.join(sorted(available))}"
        )
    return [available[n] for n in dict.fromkeys(names)]
