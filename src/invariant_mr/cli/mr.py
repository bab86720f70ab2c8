"""`invariant-mr mr`: two-sample MR from GWAS summary statistics; estimates, plots, report and provenance out."""

from __future__ import annotations

from pathlib import Path

import click

from invariant_mr.cli.common import SEED, SectionedCommand, command_line, method_context, method_option_flags, option
from invariant_mr.errors import InputError
from invariant_mr.io.output import OutputDirectory, atomic_write_bytes, atomic_write_text

_PATH = click.Path(path_type=Path)
_FILES = ("--sumstats", "--exposure-gwas", "--outcome-gwas", "--select-from")


def parse_column_renames(pairs: tuple[str, ...]) -> dict[str | None, dict[str, str]]:
    """`--col NAME=FILECOL` (every input) or `--col FILE:NAME=FILECOL` with FILE one of
    sumstats, exposure, outcome, select -> {None or file: {canonical: file column}}."""
    out: dict[str | None, dict[str, str]] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise InputError(f"--col {pair!r}: expected NAME=FILECOL (e.g. --col beta_exposure=BETA)")
        target, colon, canonical = name.strip().rpartition(":")
        if colon and target not in ("sumstats", "exposure", "outcome", "select"):
            raise InputError(f"--col {pair!r}: the file prefix must be sumstats, exposure, outcome or select")
        out.setdefault(target or None, {})[canonical] = column.strip()
    return out


def _renames(cols: dict, target: str) -> dict[str, str]:
    return {**cols.get(None, {}), **cols.get(target, {})}


#: Options of individual-level per-variant association steps, which a summary-statistics table skips.
_INDIVIDUAL_ONLY = ("sumstats_env_adjust", "sumstats_p_threshold")


def summary_method_option_flags(func):
    """One flag per option of the methods that take summary statistics (as `run` has for every method)."""
    from invariant_mr.methods.registry import registered_methods

    opts = {}
    for spec in registered_methods().values():
        if spec.summary_input:
            for opt in spec.options:
                if opt.name not in _INDIVIDUAL_ONLY:
                    opts.setdefault(opt.name, opt)
    return method_option_flags(func, opts.values())


@click.command(cls=SectionedCommand)
@option("--sumstats", type=_PATH, default=None, section="Input",
        help="harmonised table (TSV/CSV): variant, beta_exposure, se_exposure, beta_outcome, se_outcome "
             "(what `run --sumstats-out` writes), or beta_exposure_<name>/se_exposure_<name> per exposure")
@option("--exposure-gwas", type=_PATH, multiple=True, section="Input",
        help="exposure GWAS (variant, effect_allele, other_allele, beta, se; optional eaf, pval, n, chrom, pos; "
             "TwoSampleMR, PLINK 2 .glm and GWAS-SSF names are recognised); repeat it for multivariable MR, "
             "one file per exposure, named by --exposure a,b,...")
@option("--outcome-gwas", type=_PATH, default=None, section="Input", help="outcome GWAS, same columns; harmonised to the exposure's alleles")
@option("--col", "columns", multiple=True, section="Input",
        help="rename a column: NAME=FILECOL, or FILE:NAME=FILECOL for one file (FILE: sumstats, exposure, outcome, select); repeatable")
@option("--exposure", "exposures", default=None, section="Input",
        help="--sumstats: the exposure(s) to analyse, comma-separated <name>s of beta_exposure_<name> "
             "(default: all); two-file form: the exposure's name [default: exposure]")
@option("--palindromes", type=click.Choice(["infer", "drop"]), default="infer", show_default=True, section="Input",
        help="palindromic A/T, C/G variants: infer the strand from allele frequencies, or drop them")
@option("--palindrome-maf", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=0.42, show_default=True,
        section="Input", help="palindromic variants with an EAF in (x, 1 - x) are ambiguous and dropped (TwoSampleMR: 0.42)")
@option("--select-from", type=_PATH, default=None, section="Instrument selection",
        help="independent exposure GWAS to select variants in (avoids the winner's curse); same columns as --exposure-gwas")
@option("--select-p", type=float, default=None, section="Instrument selection",
        help="keep variants with exposure p below this: in --select-from [default 5e-8], else in the exposure GWAS itself")
