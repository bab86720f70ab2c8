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

from invariant_mr import __version__
from invariant_mr.errors import InputError
from invariant_mr.io.output import OutputDirectory, atomic_write_bytes, atomic_write_text
from invariant_mr.provenance import input_record, json_default, make_provenance
from invariant_mr.methods.registry import MethodContext, all_method_options, registered_methods

EXIT_USER_ERROR = 2


# ------------------------------------------------------------------ helpers
def _command_line() -> str:
    """The command as the user typed it (from `main`'s argv, recorded in the click context)."""
    root = click.get_current_context().find_root()
    argv = (root.obj or {}).get("argv", sys.argv[1:])
    return shlex.join(["invariant-mr", *argv])


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
        click.option("--show-env", is_flag=True, help="terminal table: also per-environment rows (files always have them)"),
    ]
    for dec in reversed(decorators):
        func = dec(func)
    return func


def _context(seed, alpha, cov_type, per_env, quiet, option_values) -> MethodContext:
    names = set(all_method_options())
    options = {k: v for k, v in option_values.items() if k in names and v is not None}
    return MethodContext(seed=seed, alpha=alpha, cov_type=cov_type, per_env=per_env, progress=not quiet, options=options)


def _summary(result, data, instruments_out: bool) -> str:
    """The terminal summary; --show-env (read from the running command) adds per-environment rows."""
    from invariant_mr.report.terminal import terminal_summary

    show_env = bool(click.get_current_context().params.get("show_env"))
    return terminal_summary(result, show_env=show_env, n=data.n, instruments_out=instruments_out)


def write_result_files(result, directory: Path, plot: bool = True) -> list[str]:
    """results.json, estimates.tsv and (optionally) forest.png into `directory`."""
    atomic_write_text(directory / "results.json", result.to_json())
    atomic_write_text(directory / "estimates.tsv", result.to_tsv())
    written = ["results.json", "estimates.tsv"]
    if plot:
        from invariant_mr.report.plots import figure_png_bytes, forest_plot

        atomic_write_bytes(directory / "forest.png", figure_png_bytes(forest_plot(result)))
        written.append("forest.png")
    return written


GENETIC_OPTION_NAMES = (
    "bfile", "npy", "npy_samples", "npy_variants", "pheno", "iid_col", "fid_col", "id_match", "extract", "region",
    "max_variant_missing", "max_sample_missing", "min_maf", "min_maf_per_env", "standardize_dosages",
    "min_env_samples", "dosage_of", "instruments_out", "report", "sumstats_out",
)


