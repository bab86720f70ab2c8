"""`invariant-mr run`: a table, or genotypes joined to a phenotype file, in; estimates, report and provenance out."""

from __future__ import annotations

from pathlib import Path

import click

from invariant_mr.cli.common import (
    GENETIC_OPTION_NAMES,
    SCALE_OPTION_NAMES,
    SectionedCommand,
    analysis_options,
    command_line,
    genetic_input_options,
    input_paths,
    method_context,
    option,
    resolve_cov_type,
    scale_options,
    terminal_text,
    write_result_files,
    write_run_extras,
)
from invariant_mr.errors import InputError
from invariant_mr.io.output import OutputDirectory, check_output_file
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
@option("--cluster", section="Input", default=None,
        help="column of cluster labels of related samples (e.g. family ID): cluster-robust SEs, F, AR sets and "
             "diagnostics (implies --cov-type cluster); rows without a label are dropped and counted")
@option("--family-col", section="Input", default="auto", show_default=True,
        help="family IDs of sibling/trio samples (a --pheno/--table column, or FID: the .fam/.psam FID when "
             "--pheno has none): adds the within-family methods (family fixed effects) to the defaults and "
             "clusters every method's SEs by family (the --cluster of these labels). auto: FID when the "
             "PLINK .fam/.psam FIDs name families (shared by 2 to 20 samples); none: ignore families")
@option("--pcs-from", section="Input", type=click.Path(path_type=Path), default=None,
        help="genome-wide genotype fileset (PLINK prefix, .bgen, .vcf, .npy) whose top --n-pcs PCs (streamed "
             "randomised SVD) join the covariates as PC1.. by IID; every method adjusts for them, tsls_pcs uses "
             "them instead of PCs of the instruments")
@option("--pcs-ld-r2", section="Input", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
        help="--pcs-from: LD-prune first (greedy, 50-variant window, this r^2) [default: every variant]")
@option("--outcome-type", section="Analysis", type=click.Choice(["continuous", "binary"]), default="continuous",
        show_default=True,
        help="binary: a 0/1 outcome; runs the logistic IV methods (tsri_*, tsps_*) and reports log odds ratios")
@option("--instruments-from", section="Input", type=click.Path(path_type=Path), default=None,
        help="directory written by `invariant-mr apply` (or its instruments.tsv): estimate with those instruments, "
             "joined to --table or --pheno by sample ID (default method: tsls_external)")
@option("--out", "out_dir", type=click.Path(path_type=Path), required=True, section="Output",
      help="output directory (must not exist, or use --overwrite to replace a previous run's output)")