@option("--clump-bfile", type=_PATH, default=None, section="Instrument selection",
        help="PLINK 1 reference panel PREFIX (.bed/.bim/.fam) for LD clumping; no clumping without it")
@option("--clump-r2", type=click.FloatRange(0, 1, max_open=True), default=0.001, show_default=True,
        section="Instrument selection", help="clumping: drop variants with r^2 above this with a stronger one")
@option("--clump-kb", type=click.FloatRange(0, min_open=True), default=10_000, show_default=True,
        section="Instrument selection", help="clumping window in kb")
@option("--clump-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
        section="Instrument selection", help="clumping: index variants need exposure p at most this")
@option("--out", "out_dir", type=_PATH, required=True, section="Output",
        help="output directory (must not exist, or use --overwrite to replace a previous run's output)")
@option("--overwrite", is_flag=True, section="Output",
        help="replace an existing output directory written by a previous run (never one holding inputs)")
@option("--quiet", is_flag=True, section="Output", help="no tables on the terminal")
@option("--odds-ratios", is_flag=True, section="Output",
        help="binary outcome (log odds): add exp(b) and exp(b -+ 1.96 se) to mr_results.tsv (TwoSampleMR generate_odds_ratios)")
@option("--methods", default=None, section="Analysis",
        help="comma-separated methods [default: every summary-statistic method; mv_ivw, mv_egger for several exposures]")
@option("--seed", type=SEED, default=0, show_default=True, section="Analysis", help="seed for every random step")
@option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
        section="Analysis", help="1 - confidence level")
