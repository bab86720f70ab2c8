"""What the commands share: sectioned help, the analysis and genotype-input options, and the result writers."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from invariant_mr.io.output import atomic_write_bytes, atomic_write_text
from invariant_mr.methods.registry import MethodContext, all_method_options

#: Seeds every random step draws from: NumPy and PyTorch both accept 0 .. 2**32 - 1 as a plain seed, so one
#: range holds for every command (and for --config, which converts with the option's own type).
SEED = click.IntRange(0, 2**32 - 1)

#: Help sections of `run` and `demo`, in order; method families follow, then anything else.
SECTIONS = ("Input", "Simulation", "Output", "Quality control", "Analysis")


class SectionOption(click.Option):
    """An option that names the help section listing it."""

    def __init__(self, *args, section: str = "Analysis", **kwargs):
        super().__init__(*args, **kwargs)
        self.section = section


class SectionedCommand(click.Command):
    """A command whose --help lists its options by section: input, output, analysis, then each method family."""

    def format_options(self, ctx, formatter):
        sections: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", "Other"), []).append(record)
        order = [s for s in SECTIONS if s in sections] + [s for s in sections if s not in SECTIONS]
        for name in order:
            with formatter.section(name if name in SECTIONS or name == "Other" else f"{name} options"):
                formatter.write_dl(sections[name])


def option(*decls, section: str, **kwargs):
    return click.option(*decls, cls=SectionOption, section=section, **kwargs)


def simulation_option(*decls, **kwargs):
    return option(*decls, section="Simulation", **kwargs)


# ------------------------------------------------------------------ helpers
def command_line() -> str:
    """The command as the user typed it (from `main`'s argv, recorded in the click context)."""
    root = click.get_current_context().find_root()
    argv = (root.obj or {}).get("argv", sys.argv[1:])
    return shlex.join(["invariant-mr", *argv])


def method_option_flags(func, options=None):
    """Add one flag per registered method option (see `registry.MethodOption`), or per option in `options`."""
    chosen = all_method_options().values() if options is None else options
    for opt in sorted(chosen, key=lambda o: o.name, reverse=True):
        flag = opt.name.replace("_", "-")
        text = f"{opt.help} [default: {opt.default}]"
        if opt.type is bool:
            func = option(f"--{flag}/--no-{flag}", opt.name, default=None, help=text, section=opt.group)(func)
        else:
            func = option(f"--{flag}", opt.name, type=opt.type, default=None, help=text, section=opt.group)(func)
    return func


def analysis_options(func):
    """Options shared by `run` and `demo`."""
    func = method_option_flags(func)
    A = "Analysis"
    decorators = [
        option("--methods", default=None, section=A,
             help="comma-separated methods (default: all default methods; see `invariant-mr methods`)"),
        option("--seed", type=SEED, default=0, show_default=True, section=A, help="seed for every random step"),
        option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
             section=A, help="1 - confidence level"),
        option("--cov-type", type=click.Choice(["robust", "unadjusted", "cluster"]), default=None, section=A,
             help="robust (HC0), classical, or cluster-robust standard errors (cluster: needs --cluster, "
                  "which implies it) [default: robust]"),
        option("--per-env/--no-per-env", default=True, show_default=True, section=A,
             help="also estimate within each environment"),
        option("--overwrite", is_flag=True, section="Output",
             help="replace an existing output directory written by a previous run (never one holding inputs)"),
        option("--quiet", is_flag=True, section="Output", help="no progress bars or tables on the terminal"),
        option("--show-env", is_flag=True, section="Output",
               help="terminal table: also per-environment rows (files always have them)"),
    ]
    for dec in reversed(decorators):
        func = dec(func)
    return func


