"""`invariant-mr run`: a table, or genotypes joined to a phenotype file, in; estimates, report and provenance out."""

from __future__ import annotations

from pathlib import Path

import click

from invariant_mr.cli.common import (
    GENETIC_OPTION_NAMES,
    SectionedCommand,
    analysis_options,
    command_line,
    genetic_input_options,
    input_paths,
    method_context,
    option,
    write_result_files,
    write_run_extras,
)
from invariant_mr.errors import InputError
from invariant_mr.io.output import OutputDirectory
from invariant_mr.provenance import input_record


@click.command(cls=SectionedCommand)
@option("--table", "table", section="Input", type=click.Path(path_type=Path), default=None, help="TSV/CSV/Parquet with one row per sample (or use --bfile/--npy with --pheno)")
@option("--env", "--env-col", "env_col", section="Input", required=True, help="environment column (ancestry, cohort, site)")
@option("--exposure", section="Input", required=True,
        help="exposure column; several, comma-separated, for multivariable MR (--table input: tsls_all_env, mv_ivw, mv_egger)")
@option("--outcome", section="Input", required=True, help="outcome column")
@option("--instruments", section="Input", default=None, help="--table: instrument columns, names or globs, comma-separated (e.g. 'z*')")
@option("--covariates", "--covar", "covariates", section="Input", default=None, help="exogenous covariate columns, comma-separated names or globs (e.g. 'age,sex,PC*')")
@option("--id-column", section="Input", default="iid", show_default=True, help="sample ID column, if present")
@option("--out", "out_dir", type=click.Path(path_type=Path), required=True, section="Output",
      help="output directory (must not exist, or use --overwrite to replace a previous run's output)")
@analysis_options
@genetic_input_options
def run(table, env_col, exposure, outcome, instruments, covariates, id_column, out_dir, methods, seed, alpha,
        cov_type, per_env, overwrite, quiet, **option_values):
    """Estimate the causal effect from a table of instruments, exposure, outcome and environment,
    or from genotypes (--bfile PLINK prefix or --npy matrix) joined to a --pheno table.

    Options can also come from --config FILE.toml; flags on the command line override it.
    """
    from invariant_mr.io.phenotypes import parse_missing_codes
    from invariant_mr.io.tables import read_table, table_data
    from invariant_mr.methods.summary_level import sumstats_env_adjusted
    from invariant_mr.pipeline import run_analysis

    if outcome in [e.strip() for e in exposure.split(",")]:
        raise InputError(f"--exposure and --outcome both name {outcome!r}: give two different traits")
    genetic = {name: option_values.pop(name) for name in GENETIC_OPTION_NAMES}
    if "," in exposure and genetic["sumstats_out"] is not None:
        raise InputError("--sumstats-out writes one exposure's associations; give one --exposure")
    ctx = method_context(seed, alpha, cov_type, per_env, quiet, option_values)
    out = OutputDirectory(out_dir, overwrite, inputs=input_paths(table, genetic))
    out.check()
    if table is None:
        _run_genetic(out, ctx, methods, quiet, env_col, exposure, outcome, covariates, genetic)
        return
    if genetic["bfile"] is not None or genetic["npy"] is not None or genetic["pheno"] is not None:
        raise InputError("--table cannot be combined with --bfile, --npy or --pheno: give one data source")
    if not instruments:
        raise InputError("--instruments is required with --table (e.g. --instruments 'z*')")
    codes = parse_missing_codes(genetic["missing_code"])
    data, dropped = table_data(
        read_table(table, missing_codes=codes), env=env_col, exposure=exposure, outcome=outcome,
        instruments=instruments, covariates=covariates, id_column=id_column, path=table,
    )
    params = {"table": str(table), "env": env_col, "exposure": exposure, "outcome": outcome,
              "instruments": instruments, "covariates": covariates, "missing_codes": list(codes),
              "rows_dropped": dropped}
    if dropped and not quiet:
        click.echo(f"dropped {sum(dropped.values())} row(s) with missing values (codes: {', '.join(codes) or 'none'}"
                   "; empty and NA always): " + ", ".join(f"{why}: {n}" for why, n in dropped.items()))
    result = run_analysis(data, methods, ctx, command=command_line(), parameters=params,
                          inputs=input_record([table]))
    with out:
        written = write_result_files(result, out.path)
        written += write_run_extras(result, out.path, data, instruments_out=genetic["instruments_out"],
                                    sumstats_out=genetic["sumstats_out"],
                                    sumstats_env_adjust=sumstats_env_adjusted(ctx),
                                    report=genetic["report"])
    if not quiet:
        click.echo(result.summary())
        click.echo(f"\nwrote {out_dir}/" + ", ".join(written))


def _run_genetic(out, ctx, methods, quiet, env_col, exposure, outcome, covariates, g) -> None:
    """`run --bfile/--npy --pheno`: load, QC, estimate, write. All logic lives in `genetic_input`."""
    from invariant_mr.io.genetic_input import load_genetic_data
    from invariant_mr.io.phenotypes import parse_missing_codes
    from invariant_mr.io.qc import QCThresholds
    from invariant_mr.methods.summary_level import sumstats_env_adjusted
    from invariant_mr.pipeline import run_analysis

    if "," in exposure:
        raise InputError("several exposures (--exposure a,b) are supported with --table input; give one with --bfile/--npy")
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
        missing_codes=parse_missing_codes(g["missing_code"]),
    )
    result = run_analysis(
        loaded.data, methods, ctx, command=command_line(), parameters=dict(loaded.parameters),
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
        click.echo(result.summary())
        click.echo(f"\nwrote {out.final}/" + ", ".join(written))