@summary_method_option_flags
def mr(sumstats, exposure_gwas, outcome_gwas, columns, exposures, palindromes, palindrome_maf, select_from, select_p,
       clump_bfile, clump_r2, clump_kb, clump_p, out_dir, overwrite, quiet, odds_ratios, methods, seed, alpha,
       **option_values):
    """Two-sample Mendelian randomization from GWAS summary statistics.

    Give one harmonised table (--sumstats) or an exposure and an outcome GWAS
    (--exposure-gwas, --outcome-gwas), which are harmonised as TwoSampleMR
    does; several --exposure-gwas files give multivariable MR. Writes
    results.json, estimates.tsv, mr_results.tsv (TwoSampleMR's layout),
    report.html, the scatter, funnel, leave-one-out and single-variant plots
    and tables (single_variant.tsv, leave_one_out.tsv), harmonised_data.tsv
    (two-file form) and dropped_variants.tsv (every variant left out, with
    the step and the reason).
    """
    from invariant_mr.io.gwas_sumstats import explain_empty, harmonise, harmonise_exposures, read_gwas, read_mr_sumstats
    from invariant_mr.estimators.summary.two_sample import select_instruments
    from invariant_mr.pipeline import run_analysis
    from invariant_mr.provenance import input_record

    exposure_gwas = list(exposure_gwas or ())
    two_file = bool(exposure_gwas) or outcome_gwas is not None
    if sumstats is not None and two_file:
        raise InputError("give either --sumstats or --exposure-gwas with --outcome-gwas, not both")
    if sumstats is None and not two_file:
        raise InputError("give the data: --sumstats FILE, or --exposure-gwas FILE with --outcome-gwas FILE")
    if two_file and (not exposure_gwas or outcome_gwas is None):
        raise InputError("the two-file form needs both --exposure-gwas and --outcome-gwas")
    if clump_bfile is None and any(
        click.get_current_context().get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE
        for p in ("clump_r2", "clump_kb", "clump_p")
    ):
        raise InputError("--clump-r2/--clump-kb/--clump-p need a reference panel: --clump-bfile PREFIX")
    cols = parse_column_renames(columns)
    ctx = method_context(seed, alpha, "robust", False, True, option_values)
    inputs = [p for p in (sumstats, *exposure_gwas, outcome_gwas, select_from) if p is not None]
    panel = [] if clump_bfile is None else [Path(f"{clump_bfile}{ext}") for ext in (".bed", ".bim", ".fam")]
    out = OutputDirectory(out_dir, overwrite, inputs=inputs + panel)
    out.check()

    harmonised = None
    not_kept: list = []  # rows a TwoSampleMR table marks mr_keep FALSE
    if sumstats is not None:
        table = read_mr_sumstats(sumstats, _renames(cols, "sumstats"), dropped=not_kept)
        if exposures:
            table = table.with_exposures([e.strip() for e in exposures.split(",") if e.strip()])
    else:
        names = [e.strip() for e in (exposures or "").split(",") if e.strip()]
        if len(exposure_gwas) == 1:
            if len(names) > 1:
                raise InputError("--exposure: one --exposure-gwas file has one exposure; give one name")
            names = names or ["exposure"]
        elif not names:
            names = [f"exposure_{k + 1}" for k in range(len(exposure_gwas))]
        elif len(names) != len(exposure_gwas):
            raise InputError(f"--exposure names {len(names)} exposure(s) for {len(exposure_gwas)} --exposure-gwas files")
        gwas = [read_gwas(p, _renames(cols, "exposure"), what="--exposure-gwas") for p in exposure_gwas]
        outcome = read_gwas(outcome_gwas, _renames(cols, "outcome"), what="--outcome-gwas")
        if len(gwas) == 1:
            harmonised = harmonise(gwas[0], outcome, palindromes=palindromes, maf_threshold=palindrome_maf,
                                   exposure_name=names[0])  # fmt: skip
        else:
            harmonised = harmonise_exposures(gwas, outcome, names=names, palindromes=palindromes,
                                             maf_threshold=palindrome_maf)  # fmt: skip
        if harmonised.table.n_variants == 0:
            # Say why, and leave the per-variant reasons where the user can read them.
            with out:
                atomic_write_text(out.path / "dropped_variants.tsv", _dropped_tsv(harmonised.dropped))
            raise InputError(f"{explain_empty(harmonised, gwas[0], outcome)} (every variant and its reason: "
                             f"{out.final}/dropped_variants.tsv)")
        table = harmonised.table
    selection = read_gwas(select_from, _renames(cols, "select"), what="--select-from") if select_from else None
    chosen = select_instruments(
        table, select_p=select_p, selection_gwas=selection, clump_bfile=clump_bfile,
        clump_r2=clump_r2, clump_kb=clump_kb, clump_p=clump_p,
        earlier=[("harmonise", d) for d in (harmonised.dropped if harmonised else not_kept)],
    )  # fmt: skip
    params = {
        "sumstats": None if sumstats is None else str(sumstats),
        "exposure_gwas": [str(p) for p in exposure_gwas] or None,
        "outcome_gwas": None if outcome_gwas is None else str(outcome_gwas),
        "column_renames": {str(k): v for k, v in cols.items()},
        "exposures": list(chosen.table.exposures),
        "palindromes": palindromes if two_file else None,
        "palindrome_maf": palindrome_maf if two_file else None,
        "select_from": None if select_from is None else str(select_from),
        "select_p": select_p,
        "odds_ratios": odds_ratios,
        "clump_bfile": None if clump_bfile is None else str(clump_bfile),
        "clump_r2": clump_r2 if clump_bfile else None,
        "clump_kb": clump_kb if clump_bfile else None,
        "clump_p": clump_p if clump_bfile else None,
    }
    conventions = _conventions(ctx)
    record = {
        "two_sample": {
            "n_variants_analysed": chosen.table.n_variants,
            "harmonisation": None if harmonised is None else harmonised.summary(),
            "selection": list(chosen.steps),
            "dropped": chosen.counts(),
            "conventions": conventions,
        }
    }
    result = run_analysis(
        chosen.table, methods, ctx, command=command_line(), parameters=params,
        inputs=input_record(inputs + panel), extra_provenance=record,
    )  # fmt: skip
    pngs, plots_html = _plots(chosen.table, result, alpha)
    tables = _tables(chosen.table, harmonised, result, alpha, odds_ratios)
    with out:
        from invariant_mr.report.html import write_report

        atomic_write_text(out.path / "results.json", result.to_json())
        atomic_write_text(out.path / "estimates.tsv", result.to_tsv())
        atomic_write_text(out.path / "dropped_variants.tsv", chosen.dropped_tsv())
        for name, text in tables.items():
            atomic_write_text(out.path / name, text)
        for name, data in pngs.items():
            atomic_write_bytes(out.path / name, data)
        write_report(
            out.path / "report.html", result, title="invariant-mr two-sample MR report",
            extra_sections=[("Summary-statistic MR plots", plots_html)], individual_data=False,
        )  # fmt: skip
    if not quiet:
        if harmonised is not None:
            click.echo(harmonised.summary())
        for step in chosen.steps:
            click.echo(step)
        click.echo(result.summary())
        click.echo("\nConventions: " + "; ".join(f"{k}: {v}" for k, v in conventions.items()))
        from invariant_mr.report.verdict import verdicts

        click.echo("\n" + "\n\n".join(v.summary() for v in verdicts(result)))
        written = ["results.json", "estimates.tsv", *tables, "report.html", "dropped_variants.tsv", *pngs]
        click.echo(f"\nwrote {out.final}/" + ", ".join(written))