def genetic_input_options(func):
    """`run` options for genotype files (--bfile/--npy + --pheno), variant selection, QC, extra outputs, --config."""
    from invariant_mr.config import config_option_callback
    from invariant_mr.data import MIN_SAMPLES_PER_ENV
    from invariant_mr.io.qc import QCThresholds

    qc = QCThresholds()
    path = click.Path(path_type=Path)
    decorators = [
        click.option("--config", type=path, is_eager=True, expose_value=False, callback=config_option_callback,
                     help="TOML file of run options (keys = option names); command-line flags override it"),
        click.option("--bfile", type=path, default=None, help="PLINK 1 fileset prefix (PREFIX.bed/.bim/.fam)"),
        click.option("--npy", type=path, default=None, help="samples x variants dosage matrix (.npy, NaN = missing)"),
        click.option("--npy-samples", type=path, default=None, help="--npy row IDs: one IID (or 'FID IID') per line"),
        click.option("--npy-variants", type=path, default=None, help="--npy column IDs: one variant ID per line"),
        click.option("--pheno", type=path, default=None, help="phenotype table (CSV/TSV/Parquet) joined by sample ID"),
        click.option("--iid-col", default=None, help="IID column of --pheno [default: IID, #IID, iid, sample_id, ...]"),
        click.option("--fid-col", default=None, help="FID column of --pheno [default: FID or #FID if present]"),
        click.option("--id-match", type=click.Choice(["auto", "fid_iid", "iid", "row_order"]), default="auto",
                     show_default=True, help="join key: FID+IID when --pheno has an FID column, else IID"),
        click.option("--extract", type=path, default=None, help="file of variant IDs to analyse (first field per line)"),
        click.option("--region", default=None, help="analyse variants in CHROM or CHROM:START-END (1-based, inclusive)"),
        click.option("--geno", "max_variant_missing", type=click.FloatRange(0, 1), default=qc.max_variant_missing,
                     show_default=True, help="QC: remove variants with a missing-call rate above this"),
        click.option("--mind", "max_sample_missing", type=click.FloatRange(0, 1), default=qc.max_sample_missing,
                     show_default=True, help="QC: remove samples with a missing-call rate above this"),
        click.option("--maf", "min_maf", type=click.FloatRange(0, 0.5), default=qc.min_maf, show_default=True,
                     help="QC: remove variants with pooled minor-allele frequency below this"),
        click.option("--maf-env", "min_maf_per_env", type=click.FloatRange(0, 0.5), default=qc.min_maf_per_env,
                     show_default=True, help="QC: remove variants with MAF below this in any environment"),
        click.option("--standardize-dosages/--raw-dosages", default=qc.standardize, show_default=True,
                     help="QC: centre and scale every variant (pooled mean and SD)"),
        click.option("--min-env-samples", type=click.IntRange(2), default=MIN_SAMPLES_PER_ENV, show_default=True,
                     help="fewest samples an environment may have"),
        click.option("--dosage-of", type=click.Choice(["A1", "A2"]), default="A1", show_default=True,
                     help="PLINK allele counted by the dosage (.bim column 5 = A1)"),
        click.option("--instruments-out/--no-instruments-out", default=False, show_default=True,
                     help="write instruments.tsv (learned instrument values per sample)"),
        click.option("--report/--no-report", default=True, show_default=True, help="write report.html"),
        click.option("--sumstats-out", type=path, default=None,
                     help="also write per-variant summary statistics (TSV: variant, beta/se exposure and outcome, n)"),
    ]
    for dec in reversed(decorators):
        func = dec(func)
    return func


def write_run_extras(result, directory: Path, data, *, qc_tsv: str | None = None, instruments_out: bool = False,
                     report: bool = True, sumstats_out: Path | None = None,
                     sumstats_env_adjust: bool = True) -> list[str]:
    """qc.tsv, instruments.tsv and report.html (each optional) into `directory`."""
    from invariant_mr.report.learned_instruments import instruments_tsv
    from invariant_mr.report.html import write_report

    written = []
    if qc_tsv is not None:
        atomic_write_text(directory / "qc.tsv", qc_tsv)
        written.append("qc.tsv")
    if instruments_out:
        text = instruments_tsv(result, data.env, data.sample_ids)
        if text is not None:
            atomic_write_text(directory / "instruments.tsv", text)
            written.append("instruments.tsv")
    if report:
        write_report(directory / "report.html", result, env=data.env)
        written.append("report.html")
    if sumstats_out is not None:
        from invariant_mr.estimators.sumstats import summary_statistics

        # The same associations the summary-statistic methods use (--sumstats-env-adjust).
        summary_statistics(data, env_fixed_effects=sumstats_env_adjust).to_tsv(sumstats_out)
    return written