def resolve_cov_type(cov_type: str | None, cluster: str | None) -> str:
    """The covariance type that --cov-type and --cluster ask for together."""
    from invariant_mr.errors import InputError

    if cluster is None:
        if cov_type == "cluster":
            raise InputError("--cov-type cluster needs --cluster COLUMN (the cluster label, e.g. family ID)")
        return cov_type or "robust"
    if cov_type in (None, "cluster"):
        return "cluster"
    raise InputError(f"--cluster gives cluster-robust standard errors; it cannot be combined with --cov-type {cov_type}")


def method_context(seed, alpha, cov_type, per_env, quiet, option_values) -> MethodContext:
    cov_type = cov_type or "robust"
    names = set(all_method_options())
    options = {k: v for k, v in option_values.items() if k in names and v is not None}
    return MethodContext(seed=seed, alpha=alpha, cov_type=cov_type, per_env=per_env, progress=not quiet, options=options)


def terminal_text(result, data, instruments_out: bool) -> str:
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
    "bfile", "pfile", "bgen", "sample", "vcf", "vcf_dosage", "min_info", "npy", "npy_samples", "npy_variants", "pheno", "iid_col", "fid_col", "id_match", "extract", "region",
    "max_variant_missing", "max_sample_missing", "min_maf", "min_maf_per_env", "standardize_dosages",
    "min_env_samples", "dosage_of", "instruments_out", "report", "sumstats_out", "missing_code",
    "exclude", "chromosomes", "keep", "remove",
)


def input_paths(table, g) -> list[Path]:
    """Every file this run reads: `--overwrite` never replaces a folder holding one of them."""
    paths = [table, g["npy"], g["npy_samples"], g["npy_variants"], g["pheno"], g["extract"], g.get("bgen"),
             g.get("sample"), g.get("vcf"), g.get("exclude"), g.get("keep"), g.get("remove")]
    if g["bfile"] is not None:
        paths += [Path(f"{g['bfile']}{ext}") for ext in (".bed", ".bim", ".fam")]
    if g.get("pfile") is not None:
        paths += [Path(f"{g['pfile']}{ext}") for ext in (".pgen", ".pvar", ".psam")]
    return [Path(p) for p in paths if p is not None]