@analysis_options
@genetic_input_options
@scale_options
def run(table, env_col, exposure, outcome, instruments, covariates, id_column, cluster, family_col, pcs_from,
        pcs_ld_r2, outcome_type,
        instruments_from, out_dir, methods, seed, alpha, cov_type, per_env, overwrite, quiet, **option_values):
    """Estimate the causal effect from a table of instruments, exposure, outcome and environment,
    or from genotypes (--bfile, --pfile, --bgen, --vcf or --npy) joined to a --pheno table.

    Options can also come from --config FILE.toml; flags on the command line override it.
    """
    from invariant_mr.io.phenotypes import parse_missing_codes
    from invariant_mr.io.tables import read_table, table_data
    from invariant_mr.methods.summary_level import sumstats_env_adjusted
    from invariant_mr.pipeline import run_analysis

    if outcome in [e.strip() for e in exposure.split(",")]:
        raise InputError(f"--exposure and --outcome both name {outcome!r}: give two different traits")
    genetic = {name: option_values.pop(name) for name in GENETIC_OPTION_NAMES + SCALE_OPTION_NAMES}
    family_col = resolve_family_col(family_col, cluster, genetic, quiet)
    cluster, methods = family_design(family_col, cluster, methods, outcome_type)
    if "," in exposure and genetic["sumstats_out"] is not None:
        raise InputError("--sumstats-out writes one exposure's associations; give one --exposure")
    ctx = method_context(seed, alpha, resolve_cov_type(cov_type, cluster), per_env, quiet, option_values)
    methods = run_methods(methods, outcome_type, external=instruments_from is not None)
    out = OutputDirectory(out_dir, overwrite, inputs=input_paths(table, genetic) + (
        [Path(instruments_from)] if instruments_from is not None else []))
    out.check()
    if genetic["sumstats_out"] is not None:
        check_output_file(genetic["sumstats_out"], overwrite=overwrite, option="--sumstats-out", out_dir=out_dir,
                          inputs=input_paths(table, genetic) + [instruments_from])
    if table is not None or instruments_from is not None:
        given = [f"--{k}" for k in ("scheduler", "workers") if genetic[k] is not None]
        if given or genetic["streaming"] == "on":
            raise InputError(f"{', '.join(given) or '--streaming on'} streams genotype files "
                             "(--bfile, --pfile, --bgen, --vcf, --npy); this run reads a table")
    if pcs_from is not None and (table is not None or instruments_from is not None):
        raise InputError("--pcs-from joins PCs to genotype input (--bfile/--pfile/--bgen/--vcf/--npy with --pheno); "
                         "with --table, add the PCs as columns and give them to --covariates")
    genetic["pcs"] = None if pcs_from is None else (pcs_from, pcs_ld_r2, int(option_values.get("n_pcs") or 10))
    if instruments_from is not None:
        _run_external(out, ctx, methods, quiet, table, env_col, exposure, outcome, covariates, id_column, cluster,
                      outcome_type, instruments, instruments_from, genetic)
        return
    if table is None:
        _run_genetic(out, ctx, methods, quiet, env_col, exposure, outcome, covariates, cluster, outcome_type,
                     genetic)
        return
    if any(genetic[k] is not None for k in GENOTYPE_FLAGS) or genetic["pheno"] is not None:
        raise InputError("--table cannot be combined with genotype files (--bfile, --pfile, --bgen, --vcf, --npy) "
                         "or --pheno: give one data source")
    if not instruments:
        raise InputError("--instruments is required with --table (e.g. --instruments 'z*')")
    refuse_genotype_filters(genetic, "--table")
    codes = parse_missing_codes(genetic["missing_code"])
    data, dropped = table_data(
        read_table(table, missing_codes=codes), env=env_col, exposure=exposure, outcome=outcome,
        instruments=instruments, covariates=covariates, id_column=id_column, path=table, cluster=cluster,
    )
    read = data
    data = check_outcome_type(data, outcome_type)
    params = {"table": str(table), "env": env_col, "exposure": exposure, "outcome": outcome,
              "instruments": instruments, "covariates": covariates, "missing_codes": list(codes),
              "cluster": cluster, "outcome_type": outcome_type, "outcome_coding": outcome_coding(read, data),
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
        click.echo(terminal_text(result, data, genetic["instruments_out"]))
        click.echo(f"\nwrote {out_dir}/" + ", ".join(written))


def resolve_family_col(family_col: str | None, cluster: str | None, genetic: dict, quiet: bool) -> str | None:
    """`--family-col auto` (the default): "FID" when the PLINK sample file's FIDs name families.

    Siblings and trios share genotypes and family environment: ignoring that understates every SE, and
    the within-family design, the one that ancestry, assortative mating and dynastic effects cannot
    confound, is then left out. A PLINK fileset that groups samples into families says so in its FIDs.
    """
    if family_col is None or family_col.lower() == "none":
        return None
    if family_col.lower() != "auto":
        return family_col
    if cluster is not None or (genetic.get("bfile") is None and genetic.get("pfile") is None):
        return None
    from invariant_mr.io.genetic_input import MAX_FAMILY_SIZE, family_sizes, plink_family_ids

    fids = plink_family_ids(bfile=genetic.get("bfile"), pfile=genetic.get("pfile"))
    sizes = None if fids is None else family_sizes(fids)
    if sizes is None:
        return None
    if not quiet:
        click.echo(f"families: the FIDs group {int((sizes >= 2).sum())} families of 2-{int(sizes.max())} samples "
                   f"(at most {MAX_FAMILY_SIZE}): SEs clustered by family and within_family added "
                   "(--family-col none to ignore them)")
    return "FID"


def family_design(family_col: str | None, cluster: str | None, methods: str | None,
                  outcome_type: str) -> tuple[str | None, str | None]:
    """(cluster column, methods) for `--family-col`: the families are the clusters, and the default
    methods gain `within_family`; an explicit --methods list is kept as given."""
    if family_col is None:
        return cluster, methods
    if cluster is not None and cluster != family_col:
        raise InputError(f"--family-col {family_col} and --cluster {cluster}: the families are the clusters; "
                         "give one of them")
    if outcome_type == "binary" or methods not in (None, "all"):
        return family_col, methods
    from invariant_mr.methods.registry import resolve_methods

    return family_col, ",".join([s.name for s in resolve_methods(None)] + ["within_family"])


#: The genotype-file flags (exactly one with --pheno).
GENOTYPE_FLAGS = ("bfile", "pfile", "bgen", "vcf", "npy")
#: Variant and sample filters that only genotype files take (PLINK's habits).
GENOTYPE_FILTERS = {"extract": "--extract", "exclude": "--exclude", "chromosomes": "--chr", "region": "--region",
                    "keep": "--keep", "remove": "--remove", "min_info": "--min-info"}


def refuse_genotype_filters(g, source: str) -> None:
    """A filter given with table input would be silently ignored: say so instead."""
    given = [flag for key, flag in GENOTYPE_FILTERS.items() if g.get(key) is not None]
    if given:
        raise InputError(f"{', '.join(given)} filter genotype files (--bfile, --pfile, --bgen, --vcf, --npy); "
                         f"with {source} choose the columns and rows in the table itself")


def run_methods(methods: str | None, outcome_type: str, *, external: bool) -> str | None:
    """The --methods to run: binary outcomes get the logistic IV methods (others are refused),
    --instruments-from defaults to tsls_external."""
    from invariant_mr.methods.options import BINARY
    from invariant_mr.methods.registry import registered_methods

    specs = registered_methods()
    binary = [name for name, spec in specs.items() if spec.family == BINARY]
    requested = None if methods in (None, "all") else [m.strip() for m in methods.split(",") if m.strip()]
    if outcome_type == "binary":
        if requested is None:
            chosen = [m for m in binary if m.endswith("_all_env")] if external else binary
            return ",".join(chosen)
        linear = [m for m in requested if m in specs and m not in binary]
        if linear:
            raise InputError(
                f"--outcome-type binary: {', '.join(linear)} fit a linear outcome model; "
                f"use the logistic IV methods: {', '.join(binary)}"
            )
        return methods
    if requested is not None:
        wrong = [m for m in requested if m in binary]
        if wrong:
            raise InputError(f"{', '.join(wrong)} model a 0/1 outcome: add --outcome-type binary")
        return methods
    return "tsls_external" if external else methods


def outcome_coding(read, used) -> str | None:
    """The provenance note for a recoded outcome (`check_outcome_type` returns new data only when it recodes)."""
    return "1/2 (PLINK: 2 = case)" if used is not read else None


def check_outcome_type(data, outcome_type: str):
    """The data with a binary outcome coded 0/1: PLINK's case/control coding 1/2 (2 = case) is recoded, and
    said so; a continuous run on a two-valued outcome gets a warning (it is probably case/control)."""
    import numpy as np

    values = np.unique(np.asarray(data.outcome, dtype=float))
    if outcome_type == "binary":
        from dataclasses import replace

        from invariant_mr.methods.binary import check_binary_outcome

        if values.size == 2 and set(values.tolist()) == {1.0, 2.0}:
            click.echo("note: the outcome is coded 1/2 as PLINK codes case/control; read 2 as case (1) and "
                       "1 as control (0)", err=True)
            data = replace(data, outcome=np.asarray(data.outcome, dtype=float) - 1.0)
        elif set(values.tolist()) >= {1.0, 2.0} and 0.0 in values:
            raise InputError("--outcome-type binary: the outcome holds 0, 1 and 2; in PLINK's 1/2 coding 0 means "
                             "missing: recode it to 0/1, or give 0 as --missing-code")
        check_binary_outcome(data.outcome)
    elif values.size == 2:
        click.echo(f"warning: the outcome takes only two values ({values[0]:g}, {values[1]:g}): if it is "
                   "case/control, add --outcome-type binary (a linear fit on it estimates a risk difference)",
                   err=True)
    return data


def _run_external(out, ctx, methods, quiet, table, env_col, exposure, outcome, covariates, id_column, cluster,
                  outcome_type, instruments, instruments_from, g) -> None:
    """`run --instruments-from DIR` with --table or --pheno: instruments joined by sample ID."""
    from invariant_mr.io.external_instruments import (
        join_external_instruments,
        read_external_instruments,
    )
    from invariant_mr.io.phenotypes import (
        IID_CANDIDATES,
        parse_missing_codes,
        read_phenotype_table,
    )
    from invariant_mr.io.tables import read_table, table_data
    from invariant_mr.pipeline import run_analysis

    if any(g[k] is not None for k in GENOTYPE_FLAGS):
        raise InputError("--instruments-from replaces the genotypes: give --table or --pheno, not genotype files")
    refuse_genotype_filters(g, "--instruments-from")
    if instruments:
        raise InputError("--instruments-from gives the instruments: drop --instruments")
    if (table is None) == (g["pheno"] is None):
        raise InputError("--instruments-from needs the phenotypes from exactly one of --table or --pheno")
    codes = parse_missing_codes(g["missing_code"])
    source = table if table is not None else g["pheno"]
    if table is not None:
        frame, id_col = read_table(table, missing_codes=codes), id_column
    else:
        frame = read_phenotype_table(Path(source), codes)
        id_col = g["iid_col"] or next((c for c in IID_CANDIDATES if c in frame.columns), None)
        if id_col is None:
            raise InputError(f"{source} has no sample ID column (looked for {', '.join(IID_CANDIDATES)}); use --iid-col")
    ext, names, alignment = read_external_instruments(instruments_from)
    joined, n_without = join_external_instruments(frame, id_col, ext, names, str(source))
    data, dropped = table_data(
        joined, env=env_col, exposure=exposure, outcome=outcome, instruments=names, covariates=covariates,
        id_column=id_col, path=source, cluster=cluster,
    )
    if n_without:
        dropped = {"no external instruments for the sample ID": n_without, **dropped}
    data = check_outcome_type(data, outcome_type)
    params = {"table" if table is not None else "pheno": str(source), "instruments_from": str(instruments_from),
              "env": env_col, "exposure": exposure, "outcome": outcome, "covariates": covariates,
              "cluster": cluster, "outcome_type": outcome_type, "rows_dropped": dropped}
    if dropped and not quiet:
        click.echo("dropped " + ", ".join(f"{why}: {n}" for why, n in dropped.items()))
    inst_file = Path(instruments_from) / "instruments.tsv" if Path(instruments_from).is_dir() else Path(instruments_from)
    result = run_analysis(
        data, methods, ctx, command=command_line(), parameters=params, inputs=input_record([Path(source), inst_file]),
        extra_provenance={"external_instruments": {"alignment": alignment.get("alignment"), "map": alignment.get("map")}},
    )
    with out:
        written = write_result_files(result, out.path)
        written += write_run_extras(result, out.path, data, report=g["report"])
    if not quiet:
        click.echo(terminal_text(result, data, False))
        click.echo(f"\nwrote {out.final}/" + ", ".join(written))


def _run_genetic(out, ctx, methods, quiet, env_col, exposure, outcome, covariates, cluster, outcome_type, g) -> None:
    """`run --bfile/--pfile/--bgen/--vcf/--npy --pheno`: load, QC, estimate, write. All logic lives in
    `genetic_input` (loading) and `pipeline` (the methods, streamed or in memory)."""
    from invariant_mr.io.genetic_input import load_genetic_data
    from invariant_mr.io.phenotypes import parse_missing_codes
    from invariant_mr.io.qc import QCThresholds
    from invariant_mr.methods.summary_level import sumstats_env_adjusted
    from invariant_mr.pipeline import run_analysis

    if "," in exposure:
        raise InputError("several exposures (--exposure a,b) are supported with --table input; give one with genotype files")
    if all(g[k] is None for k in GENOTYPE_FLAGS):
        raise InputError("give the data: --table FILE, or genotypes (--bfile PREFIX, --pfile PREFIX, --bgen FILE, "
                         "--vcf FILE or --npy FILE) with --pheno FILE")
    if g["pheno"] is None:
        raise InputError("--pheno FILE is required with genotype files (the exposure, outcome and environment)")
    streaming = g["streaming"]
    if g["scheduler"] is not None and g["workers"] is not None:
        raise InputError("--scheduler uses a running Dask cluster and --workers starts one: give one of them")
    dask_wanted = g["scheduler"] is not None or g["workers"] is not None
    if dask_wanted:
        if streaming == "off":
            raise InputError("--scheduler/--workers run the streamed passes: drop --streaming off")
        streaming = "on"
    extra_covariates, pcs_record = None, None
    if g["pcs"] is not None:
        extra_covariates, pcs_record = genome_wide_pc_table(*g["pcs"], seed=ctx.seed, quiet=quiet)
    qc = QCThresholds(
        max_variant_missing=g["max_variant_missing"], max_sample_missing=g["max_sample_missing"],
        min_maf=g["min_maf"], min_maf_per_env=g["min_maf_per_env"], standardize=g["standardize_dosages"],
    )
    loaded = load_genetic_data(
        bfile=g["bfile"], pfile=g["pfile"], bgen=g["bgen"], sample=g["sample"], vcf=g["vcf"],
        vcf_dosage=g["vcf_dosage"], min_info=g["min_info"],
        npy=g["npy"], npy_samples=g["npy_samples"], npy_variants=g["npy_variants"],
        pheno=g["pheno"], env_col=env_col, exposure=exposure, outcome=outcome,
        covariates=[c.strip() for c in covariates.split(",") if c.strip()] if covariates else (),
        iid_col=g["iid_col"], fid_col=g["fid_col"], id_match=g["id_match"], extract=g["extract"],
        region=g["region"], exclude=g["exclude"], chromosomes=g["chromosomes"], keep=g["keep"], remove=g["remove"],
        qc=qc, min_samples_per_env=g["min_env_samples"], count_a1=g["dosage_of"] == "A1",
        missing_codes=parse_missing_codes(g["missing_code"]), cluster=cluster,
        streaming=streaming, memory_gb=g["memory_gb"], subsample_rows=g["subsample_rows"], seed=ctx.seed,
        extra_covariates=extra_covariates,
    )
    coded = check_outcome_type(loaded.data, outcome_type)
    coded_12 = coded is not loaded.data
    if coded_12:
        from dataclasses import replace

        loaded = replace(loaded, data=coded)
    with dask_client(g["scheduler"], g["workers"]) as client:
        data = loaded.data if client is None else loaded.data.with_client(client)
        result = run_analysis(
            data, methods, ctx, command=command_line(),
            parameters={**loaded.parameters, "outcome_type": outcome_type,
                        "outcome_coding": "1/2 (PLINK: 2 = case)" if coded_12 else None,
                        "scheduler": g["scheduler"], "workers": g["workers"],
                        **({"pcs_from": pcs_record} if pcs_record else {})},
            inputs=[dict(i) for i in loaded.inputs], extra_provenance=loaded.provenance(),
        )
        with out:
            written = write_result_files(result, out.path)
            written += write_run_extras(result, out.path, data, qc_tsv=loaded.qc.to_tsv(),
                                        instruments_out=g["instruments_out"], report=g["report"],
                                        sumstats_out=g["sumstats_out"],
                                        sumstats_env_adjust=sumstats_env_adjusted(ctx),
                                        variants=loaded.variants)
    if not quiet:
        click.echo(loaded.summary() + "\n")
        click.echo(terminal_text(result, loaded.data, g["instruments_out"]))
        click.echo(f"\nwrote {out.final}/" + ", ".join(written))


def genome_wide_pc_table(path, ld_r2, k: int, *, seed: int, quiet: bool):
    """(IID + PC1..PCk table, provenance record) of `--pcs-from`."""
    import time

    import pandas as pd

    from invariant_mr.estimators.genotype_pcs import pcs_from_fileset

    start = time.perf_counter()
    samples, pcs = pcs_from_fileset(path, k, ld_r2=ld_r2, seed=seed)
    table = pd.DataFrame(pcs.scores, columns=[f"PC{j + 1}" for j in range(k)])
    table.insert(0, "IID", samples["IID"].astype(str).to_numpy())
    record = {"fileset": str(path), "n_pcs": k, "ld_prune_r2": ld_r2, "n_samples": int(len(table)),
              "n_variants_used": int(pcs.variant_mask.sum()), "passes": pcs.passes, "power_iterations": pcs.n_iter,
              "variance_explained": [round(float(v), 6) for v in pcs.variance_explained],
              "seconds": round(time.perf_counter() - start, 2)}
    if not quiet:
        click.echo(f"genome-wide PCs from {path}: {k} PCs of {record['n_variants_used']} variants, "
                   f"{record['n_samples']} samples, {pcs.passes} passes in {record['seconds']} s")
    return table, record


#: What a local worker imports as it starts: what unpickling the streamed row sources and the
#: statistics' kernels needs (pandas and scipy among them), so that the first pass does not wait.
WORKER_PRELOAD = ("invariant_mr.io.streamed_genotypes", "invariant_mr.estimators.sufficient_stats")


class dask_client:
    """`--scheduler ADDRESS`: a client of that running cluster; `--workers N`: a local cluster of N
    single-threaded worker processes, closed on exit; neither: None (the passes run here)."""

    def __init__(self, scheduler: str | None, workers: int | None):
        self.scheduler, self.workers = scheduler, workers
        self.client = self.cluster = None

    def __enter__(self):
        if self.scheduler is None and self.workers is None:
            return None
        try:
            from distributed import Client

            from invariant_mr.passes.dask_passes import local_cluster
        except ImportError:  # pragma: no cover - dask[distributed] is a dependency
            raise InputError("--scheduler/--workers need dask.distributed (pip install 'dask[distributed]')") from None
        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise InputError(f"--scheduler {self.scheduler}: cannot connect ({exc})") from None
        else:
            self.cluster, self.client = local_cluster(self.workers, preload=WORKER_PRELOAD)
        return self.client

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        return False