def _conventions(ctx) -> dict[str, str]:
    """Which published convention each switchable quantity follows in this run (defaults: current TwoSampleMR)."""
    pvalues = str(ctx.option("summary_pvalues", "twosamplemr"))
    raps = str(ctx.option("raps_version", "profile"))
    weights = str(ctx.option("median_weights", "second_order"))
    model = str(ctx.option("mv_model", "lm"))
    return {
        "p-values": {"twosamplemr": "TwoSampleMR (t for MR-Egger on L-2 df and the modes on L-1 df, normal elsewhere)",
                     "normal": "normal (MendelianRandomization)", "t": "t, intervals too"}[pvalues],
        "weighted median weights": {"second_order": "second order (TwoSampleMR)",
                                    "first_order": "first order (MendelianRandomization)"}[weights],
        "MR-RAPS": {"profile": "mr.raps::mr.raps, shrinkage off (current TwoSampleMR)",
                    "mle": "mr.raps.mle (first generation)"}[raps],
        "multivariable IVW SE": {"lm": "regression SE (TwoSampleMR mv_multiple, MVMR)"}.get(
            model, f"MendelianRandomization mr_mvivw model={model}"),
    }


def _dropped_tsv(dropped) -> str:
    lines = ["variant\tstep\treason\tdetail"] + [f"{d.variant}\tharmonise\t{d.reason}\t{d.detail}" for d in dropped]
    return "\n".join(lines) + "\n"


def _tables(table, harmonised, result, alpha: float, odds_ratios: bool) -> dict[str, str]:
    """{file name: TSV text}: TwoSampleMR's results layout, harmonised data, single-variant and leave-one-out tables."""
    from invariant_mr.estimators.summary.mr_tables import harmonised_data_tsv, leave_one_out_tsv, results_tsv, single_variant_tsv
    from invariant_mr.estimators.summary.two_sample import summary_statistics_from_table

    out = {"mr_results.tsv": results_tsv(result.estimates, with_odds_ratios=odds_ratios)}
    if harmonised is not None:
        out["harmonised_data.tsv"] = harmonised_data_tsv(harmonised) if table.n_exposures == 1 else None
    if table.n_exposures == 1:
        ss = summary_statistics_from_table(table)
        out["single_variant.tsv"] = single_variant_tsv(ss, result.estimates, exposure=table.exposures[0])
        if ss.n_variants >= 3:
            out["leave_one_out.tsv"] = leave_one_out_tsv(ss, alpha)
    return {k: v for k, v in out.items() if v is not None}


def _plots(table, result, alpha: float) -> tuple[dict[str, bytes], str]:
    """PNG bytes per file and the report section: the four plots per exposure of a univariable analysis."""
    from invariant_mr.estimators.summary.two_sample import summary_statistics_from_table
    from invariant_mr.report.mr_plots import mr_plot_pngs, mr_plots_html

    if table.n_exposures > 1:
        return {}, (
            '<p class="muted">The scatter, funnel, leave-one-out and single-variant plots are drawn for '
            "univariable analyses (run `mr --exposure NAME` for one exposure).</p>"
        )
    name = table.exposures[0]
    pngs = mr_plot_pngs(summary_statistics_from_table(table), result, exposure=name, alpha=alpha)
    return pngs, mr_plots_html(pngs)
