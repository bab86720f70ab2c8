"""The `invariant-mr` command line: a thin layer over the Python API.

`build_cli()` is a parser factory tests can call; handlers only parse options,
call the library and write outputs. User errors (`InputError`, bad options)
print one line and exit with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from . import __version__
from .errors import InputError
from .output import OutputDirectory, atomic_write_bytes, atomic_write_text
from .provenance import input_record, json_default, make_provenance
from .registry import MethodContext, all_method_options, registered_methods

EXIT_USER_ERROR = 2


# ------------------------------------------------------------------ helpers
def _command_line() -> str:
    return shlex.join(["invariant-mr", *sys.argv[1:]])


def method_option_flags(func):
    """Add one flag per registered method option (see `registry.MethodOption`)."""
    for opt in sorted(all_method_options().values(), key=lambda o: o.name, reverse=True):
        flag = opt.name.replace("_", "-")
        if opt.type is bool:
            decl = [f"--{flag}/--no-{flag}"]
            func = click.option(*decl, opt.name, default=None, help=f"{opt.help} [default: {opt.default}]")(func)
        else:
            func = click.option(
                f"--{flag}", opt.name, type=opt.type, default=None, help=f"{opt.help} [default: {opt.default}]"
            )(func)
    return func


def analysis_options(func):
    """Options shared by `run` and `demo`."""
    func = method_option_flags(func)
    decorators = [
        click.option("--methods", default=None, help="comma-separated methods (default: all default methods; see `invariant-mr methods`)"),
        click.option("--seed", type=int, default=0, show_default=True, help="seed for every random step"),
        click.option("--alpha", type=float, default=0.05, show_default=True, help="1 - confidence level"),
        click.option("--cov-type", type=click.Choice(["robust", "unadjusted"]), default="robust", show_default=True),
        click.option("--per-env/--no-per-env", default=True, show_default=True, help="also estimate within each environment"),
        click.option("--overwrite", is_flag=True, help="replace an existing output directory"),
        click.option("--quiet", is_flag=True, help="no progress bars or tables on the terminal"),
    ]
    for dec in reversed(decorators):
        func = dec(func)
    return func


def _context(seed, alpha, cov_type, per_env, quiet, option_values) -> MethodContext:
    names = set(all_method_options())
    options = {k: v for k, v in option_values.items() if k in names and v is not None}
    return MethodContext(seed=seed, alpha=alpha, cov_type=cov_type, per_env=per_env, progress=not quiet, options=options)


def write_result_files(result, directory: Path, plot: bool = True) -> list[str]:
    """results.json, estimates.tsv and (optionally) forest.png into `directory`."""
    atomic_write_text(directory / "results.json", result.to_json())
    atomic_write_text(directory / "estimates.tsv", result.to_tsv())
    written = ["results.json", "estimates.tsv"]
    if plot:
        from .plots import figure_png_bytes, forest_plot

        atomic_write_bytes(directory / "forest.png", figure_png_bytes(forest_plot(result)))
        written.append("forest.png")
    return written


# ------------------------------------------------------------------ commands
def build_cli() -> click.Group:
    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.version_option(__version__, prog_name="invariant-mr")
    def cli():
        """Mendelian randomization with instruments that are invariant across environments."""

    @cli.command()
    def methods():
        """List the estimation methods and their options."""
        for spec in registered_methods().values():
            tag = "" if spec.default else "  (not run by default; name it in --methods)"
            click.echo(f"{spec.name:<30}{spec.description}{tag}")
            for opt in spec.options:
                click.echo(f"    --{opt.name.replace('_', '-'):<24}{opt.help} [default: {opt.default}]")

    @cli.command()
    @click.option("--table", "table", type=click.Path(path_type=Path), required=True, help="TSV/CSV/Parquet with one row per sample")
    @click.option("--env", "env_col", required=True, help="environment column (ancestry, cohort, site)")
    @click.option("--exposure", required=True, help="exposure column")
    @click.option("--outcome", required=True, help="outcome column")
    @click.option("--instruments", required=True, help="instrument columns: names or globs, comma-separated (e.g. 'z*')")
    @click.option("--covariates", default=None, help="exogenous covariate columns (names or globs)")
    @click.option("--id-column", default="iid", show_default=True, help="sample ID column, if present")
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="output directory (must not exist)")
    @analysis_options
    def run(table, env_col, exposure, outcome, instruments, covariates, id_column, out_dir, methods, seed, alpha,
            cov_type, per_env, overwrite, quiet, **option_values):
        """Estimate the causal effect from a table of instruments, exposure, outcome and environment."""
        from .pipeline import run_analysis
        from .table_input import mrdata_from_table, read_table

        out = OutputDirectory(out_dir, overwrite)
        out.check()
        ctx = _context(seed, alpha, cov_type, per_env, quiet, option_values)
        data = mrdata_from_table(
            read_table(table), env=env_col, exposure=exposure, outcome=outcome,
            instruments=instruments, covariates=covariates, id_column=id_column, path=table,
        )
        params = {"table": str(table), "env": env_col, "exposure": exposure, "outcome": outcome,
                  "instruments": instruments, "covariates": covariates}
        result = run_analysis(data, methods, ctx, command=_command_line(), parameters=params,
                              inputs=input_record([table]))
        with out:
            write_result_files(result, out.path)
        if not quiet:
            click.echo(result.summary())
            click.echo(f"\nwrote {out_dir}/results.json, estimates.tsv, forest.png")

    @cli.command()
    @click.option("--setting", type=click.Choice(list(_paper_settings())), default="linear", show_default=True,
                  help="paper simulation setting (mixing of the latent blocks)")
    @click.option("--envs", "n_envs", type=click.IntRange(2, 3), default=2, show_default=True)
    @click.option("--n-per-env", type=click.IntRange(100), default=3000, show_default=True)
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("invariant-mr-demo"), show_default=True)
    @analysis_options
    def demo(setting, n_envs, n_per_env, out_dir, methods, seed, alpha, cov_type, per_env, overwrite, quiet,
             **option_values):
        """Simulate a built-in paper setting, run every default method and compare with the truth."""
        from .pipeline import run_analysis
        from .simulation import simulate_paper

        out = OutputDirectory(out_dir, overwrite=True)
        out.check()
        ctx = _context(seed, alpha, cov_type, per_env, quiet, option_values)
        sim = simulate_paper(setting, n_envs=n_envs, n_per_env=n_per_env, seed=seed)
        result = run_analysis(
            sim.data, methods, ctx, command=_command_line(),
            parameters={"simulation": sim.params}, truth=sim.truth_dict(),
        )
        with out:
            write_result_files(result, out.path)
        if not quiet:
            click.echo(f"Simulated paper setting '{setting}', K={n_envs}, n={n_per_env} per environment; true effect {sim.theta:g}\n")
            click.echo(result.summary())
            click.echo(f"\nwrote {out_dir}/results.json, estimates.tsv, forest.png")

    @cli.command()
    @click.option("--model", type=click.Choice(["paper", "balding-nichols", "coalescent", "assortative"]), default="paper", show_default=True)
    @click.option("--setting", type=click.Choice(list(_paper_settings())), default="linear", show_default=True, help="paper model: mixing setting")
    @click.option("--envs", "n_envs", type=click.IntRange(2), default=2, show_default=True, help="number of environments / populations")
    @click.option("--n-per-env", type=click.IntRange(2), default=3000, show_default=True)
    @click.option("--theta", type=float, default=1.0, show_default=True, help="true causal effect")
    @click.option("--n-variants", type=click.IntRange(1), default=500, show_default=True, help="genetic models: number of variants")
    @click.option("--fst", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True, help="balding-nichols: F_ST")
    @click.option("--demography", default="OutOfAfrica_3G09", show_default=True, help="coalescent: stdpopsim HomSap model")
    @click.option("--length-mb", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True, help="coalescent: simulated Mb")
    @click.option("--generations", type=click.IntRange(0), default=5, show_default=True, help="assortative: generations of assortative mating")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
    @click.option("--overwrite", is_flag=True, help="replace an existing output directory")
    def simulate(model, setting, n_envs, n_per_env, theta, n_variants, fst, demography, length_mb, generations, seed,
                 out_dir, overwrite):
        """Write a simulated data set with its truth (table for `paper`, PLINK fileset otherwise)."""
        out = OutputDirectory(out_dir, overwrite)
        out.check()
        if model == "paper":
            from .simulation import simulate_paper
            from .table_input import mrdata_to_table

            sim = simulate_paper(setting, n_envs=n_envs, n_per_env=n_per_env, theta=theta, seed=seed)
            truth = {**sim.truth_dict(), "provenance": make_provenance(
                command=_command_line(), parameters={"model": model, **sim.params, "theta": theta}, seed=seed)}
            with out:
                atomic_write_text(out.path / "data.tsv", mrdata_to_table(sim.data).to_csv(sep="\t", index=False))
                atomic_write_text(out.path / "truth.json", json.dumps(truth, indent=2, default=json_default))
            click.echo(f"wrote {out_dir}/data.tsv ({sim.data.n} samples, {sim.data.p} instruments) and truth.json")
            return
        from .simulation.genetic_dataset import simulate_genetic, write_fileset

        params = dict(n_envs=n_envs, n_per_env=n_per_env, n_variants=n_variants, fst=fst, theta=theta,
                      demography=demography, length_mb=length_mb, generations=generations, seed=seed)
        sim = simulate_genetic(model, **params)
        with out:
            write_fileset(sim, out.path, command=_command_line())
        click.echo(f"wrote {out_dir}/genotypes.bed/.bim/.fam, phenotypes.tsv and truth.json")

    return cli


def _paper_settings():
    from .simulation.paper import PAPER_SETTINGS

    return PAPER_SETTINGS


def main(argv: list[str] | None = None) -> int:
    cli = build_cli()
    try:
        code = cli.main(args=argv, prog_name="invariant-mr", standalone_mode=False)
    except InputError as exc:
        click.echo(f"invariant-mr: error: {exc}", err=True)
        return _exit(EXIT_USER_ERROR)
    except click.ClickException as exc:
        exc.show()
        return _exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("invariant-mr: aborted", err=True)
        return _exit(130)
    return _exit(code if isinstance(code, int) else 0)


def _exit(code: int) -> int:
    if __name__ == "__main__" or sys.argv and Path(sys.argv[0]).name == "invariant-mr":
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
