"""The registry of effect-estimation methods shared by `run`, `demo` and the benchmarks.

A method is a function `(data: MRData, ctx: MethodContext) -> MethodOutput`.
This is the only layer that knows `MethodContext` and `MethodOption`: it
maps command-line options onto the learners' constructor arguments and the
`InferenceSettings` of the inference layer.

Built-in methods are declared in `methods/catalogue.py` with the
"module:function" that implements them, so listing methods and building the
command line never imports torch or any method module; the function is
imported the first time the method runs. User code can add methods with
`@register_method`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from invariant_mr.errors import InputError
from invariant_mr.methods.spec import MethodFunction, MethodOption, MethodOutput, MethodSpec


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
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        from invariant_mr.methods.options import check_option_values

        check_option_values(self.options)
        self.inference  # validates alpha and cov_type

    @property
    def inference(self):
        """The `InferenceSettings` these options describe (what the inference layer takes)."""
        from invariant_mr.inference.settings import (
            AR_MAX_INSTRUMENTS_DEFAULT,
            DIAGNOSTIC_PERMUTATIONS_DEFAULT,
            InferenceSettings,
        )

        return InferenceSettings(
            seed=self.seed,
            alpha=self.alpha,
            cov_type=self.cov_type,
            per_env=self.per_env,
            ar_max_instruments=int(self.option("ar_max_instruments", AR_MAX_INSTRUMENTS_DEFAULT)),
            diagnostic_permutations=int(self.option("diagnostic_permutations", DIAGNOSTIC_PERMUTATIONS_DEFAULT)),
        )

    def rng(self, salt: str):
        """An independent generator per named random step, fixed by the seed."""
        import numpy as np

        return np.random.default_rng([self.seed, *salt.encode()])

    def option(self, name: str, default: Any = None) -> Any:
        value = self.options.get(name)
        return default if value is None else value


_REGISTRY: dict[str, MethodSpec] = {}
_BUILTINS_LOADED = False


def add_method(spec: MethodSpec) -> None:
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing.target != spec.target:
        raise RuntimeError(f"method {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec


def register_method(
    name: str,
    *,
    description: str,
    default: bool = True,
    needs_truth: bool = False,
    options: tuple[MethodOption, ...] = (),
    family: str = "other",
):
    """Decorator: register `function` under `name` (unique), for methods defined outside the catalogue.

    `default=False` keeps a method out of "all methods" (e.g. slow ones); it
    still runs when named in `--methods`.
    """

    def wrap(function: MethodFunction) -> MethodFunction:
        _load_builtins()
        add_method(MethodSpec(name, function, description, needs_truth, default, tuple(options), family))
        return function

    return wrap


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from invariant_mr.methods.catalogue import BUILTIN_METHODS

    for spec in BUILTIN_METHODS:
        add_method(spec)


def registered_methods() -> dict[str, MethodSpec]:
    _load_builtins()
    return dict(_REGISTRY)


def all_method_options() -> dict[str, MethodOption]:
    """Every option of every registered method, by name (first registration wins)."""
    out: dict[str, MethodOption] = {}
    for spec in registered_methods().values():
        for opt in spec.options:
            out.setdefault(opt.name, opt)
    return out


def resolve_methods(names: str | list[str] | None) -> list[MethodSpec]:
    """Method specs from a comma-separated list; None means every default method."""
    available = registered_methods()
    if names is None or names == "all" or names == ["all"]:
        return [s for s in available.values() if s.default and not s.needs_truth]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise InputError("--methods is empty")
    if any(n not in available for n in names):
        # TwoSampleMR's function names (mr_ivw_fe, mr_simple_mode_nome, ...) name the same methods.
        from invariant_mr.estimators.summary.summary_extra import TWOSAMPLEMR_METHODS

        alias = {obj: ours for ours, (obj, _) in TWOSAMPLEMR_METHODS.items()}
        names = [n if n in available else alias.get(n, n) for n in names]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InputError(
            f"--methods: unknown method(s) {', '.join(unknown)}; available: {', '.join(sorted(available))}"
        )
    return [available[n] for n in dict.fromkeys(names)]


__all__ = [
    "MethodContext", "MethodFunction", "MethodOption", "MethodOutput", "MethodSpec",
    "add_method", "all_method_options", "register_method", "registered_methods", "resolve_methods",
]  # fmt: skip
