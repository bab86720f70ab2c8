"""`run --config FILE.toml`: the same options as the command line, from a TOML file.

Keys are the command's option names (`exposure`, `env-col` or `env_col`,
`maf`, `methods`, ...), either at the top level or grouped in any tables,
e.g.

    [input]
    bfile = "data/genotypes"
    pheno = "data/phenotypes.tsv"
    env-col = "environment"
    exposure = "bmi"
    outcome = "sbp"
    covar = ["age", "sex", "PC1", "PC2"]

    [qc]
    maf = 0.01
    geno = 0.05

    [run]
    methods = ["invariant_linear", "tsls_all_env"]
    seed = 1
    out = "results/bmi_sbp"

Relative paths are resolved against the directory of the config file, so a
config keeps working when run from elsewhere. Flags given on the command
line override the file (the file only supplies click's defaults).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from invariant_mr.errors import InputError

#: Options whose values are file or directory paths.
PATH_KEYS = frozenset({"bfile", "pheno", "extract", "out_dir", "npy", "npy_samples", "npy_variants", "table"})

def _normalise_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def _flatten(table: Mapping[str, Any], path: str, out: dict[str, Any], origin: dict[str, str]) -> None:
    for key, value in table.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, Mapping):
            _flatten(value, where, out, origin)
            continue
        name = _normalise_key(key)
        if name in out:
            raise InputError(f"config: option {name!r} is set twice ({origin[name]} and {where})")
        out[name] = value
        origin[name] = where


def load_run_config(path: str | os.PathLike, names: Mapping[str, str] | None = None,
                    path_keys: frozenset[str] = PATH_KEYS) -> dict[str, Any]:
    """Parameter name -> value from a TOML file; lists of strings become comma-separated strings.

    `names` maps each accepted key (flag spelling with underscores, e.g.
    "maf", "env_col", "out") to its parameter name (e.g. "min_maf", "out_dir");
    with it, an unknown key is an `InputError` that suggests the closest
    known keys.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--config {path}: file not found")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"--config {path}: not valid TOML ({exc})") from None
    values: dict[str, Any] = {}
    _flatten(raw, "", values, {})
    if names is not None:
        unknown = sorted(set(values) - set(names))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(names), n=2, cutoff=0.6)
                hints.append(f"{key!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
            raise InputError(f"--config {path}: unknown option(s) {', '.join(hints)}")
        renamed = {}
        for key, value in values.items():
            if names[key] in renamed:
                raise InputError(f"--config {path}: option {names[key]!r} is set twice (as {key!r} and another name)")
            renamed[names[key]] = value
        values = renamed
    base = path.resolve().parent
    for key, value in list(values.items()):
        if isinstance(value, list):
            if not all(isinstance(v, (str, int, float)) for v in value):
                raise InputError(f"--config {path}: {key} must be a list of names or numbers")
            value = ",".join(str(v) for v in value)
        if key in path_keys and not isinstance(value, str):
            raise InputError(f"--config {path}: {key} must be a path in quotes, got {value!r}")
        if key in path_keys and isinstance(value, str):
            value = str(base / Path(value).expanduser()) if not Path(value).expanduser().is_absolute() else value
        values[key] = value
    if "config" in values:
        raise InputError(f"--config {path}: a config file cannot name another config file")
    return values


def config_option_callback(ctx, param, value):
    """Click callback for an eager `--config`: the file's values become the command's defaults.

    Click then takes each option from the command line if given there, else
    from this default map, else from the option's own default, which is
    exactly "flags override the file".
    """
    if value is None:
        return None
    names = {}
    for p in ctx.command.params:
        if not p.name or p.name == "config":
            continue
        names[p.name] = p.name
        for flag in getattr(p, "opts", []):  # the first spelling of a --x/--no-x pair names the option
            if flag.startswith("--"):
                names[_normalise_key(flag)] = p.name
    import click

    params = {p.name: p for p in ctx.command.params}
    path_keys = frozenset(name for name, p in params.items() if isinstance(p.type, click.Path))
    values = load_run_config(value, names, path_keys)
    for key, raw in list(values.items()):
        if params.get(key) is not None and raw is not None:
            values[key] = _as_typed(params[key], key, raw, value, ctx)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


def _as_typed(param, key: str, raw: Any, path, ctx) -> Any:
    """A config value checked exactly as the command line checks the same option.

    TOML gives typed values, the command line gives text: `seed = 1.5` or
    `n_folds = true` would pass int() where `--seed 1.5` is refused. So a
    value becomes the text the user would have typed and goes through the
    option's own type; an on/off flag takes only true or false.
    """
    import click

    where = f"--config {path}: {key} = {raw!r}"
    if getattr(param, "is_flag", False) or getattr(param, "is_bool_flag", False):
        if not isinstance(raw, bool):
            raise InputError(f"{where}: give true or false")
        return raw
    if isinstance(raw, bool):
        raise InputError(f"{where}: true/false is for on/off options; this one takes a value")
    text = raw if isinstance(raw, str) else repr(raw) if isinstance(raw, float) else str(raw)
    try:
        param.type.convert(text, param, ctx)
    except click.BadParameter as exc:
        raise InputError(f"{where}: {' '.join(exc.message.split())}") from None
    return text