def _run_genetic(out, ctx, methods, quiet, env_col, exposure, outcome, covariates, g) -> None:
    """`run --bfile/--npy --pheno`: load, QC, estimate, write. All logic lives in `genetic_input`."""
    from invariant_mr.io.genetic_input import load_genetic_data
    from invariant_mr.methods.summary_level import sumstats_env_adjusted
    from invariant_mr.pipeline import run_analysis
    from invariant_mr.io.qc import QCThresholds

    if g["bfile"] is None and g["npy"] is None:
        raise InputError("give the data: --table FILE, or --bfile PREFIX (or --npy FILE) with --pheno FILE")
    if g["pheno"] is None:
        raise InputError("--pheno FILE is required with --bfile/--npy (the exposure, outcome and environment)")
    qc = QCThresholds(
        max_variant_missing=g["max_variant_missing"], max_sample_missing=g["max_sample_missing"],
        min_maf=g["min_maf"], min_maf_per_env=g["min_maf_per_env"], standardize=g["standardize_dosages"],
    )
    loaded = load_genetic_data(
        bfile=g["bfile"], npy=g["npy"], npy_samples=g["npy_samples"], npy_variants=g["npy_variants"],
        pheno=g["pheno"], env_col=env_col, exposure=exposure, outcome=outcome,
        covariates=[c.strip() for c in covariates.split(",") if c.strip()] if covariates else (),
        iid_col=g["iid_col"], fid_col=g["fid_col"], id_match=g["id_match"], extract=g["extract"],
        region=g["region"], qc=qc, min_samples_per_env=g["min_env_samples"], count_a1=g["dosage_of"] == "A1",
    )
    result = run_analysis(
        loaded.data, methods, ctx, command=_command_line(), parameters=dict(loaded.parameters),
        inputs=[dict(i) for i in loaded.inputs], extra_provenance=loaded.provenance(),
    )
    with out:
        written = write_result_files(result, out.path)
        written += write_run_extras(result, out.path, loaded.data, qc_tsv=loaded.qc.to_tsv(),
                                    instruments_out=g["instruments_out"], report=g["report"],
                                    sumstats_out=g["sumstats_out"],
                                    sumstats_env_adjust=sumstats_env_adjusted(ctx))
    if not quiet:
        click.echo(loaded.summary() + "\n")
        click.echo(_summary(result, loaded.data, g["instruments_out"]))
        click.echo(f"\nwrote {out.final}/" + ", ".join(written))