def genetic_input_options(func, outputs: bool = True):
    """`run` options for genotype files (--bfile/--npy + --pheno), variant selection, QC, extra outputs
    (without them when not `outputs`), --config."""
    from invariant_mr.config import config_option_callback
    from invariant_mr.data import MIN_SAMPLES_PER_ENV
    from invariant_mr.io.qc import QCThresholds

    qc = QCThresholds()
    path = click.Path(path_type=Path)
    decorators = [
        option("--missing-code", section="Input", default="-9,NA", show_default=True,
             help="comma-separated values read as missing in phenotype and table columns (PLINK's -9 and NA); "
                  "rows missing a used value are dropped and counted"),
        option("--config", section="Input", type=path, is_eager=True, expose_value=False, callback=config_option_callback,
                     help="TOML file of run options (keys = option names); command-line flags override it"),
        option("--bfile", section="Input", type=path, default=None, help="PLINK 1 fileset prefix (PREFIX.bed/.bim/.fam)"),
        option("--pfile", section="Input", type=path, default=None,
               help="PLINK 2 fileset prefix (PREFIX.pgen/.pvar/.psam); dosages count the first ALT allele"),
        option("--bgen", section="Input", type=path, default=None,
               help="BGEN v1.2 file of imputed dosages (counting the second allele); sample IDs from the file or --sample"),
        option("--sample", section="Input", type=path, default=None, help="--bgen: Oxford .sample file naming its samples"),
        option("--vcf", section="Input", type=path, default=None,
               help="VCF/BCF file (GT hard calls, or --vcf-dosage DS); dosages count the first ALT allele"),
        option("--vcf-dosage", section="Input", default=None,
               help="--vcf: read this FORMAT field (e.g. DS) as the ALT dosage instead of GT"),
        option("--min-info", section="Quality control", type=click.FloatRange(0, 1), default=None,
               help="keep imputed variants with INFO (R2/DR2/INFO, or BGEN's computed IMPUTE info) at least this, "
                    "as PLINK 2 --mach-r2-filter (--bgen, --vcf, --pfile)"),
        option("--npy", section="Input", type=path, default=None, help="samples x variants dosage matrix (.npy, NaN = missing)"),
        option("--npy-samples", section="Input", type=path, default=None, help="--npy row IDs: one IID (or 'FID IID') per line"),
        option("--npy-variants", section="Input", type=path, default=None, help="--npy column IDs: one variant ID per line"),
        option("--pheno", section="Input", type=path, default=None, help="phenotype table (CSV/TSV/Parquet) joined by sample ID"),
        option("--iid-col", section="Input", default=None, help="IID column of --pheno [default: IID, #IID, iid, sample_id, ...]"),
        option("--fid-col", section="Input", default=None, help="FID column of --pheno [default: FID or #FID if present]"),
        option("--id-match", section="Input", type=click.Choice(["auto", "fid_iid", "iid", "row_order"]), default="auto",
                     show_default=True, help="join key: FID+IID when --pheno has an FID column, else IID"),
        option("--extract", section="Input", type=path, default=None,
               help="file of variant IDs to analyse (first field per line); every genotype format"),
        option("--region", section="Input", default=None, help="analyse variants in CHROM or CHROM:START-END (1-based, inclusive)"),
        option("--exclude", section="Input", type=path, default=None,
               help="file of variant IDs to leave out (first field per line), as PLINK's --exclude"),
        option("--chr", "chromosomes", section="Input", default=None,
               help="analyse these chromosomes only, as PLINK's --chr: e.g. 1-22, or 1-4,22,X"),
        option("--keep", section="Input", type=path, default=None,
               help="file of samples to analyse ('FID IID' or 'IID' per line), as PLINK's --keep"),
        option("--remove", section="Input", type=path, default=None,
               help="file of samples to leave out ('FID IID' or 'IID' per line), as PLINK's --remove"),
        option("--geno", "max_variant_missing", section="Quality control", type=click.FloatRange(0, 1), default=qc.max_variant_missing,
                     show_default=True, help="QC: remove variants with a missing-call rate above this"),
        option("--mind", "max_sample_missing", section="Quality control", type=click.FloatRange(0, 1), default=qc.max_sample_missing,
                     show_default=True, help="QC: remove samples with a missing-call rate above this"),
        option("--maf", "min_maf", section="Quality control", type=click.FloatRange(0, 0.5), default=qc.min_maf, show_default=True,
                     help="QC: remove variants with pooled minor-allele frequency below this"),
        option("--maf-env", "min_maf_per_env", section="Quality control", type=click.FloatRange(0, 0.5), default=qc.min_maf_per_env,
                     show_default=True, help="QC: remove variants with MAF below this in any environment"),
        option("--standardize-dosages/--raw-dosages", section="Quality control", default=qc.standardize, show_default=True,
                     help="QC: centre and scale every variant (pooled mean and SD)"),
        option("--min-env-samples", section="Quality control", type=click.IntRange(2), default=MIN_SAMPLES_PER_ENV, show_default=True,
                     help="fewest samples an environment may have"),
        option("--dosage-of", section="Input", type=click.Choice(["A1", "A2"]), default="A1", show_default=True,
                     help="PLINK allele counted by the dosage (.bim column 5 = A1)"),
        option("--instruments-out/--no-instruments-out", section="Output", default=False, show_default=True,
                     help="write instruments.tsv (learned instrument values per sample)"),
        option("--report/--no-report", section="Output", default=True, show_default=True, help="write report.html"),
        option("--sumstats-out", section="Output", type=path, default=None,
                     help="also write per-variant summary statistics (TSV: variant, beta/se exposure and outcome, n)"),
    ]
    if not outputs:
        decorators = decorators[:-3]
    for dec in reversed(decorators):
        func = dec(func)
    return func


