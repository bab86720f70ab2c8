"""`invariant-mr fit` and `invariant-mr apply`: learn an instrument map in one cohort, compute it in another.

    invariant-mr fit --bfile A --pheno A.tsv --env-col pop --exposure ldl --outcome cad \
        --method invariant_linear --model-out map/
    invariant-mr apply --model map/ --bfile B --out b_instruments/
    invariant-mr run --pheno B.tsv --instruments-from b_instruments/ --env-col pop ... --out b_results/

The map (instruments/portable.py) records variant IDs, counted alleles and
the centring; `apply` aligns by ID and allele, flips swapped alleles, imputes
missing variants at the map's centring, and refuses a target missing more than
--max-missing-fraction of the map.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from invariant_mr.cli.common import (
    SEED,
    GENETIC_OPTION_NAMES,
    SectionedCommand,
    command_line,
    genetic_input_options,
    input_paths,
    method_option_flags,
    option,
)
from invariant_mr.errors import InputError
from invariant_mr.io.output import OutputDirectory, atomic_write_text
from invariant_mr.methods.options import AUTOENCODER_OPTIONS, LINEAR_OPTIONS

#: Method options of the two learners `fit` can save, each once.
_FIT_OPTIONS = tuple(
    {o.name: o for o in (*LINEAR_OPTIONS, *AUTOENCODER_OPTIONS)
     if o.name not in ("n_folds", "diagnostic_permutations", "invariance_permutations", "direction_bootstrap")}.values()
)  # fmt: skip
_MAP_METHODS = ("invariant_linear", "invariant_autoencoder")
_PATH = click.Path(path_type=Path)


def _fit_options(func):
    return method_option_flags(func, _FIT_OPTIONS)


def _genetic_options(func):
    return genetic_input_options(func, outputs=False)


def _provenance_file(directory: Path, provenance: dict) -> None:
    atomic_write_text(directory / "provenance.json", json.dumps({"provenance": provenance}, indent=2, default=str))


# ----------------------------------------------------------------------------- fit
@click.command(cls=SectionedCommand)
@option("--table", section="Input", type=_PATH, default=None, help="TSV/CSV/Parquet, one row per sample (or --bfile/--npy with --pheno)")
@option("--env", "--env-col", "env_col", section="Input", required=True, help="environment column")
@option("--exposure", section="Input", required=True, help="exposure column")
@option("--outcome", section="Input", required=True,
        help="outcome column (the map is learned on the samples `run` would analyse)")
@option("--instruments", section="Input", default=None, help="--table: variant columns, names or globs (e.g. 'rs*')")
@option("--id-column", section="Input", default="iid", show_default=True, help="--table: sample ID column, if present")
@option("--method", "map_method", section="Analysis", type=click.Choice(_MAP_METHODS), required=True,
        help="the learner whose map is saved")
@option("--seed", type=SEED, default=0, show_default=True, section="Analysis", help="seed for every random step")
@option("--model-out", type=_PATH, required=True, section="Output", help="directory for the map (must not exist)")
@option("--overwrite", is_flag=True, section="Output", help="replace a map directory a previous `fit` wrote")
@option("--quiet", is_flag=True, section="Output", help="no summary on the terminal")
@_fit_options
@_genetic_options
def fit(table, env_col, exposure, outcome, instruments, id_column, map_method, seed, model_out, overwrite, quiet,
        **option_values):
    """Learn an instrument map (invariant_linear or invariant_autoencoder) and save it for `apply`.

    The map holds the variant IDs, the counted and other allele of every
    variant (from the .bim after QC, following --dosage-of) and the centring;
    a linear map also gets score.tsv, per-allele weights for PLINK 2 --score.
    """
    from invariant_mr.methods.registry import MethodContext
    from invariant_mr.pipeline import data_fingerprint
    from invariant_mr.provenance import make_provenance

    g = {name: option_values.pop(name, None) for name in GENETIC_OPTION_NAMES}
    options = {k: v for k, v in option_values.items() if v is not None}
    ctx = MethodContext(seed=seed, progress=not quiet, options=options)
    if g["standardize_dosages"]:
        raise InputError("--standardize-dosages: a portable map reads allele dosages; fit it on --raw-dosages")
    out = OutputDirectory(model_out, overwrite, option="--model-out", inputs=input_paths(table, g))
    out.check()
    data, variants, inputs, params = _load_fit_data(table, env_col, exposure, outcome, instruments, id_column, g)
    if map_method == "invariant_linear":
        from invariant_mr.instruments.portable import linear_map
        from invariant_mr.methods.invariant_linear import learner_from_context

        learner = learner_from_context(ctx, "invariant_linear").fit(data.Z, data.env)
        if learner.n_components_ == 0:
            raise InputError("invariant_linear found no invariant direction in these data: there is no map to save")
        check = _invariance_check(learner.transform(data.Z), data.env, seed)
        m = linear_map(learner, variants["variant_id"], variants["counted_allele"], variants["other_allele"])
    else:
        from invariant_mr.instruments.portable import autoencoder_map
        from invariant_mr.methods.autoencoder import estimator_from_context

        seed_ae = int(ctx.rng("invariant_autoencoder_insample seed").integers(2**31 - 1))
        model = estimator_from_context(ctx, seed_ae)
        use_exposure = float(ctx.option("lam_rel", 1.0)) > 0
        model.fit(data.Z, data.env, exposure=data.exposure if use_exposure else None)
        check = _invariance_check(model.transform(data.Z), data.env, seed)
        m = autoencoder_map(model, variants["variant_id"], variants["counted_allele"], variants["other_allele"])
    from invariant_mr.instruments.portable import write_map_files

    provenance = make_provenance(
        command=command_line(), parameters={**params, "method": map_method, "options": options}, seed=seed,
        inputs=inputs, extra={"data": data_fingerprint(data), "map": {"kind": m.kind, "n_variants": m.n_variants,
                                                                     "n_instruments": m.n_instruments},
                              "invariance_check": check},
    )
    if check["pvalue"] < INVARIANCE_WARNING_LEVEL:
        # The map is still saved (a later cohort may be analysed with it), but not silently.
        click.echo(f"warning: {map_method}'s {m.n_instruments} instrument(s) are not invariant across environments "
                   f"(MMD permutation test p = {check['pvalue']:.3g} on the fitting data): no invariant direction "
                   "was found, so they may carry the confounding. The map is saved; check `run`'s invariance "
                   "diagnostic before relying on it", err=True)
    with out:
        written = write_map_files(m, out.path)
        _provenance_file(out.path, provenance)
    if not quiet:
        click.echo(m.summary())
        click.echo(f"wrote {out.final}/" + ", ".join([*written, "provenance.json"]))


#: Below this p-value of the in-sample MMD test, `fit` warns that the learned instruments are not invariant.
INVARIANCE_WARNING_LEVEL = 0.05


def _invariance_check(instruments, env, seed: int) -> dict:
    """In-sample MMD test of the learned instruments across environments (an optimistic test: a rejection
    on the data the map was fitted to is strong evidence that no invariant direction was found)."""
    import numpy as np

    from invariant_mr.inference.diagnostics import mmd_permutation_test

    X = np.asarray(instruments, dtype=float).reshape(len(env), -1)
    stat, pvalue, kernel = mmd_permutation_test(X, np.asarray(env), n_permutations=199, rng=seed)
    return {"test": "mmd_permutation", "kernel": kernel, "permutations": 199, "statistic": stat, "pvalue": pvalue}


def _load_fit_data(table, env_col, exposure, outcome, instruments, id_column, g):
    """(MRData, variant table with variant_id/counted_allele/other_allele, input records, parameters)."""
    import pandas as pd

    from invariant_mr.io.phenotypes import parse_missing_codes
    from invariant_mr.provenance import input_record

    codes = parse_missing_codes(g["missing_code"])
    if table is not None:
        from invariant_mr.io.tables import read_table, table_data

        if g["bfile"] is not None or g["npy"] is not None or g["pheno"] is not None:
            raise InputError("--table cannot be combined with --bfile, --npy or --pheno: give one data source")
        if not instruments:
            raise InputError("--instruments is required with --table (the variant columns, e.g. 'rs*')")
        data, _ = table_data(read_table(table, missing_codes=codes), env=env_col, exposure=exposure, outcome=outcome,
                             instruments=instruments, id_column=id_column, path=table)
        variants = pd.DataFrame({"variant_id": list(data.instrument_names), "counted_allele": None,
                                 "other_allele": None})
        params = {"table": str(table), "env": env_col, "exposure": exposure, "outcome": outcome,
                  "instruments": instruments, "alleles": "unknown (table input): the map aligns by column name"}
        return data, variants, input_record([table]), params
    from invariant_mr.io.genetic_input import load_genetic_data
    from invariant_mr.io.qc import QCThresholds

    if all(g[k] is None for k in ("bfile", "pfile", "bgen", "vcf", "npy")):
        raise InputError("give the data: --table FILE, or genotypes (--bfile, --pfile, --bgen, --vcf or --npy) "
                         "with --pheno FILE")
    if g["pheno"] is None:
        raise InputError("--pheno FILE is required with genotype files (the environment, exposure and outcome)")
    qc = QCThresholds(max_variant_missing=g["max_variant_missing"], max_sample_missing=g["max_sample_missing"],
                      min_maf=g["min_maf"], min_maf_per_env=g["min_maf_per_env"], standardize=False)
    loaded = load_genetic_data(
        bfile=g["bfile"], pfile=g["pfile"], bgen=g["bgen"], sample=g["sample"], vcf=g["vcf"],
        vcf_dosage=g["vcf_dosage"], min_info=g["min_info"], npy=g["npy"], npy_samples=g["npy_samples"], npy_variants=g["npy_variants"],
        pheno=g["pheno"], env_col=env_col, exposure=exposure, outcome=outcome, iid_col=g["iid_col"],
        fid_col=g["fid_col"], id_match=g["id_match"], extract=g["extract"], region=g["region"], qc=qc,
        exclude=g["exclude"], chromosomes=g["chromosomes"], keep=g["keep"], remove=g["remove"],
        min_samples_per_env=g["min_env_samples"], count_a1=g["dosage_of"] == "A1", missing_codes=codes,
    )
    variants = loaded.variants[["variant_id", "counted_allele", "other_allele"]].reset_index(drop=True)
    dup = variants["variant_id"][variants["variant_id"].duplicated()]
    if len(dup):
        raise InputError(f"variant ID {dup.iloc[0]!r} appears more than once: a map needs unique IDs (use --extract)")
    return loaded.data, variants, [dict(i) for i in loaded.inputs], {**loaded.parameters, "qc_report": loaded.qc.to_dict()}


# ----------------------------------------------------------------------------- apply
@click.command(cls=SectionedCommand)
@option("--model", "model_dir", section="Input", type=_PATH, required=True, help="map directory written by `fit`")
@option("--bfile", section="Input", type=_PATH, default=None, help="PLINK 1 fileset prefix")
@option("--pfile", section="Input", type=_PATH, default=None, help="PLINK 2 fileset prefix (.pgen/.pvar/.psam)")
@option("--vcf", section="Input", type=_PATH, default=None, help="VCF/BCF file (GT, or --vcf-dosage DS)")
@option("--vcf-dosage", section="Input", default=None, help="VCF FORMAT field holding dosages (e.g. DS)")
@option("--bgen", section="Input", type=_PATH, default=None, help="BGEN v1.2 file")
@option("--sample", section="Input", type=_PATH, default=None, help="Oxford .sample file of --bgen")
@option("--npy", section="Input", type=_PATH, default=None, help="samples x variants dosage matrix (.npy)")
@option("--npy-samples", section="Input", type=_PATH, default=None, help="--npy row IDs, one per line")
@option("--npy-variants", section="Input", type=_PATH, default=None, help="--npy column IDs, one per line")
@option("--table", section="Input", type=_PATH, default=None,
        help="table with a sample ID column and one dosage column per variant (named by variant ID; no allele check)")
@option("--id-column", section="Input", default="iid", show_default=True, help="--table: sample ID column")
@option("--dosage-of", section="Input", type=click.Choice(["A1", "A2"]), default="A1", show_default=True,
        help="PLINK 1 allele counted by the dosage (.bim column 5 = A1)")
@option("--missing-code", section="Input", default="-9,NA", show_default=True, help="--table: values read as missing")
@option("--max-missing-fraction", type=click.FloatRange(0, 1), default=0.10, show_default=True, section="Analysis",
        help="refuse when more than this share of the map's variants is missing or has other alleles")
@option("--out", "out_dir", type=_PATH, required=True, section="Output",
        help="output directory: instruments.tsv, alignment.json, provenance.json")
@option("--overwrite", is_flag=True, section="Output", help="replace an output directory a previous run wrote")
@option("--quiet", is_flag=True, section="Output", help="no summary on the terminal")
def apply(model_dir, bfile, pfile, vcf, vcf_dosage, bgen, sample, npy, npy_samples, npy_variants, table, id_column,
          dosage_of, missing_code, max_missing_fraction, out_dir, overwrite, quiet):
    """Compute a saved instrument map's instruments for another cohort's genotypes.

    Variants are matched by ID and allele (swapped alleles flip the dosage);
    missing variants and calls are imputed at the map's centring and reported.
    Writes instruments.tsv (IID and one column per instrument) for
    `run --instruments-from`.
    """
    import numpy as np

    from invariant_mr.instruments.portable import (
        apply_instrument_map,
        load_instrument_map,
    )
    from invariant_mr.provenance import input_record, make_provenance

    sources = [p for p in (bfile, pfile, vcf, bgen, npy, table) if p is not None]
    if len(sources) != 1:
        raise InputError("give exactly one genotype input: --bfile, --pfile, --vcf, --bgen, --npy or --table")
    inputs = [*sources, npy_samples, npy_variants, sample]
    if bfile is not None:
        inputs += [Path(f"{bfile}{ext}") for ext in (".bed", ".bim", ".fam")]
    out = OutputDirectory(out_dir, overwrite, inputs=[*inputs, model_dir])
    out.check()
    m = load_instrument_map(model_dir)
    wanted = set(m.variant_ids)
    if table is not None:
        from invariant_mr.io.phenotypes import parse_missing_codes
        from invariant_mr.io.tables import read_table

        frame = read_table(table, missing_codes=parse_missing_codes(missing_code))
        if id_column not in frame.columns:
            raise InputError(f"--id-column {id_column!r} is not a column of {table}")
        cols = [c for c in frame.columns if str(c) in wanted and c != id_column]
        Z = frame[cols].apply(lambda s: s.astype(float)).to_numpy(dtype=float) if cols else np.empty((len(frame), 0))
        ids, counted, other = [str(c) for c in cols], None, None
        iids = frame[id_column].astype(str).to_numpy()
        described = {"format": "table", "path": str(table), "n_samples": len(frame)}
        records = input_record([table])
    else:
        from invariant_mr.io.genotype_sources import open_genotypes

        source = open_genotypes(bfile=bfile, pfile=pfile, vcf=vcf, vcf_dosage=vcf_dosage, bgen=bgen, sample=sample,
                                npy=npy, npy_samples=npy_samples, npy_variants=npy_variants,
                                count_a1=dosage_of == "A1")
        variants = source.variants
        cols = np.flatnonzero(variants["variant_id"].astype(str).isin(wanted).to_numpy())
        Z = source.read(None, cols, dtype="float32").astype(float)
        chosen = variants.iloc[cols]
        ids = chosen["variant_id"].astype(str).tolist()
        counted, other = chosen["counted_allele"].tolist(), chosen["other_allele"].tolist()
        iids = source.samples["IID"].astype(str).to_numpy()
        described = source.describe()
        records = source.input_record()
    if Z.shape[1] == 0:
        raise InputError(f"none of the map's {m.n_variants} variants is in the target (IDs like {m.variant_ids[0]!r})")
    instruments, report = apply_instrument_map(m, Z, ids, counted, other, max_missing_fraction=max_missing_fraction)
    import pandas as pd

    result = pd.DataFrame(instruments, columns=m.instrument_names)
    result.insert(0, "IID", iids)
    map_info = {"path": str(model_dir), "kind": m.kind, "learner": m.learner, "n_variants": m.n_variants,
                "n_instruments": m.n_instruments, "fitted": m.fitted}
    provenance = make_provenance(
        command=command_line(),
        parameters={"model": str(model_dir), "dosage_of": dosage_of, "max_missing_fraction": max_missing_fraction},
        seed=None, inputs=records + input_record(sorted(p for p in Path(model_dir).rglob("*") if p.is_file())),
        extra={"target": described, "map": map_info},
    )
    alignment = {"alignment": report.to_dict(), "map": map_info, "target": described, "provenance": provenance}
    with out:
        atomic_write_text(out.path / "instruments.tsv", result.to_csv(sep="\t", index=False, float_format="%.17g"))
        atomic_write_text(out.path / "alignment.json", json.dumps(alignment, indent=2, default=str))
        _provenance_file(out.path, provenance)
    if not quiet:
        click.echo(m.summary())
        click.echo(report.summary())
        click.echo(f"wrote {out.final}/instruments.tsv, alignment.json, provenance.json")


__all__ = ["apply", "fit"]