def _demo_plink(out, ctx, methods, quiet, n_envs: int, n_per_env: int, seed: int) -> None:
    """`demo --model balding-nichols`: simulate a PLINK fileset, then analyse it exactly as `run --bfile` does."""
    from invariant_mr.io.genetic_input import load_genetic_data
    from invariant_mr.pipeline import run_analysis
    from invariant_mr.simulation.genetic_dataset import GENOTYPE_PREFIX, PHENOTYPE_FILE, simulate_genetic, write_fileset_into

    sim = simulate_genetic("balding-nichols", n_envs=n_envs, n_per_env=n_per_env, n_variants=500, fst=0.1, seed=seed)
    with out:
        data_dir = out.path / "data"
        data_dir.mkdir()
        write_fileset_into(sim, data_dir, command=_command_line())
        loaded = load_genetic_data(
            bfile=data_dir / GENOTYPE_PREFIX, pheno=data_dir / PHENOTYPE_FILE, env_col="environment",
            exposure="exposure", outcome="outcome", covariates=("age", "sex"),
        )
        # The files were read from the staging directory; provenance names them where they will be.
        staged, final = str(out.path.resolve()), str(out.final.resolve())

        def at_final(record):
            return json.loads(json.dumps(record, default=json_default).replace(staged, final))

        result = run_analysis(
            loaded.data, methods, ctx, command=_command_line(), parameters=at_final(dict(loaded.parameters)),
            inputs=at_final([dict(i) for i in loaded.inputs]), extra_provenance=at_final(loaded.provenance()),
            truth={"theta": sim.theta},
        )
        written = ["data/"] + write_result_files(result, out.path)
        written += write_run_extras(result, out.path, loaded.data, qc_tsv=loaded.qc.to_tsv(), instruments_out=True)
    if not quiet:
        click.echo(f"{sim.summary()}\n")
        click.echo(loaded.summary() + "\n")
        click.echo(_summary(result, loaded.data, True))
        click.echo(f"\nwrote {out.final}/" + ", ".join(written))


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
    @click.option("--table", "table", type=click.Path(path_type=Path), default=None, help="TSV/CSV/Parquet with one row per sample (or use --bfile/--npy with --pheno)")
    @click.option("--env", "--env-col", "env_col", required=True, help="environment column (ancestry, cohort, site)")
    @click.option("--exposure", required=True, help="exposure column")
    @click.option("--outcome", required=True, help="outcome column")
    @click.option("--instruments", default=None, help="--table: instrument columns, names or globs, comma-separated (e.g. 'z*')")
    @click.option("--covariates", "--covar", "covariates", default=None, help="exogenous covariate columns, comma-separated names or globs (e.g. 'age,sex,PC*')")
    @click.option("--id-column", default="iid", show_default=True, help="sample ID column, if present")
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="output directory (must not exist)")
    @analysis_options
    @genetic_input_options
    def run(table, env_col, exposure, outcome, instruments, covariates, id_column, out_dir, methods, seed, alpha,
            cov_type, per_env, overwrite, quiet, **option_values):
        """Estimate the causal effect from a table of instruments, exposure, outcome and environment,
        or from genotypes (--bfile PLINK prefix or --npy matrix) joined to a --pheno table.

        Options can also come from --config FILE.toml; flags on the command line override it.
        """
        from invariant_mr.methods.summary_level import sumstats_env_adjusted
        from invariant_mr.pipeline import run_analysis
        from invariant_mr.io.tables import mrdata_from_table, read_table

        out = OutputDirectory(out_dir, overwrite)
        out.check()
        ctx = _context(seed, alpha, cov_type, per_env, quiet, option_values)
        genetic = {name: option_values.pop(name) for name in GENETIC_OPTION_NAMES}
        if table is None:
            _run_genetic(out, ctx, methods, quiet, env_col, exposure, outcome, covariates, genetic)
            return
        if genetic["bfile"] is not None or genetic["npy"] is not None or genetic["pheno"] is not None:
            raise InputError("--table cannot be combined with --bfile, --npy or --pheno: give one data source")
        if not instruments:
            raise InputError("--instruments is required with --table (e.g. --instruments 'z*')")
        data = mrdata_from_table(
            read_table(table), env=env_col, exposure=exposure, outcome=outcome,
            instruments=instruments, covariates=covariates, id_column=id_column, path=table,
        )
        params = {"table": str(table), "env": env_col, "exposure": exposure, "outcome": outcome,
                  "instruments": instruments, "covariates": covariates}
        result = run_analysis(data, methods, ctx, command=_command_line(), parameters=params,
                              inputs=input_record([table]))
        with out:
            written = write_result_files(result, out.path)
            written += write_run_extras(result, out.path, data, instruments_out=genetic["instruments_out"],
                                        sumstats_out=genetic["sumstats_out"],
                                        sumstats_env_adjust=sumstats_env_adjusted(ctx),
                                        report=genetic["report"])
        if not quiet:
            click.echo(_summary(result, data, genetic["instruments_out"]))
            click.echo(f"\nwrote {out_dir}/" + ", ".join(written))

    @cli.command()
    @click.option("--model", type=click.Choice(["paper", "balding-nichols"]), default="paper", show_default=True,
                  help="paper: the paper's simulator (table data); balding-nichols: a simulated PLINK fileset "
                       "(F_ST 0.1, 500 variants) written to OUT/data and read back as `run --bfile` would")
    @click.option("--setting", type=click.Choice(list(_paper_settings())), default="linear", show_default=True,
                  help="paper simulation setting (mixing of the latent blocks)")
    @click.option("--envs", "n_envs", type=click.IntRange(2, 3), default=None,
                  help="environments [default: 2 for paper, 3 for balding-nichols]")
    @click.option("--n-per-env", type=click.IntRange(100), default=None,
                  help="samples per environment [default: 3000 for paper, 2000 for balding-nichols]")
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("invariant-mr-demo"), show_default=True)
    @analysis_options
    def demo(model, setting, n_envs, n_per_env, out_dir, methods, seed, alpha, cov_type, per_env, overwrite, quiet,
             **option_values):
        """Simulate a built-in data set, run every default method and compare with the truth."""
        from invariant_mr.pipeline import run_analysis

        out = OutputDirectory(out_dir, overwrite=True)
        out.check()
        ctx = _context(seed, alpha, cov_type, per_env, quiet, option_values)
        if model == "balding-nichols":
            _demo_plink(out, ctx, methods, quiet, n_envs or 3, n_per_env or 2000, seed)
            return
        from invariant_mr.simulation import simulate_paper

        n_envs, n_per_env = n_envs or 2, n_per_env or 3000
        sim = simulate_paper(setting, n_envs=n_envs, n_per_env=n_per_env, seed=seed)
        result = run_analysis(
            sim.data, methods, ctx, command=_command_line(),
            parameters={"simulation": sim.params}, truth=sim.truth_dict(),
        )
        with out:
            written = write_result_files(result, out.path)
            written += write_run_extras(result, out.path, sim.data, instruments_out=True)
        if not quiet:
            click.echo(f"Simulated paper setting '{setting}', K={n_envs}, n={n_per_env} per environment; true effect {sim.theta:g}\n")
            click.echo(_summary(result, sim.data, True))
            click.echo(f"\nwrote {', '.join(f'{out_dir}/{name}' for name in written)}")

    @cli.command()
    @click.option("--model", type=click.Choice(["paper", "balding-nichols", "coalescent", "assortative"]), default="paper", show_default=True)
    @click.option("--setting", type=click.Choice(list(_paper_settings())), default="linear", show_default=True, help="paper model: mixing setting")
    @click.option("--envs", "n_envs", type=click.IntRange(2), default=None, help="number of environments / populations [default: 2 for paper, 3 for balding-nichols and assortative; coalescent: every population of the demography]")
    @click.option("--n-per-env", type=click.IntRange(2), default=3000, show_default=True)
    @click.option("--theta", type=float, default=1.0, show_default=True, help="true causal effect")
    @click.option("--n-variants", type=click.IntRange(1), default=500, show_default=True, help="genetic models: number of variants")
    @click.option("--fst", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True, help="balding-nichols: F_ST")
    @click.option("--demography", default="OutOfAfrica_3G09", show_default=True, help="coalescent: stdpopsim HomSap model")
    @click.option("--length-mb", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True, help="coalescent: simulated Mb")
    @click.option("--generations", type=click.IntRange(0), default=5, show_default=True, help="assortative: generations of assortative mating")
    @click.option("--admixture", type=click.FloatRange(0, 1, max_open=True), default=None, help="balding-nichols: mean share of ancestry from other populations [default: 0.1]")
    @click.option("--mating-correlation", type=click.FloatRange(0, 1, max_open=True), default=None, help="assortative: partner phenotype correlation in the last population (the first mates at random) [default: 0.5]")
    @click.option("--mating-traits", type=click.Choice(["cross", "exposure"]), default=None, help="assortative: pair one partner's exposure with the other's outcome (cross) or exposure with exposure [default: cross]")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
    @click.option("--overwrite", is_flag=True, help="replace an existing output directory")
    def simulate(model, setting, n_envs, n_per_env, theta, n_variants, fst, demography, length_mb, generations,
                 admixture, mating_correlation, mating_traits, seed, out_dir, overwrite):
        """Write a simulated data set with its truth (table for `paper`, PLINK fileset otherwise)."""
        out = OutputDirectory(out_dir, overwrite)
        out.check()
        if model == "paper":
            from invariant_mr.simulation import simulate_paper
            from invariant_mr.io.tables import mrdata_to_table

            sim = simulate_paper(setting, n_envs=n_envs or 2, n_per_env=n_per_env, theta=theta, seed=seed)
            truth = {**sim.truth_dict(), "provenance": make_provenance(
                command=_command_line(), parameters={"model": model, **sim.params, "theta": theta}, seed=seed)}
            with out:
                atomic_write_text(out.path / "data.tsv", mrdata_to_table(sim.data).to_csv(sep="\t", index=False))
                atomic_write_text(out.path / "truth.json", json.dumps(truth, indent=2, default=json_default))
            click.echo(f"wrote {out_dir}/data.tsv ({sim.data.n} samples, {sim.data.p} instruments) and truth.json")
            return
        from invariant_mr.simulation.genetic_dataset import simulate_genetic, write_fileset_into

        params = dict(n_envs=n_envs, n_per_env=n_per_env, n_variants=n_variants, fst=fst, theta=theta,
                      demography=demography, length_mb=length_mb, generations=generations, admixture=admixture,
                      mating_correlation=mating_correlation, mating_traits=mating_traits, seed=seed)
        sim = simulate_genetic(model, **params)
        with out:
            write_fileset_into(sim, out.path, command=_command_line())
        click.echo(f"{sim.summary()}\nwrote {out_dir}/genotypes.bed/.bim/.fam, phenotypes.tsv and truth.json")

    return cli


def _paper_settings():
    from invariant_mr.simulation.paper import PAPER_SETTINGS

    return PAPER_SETTINGS


def main(argv: list[str] | None = None) -> int:
    cli = build_cli()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        code = cli.main(args=argv, prog_name="invariant-mr", standalone_mode=False, obj={"argv": argv})
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