SCALE_OPTION_NAMES = ("streaming", "memory_gb", "subsample_rows", "scheduler", "workers")


def scale_options(func):
    """`run` options for biobank-scale genotype input: streamed estimation and Dask."""
    S = "Scale"
    decorators = [
        option("--streaming", section=S, type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
               help="on: keep the genotypes on disk and run the methods that can from sufficient statistics "
                    "accumulated over row blocks (the others on a seeded --subsample-rows subsample); "
                    "auto: on when the float64 genotypes (8 n p bytes) exceed a quarter of --memory-gb"),
        option("--memory-gb", section=S, type=click.FloatRange(0, min_open=True), default=8.0, show_default=True,
               help="memory budget that --streaming auto compares with"),
        option("--subsample-rows", section=S, type=click.IntRange(2), default=20_000, show_default=True,
               help="--streaming: rows (seeded by --seed) given to methods that need rows in memory"),
        option("--scheduler", section=S, default=None,
               help="address of a running Dask scheduler (tcp://host:8786): the streamed passes run on its workers"),
        option("--workers", section=S, type=click.IntRange(1), default=None,
               help="start a local Dask cluster of N worker processes for the streamed passes"),
    ]
    for dec in reversed(decorators):
        func = dec(func)
    return func


def write_run_extras(result, directory: Path, data, *, qc_tsv: str | None = None, instruments_out: bool = False,
                     report: bool = True, sumstats_out: Path | None = None,
                     sumstats_env_adjust: bool = True, variants=None) -> list[str]:
    """qc.tsv, instruments.tsv and report.html (each optional) into `directory`; --sumstats-out where asked.

    `variants` (one row per instrument: name, counted_allele, other_allele) adds the counted and
    other allele to the --sumstats-out table.
    """
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
        # The same associations the summary-statistic methods use (--sumstats-env-adjust).
        from invariant_mr.data import StreamedMRData

        if isinstance(data, StreamedMRData):
            from invariant_mr.estimators.sumstats_from_stats import summary_statistics_from_stats
            from invariant_mr.methods.streamed_passes import first_pass

            table = summary_statistics_from_stats(first_pass(data), env_fixed_effects=sumstats_env_adjust,
                                                  variant_names=data.instrument_names)
        else:
            from invariant_mr.estimators.summary.sumstats import summary_statistics

            table = summary_statistics(data, env_fixed_effects=sumstats_env_adjust)
        alleles = None
        if variants is not None and {"name", "counted_allele", "other_allele"} <= set(variants.columns):
            by_name = variants.set_index("name")
            alleles = {col: [by_name[col].get(v) for v in table.variant] for col in ("counted_allele", "other_allele")}
        table.to_tsv(sumstats_out, extra_columns=alleles)
    return written


def paper_recipe_options(func):
    """`simulate`/`demo` flags of the paper simulator: measurement noise and the authors' mixing recipe."""
    decorators = [
        simulation_option("--noise", type=click.FloatRange(0, None), default=0.0, show_default=True,
                          help="paper model: Gaussian measurement noise added to Z, as a fraction of each column's SD"),
        simulation_option("--weights", type=click.Choice(["default", "clipped-normal"]), default="default",
                          show_default=True,
                          help="paper model: mixing weights; clipped-normal = the authors' (singular values >= s_max/5)"),
        simulation_option("--mix-seed", type=SEED, default=None,
                          help="paper model: draw the mixing once from this seed, shared by every data seed "
                               "(the authors use 100) [default: the data seed]"),
        simulation_option("--mixing-recipe", type=click.Choice(["default", "paper-code"]), default="default",
                          show_default=True,
                          help="paper model: paper-code = the authors' published mlp and discrete mixings"),
    ]
    for dec in reversed(decorators):
        func = dec(func)
    return func
