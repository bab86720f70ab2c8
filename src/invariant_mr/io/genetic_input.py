"""Genotypes + phenotype table + options -> `MRData`, QC report and provenance.

The one function a PLINK (or .npy) analysis needs before estimation:

    open genotypes -> read phenotypes -> join by sample ID -> select variants
    -> read only the matched samples x selected variants -> QC -> MRData

Every step's counts are kept (`SampleAccounting`, `VariantSelection`,
`QCReport`) so the run's provenance says exactly what was analysed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import pandas as pd

from invariant_mr.data import MIN_SAMPLES_PER_ENV, MRData
from invariant_mr.errors import InputError
from invariant_mr.io.genotypes import (
    DEFAULT_CHUNK_VARIANTS,
    VariantSelection,
    open_genotypes,
    read_variant_id_file,
    select_variants,
    unique_variant_names,
)
from invariant_mr.io.phenotypes import (
    PhenotypeColumns,
    SampleAccounting,
    check_environment_sizes,
    match_phenotypes,
    MISSING_CODES,
    read_phenotype_table,
)
from invariant_mr.provenance import input_record
from invariant_mr.io.qc import QCReport, QCThresholds, run_genotype_qc


@dataclass(frozen=True)
class GeneticAnalysisInput:
    """Everything the estimation and the outputs need from a genotype + phenotype load.

    `variants` describes the analysed instruments (one row per column of
    `data.Z`, in order): name, ID, chromosome, position, counted and other allele.
    """

    data: MRData
    qc: QCReport
    samples: SampleAccounting
    selection: VariantSelection
    variants: pd.DataFrame = field(repr=False, compare=False)
    inputs: tuple[Mapping[str, Any], ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # Plain dicts (not read-only proxies) so they serialise to JSON as they are.
        object.__setattr__(self, "inputs", tuple(dict(i) for i in self.inputs))
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))

    def provenance(self) -> dict:
        """The `extra_provenance` block for `run_analysis`: sample, variant and QC accounting."""
        counted = self.variants["counted_allele"]
        return {
            "samples": self.samples.to_dict(),
            "variant_selection": self.selection.to_dict(),
            "qc": self.qc.to_dict(),
            "allele_coding": {
                "dosage_of": self.parameters.get("dosage_of"),
                "counted_allele_per_variant": "qc.tsv column counted_allele",
                "n_variants_with_known_allele": int(counted.notna().sum()),
            },
            "dropped_instruments_in_mrdata": list(self.data.dropped_instruments),
        }

    def summary(self) -> str:
        return "\n".join([self.samples.summary(), self.qc.summary()])


def load_genetic_data(
    *,
    pheno: str | os.PathLike,
    env_col: str,
    exposure: str,
    outcome: str,
    bfile: str | os.PathLike | None = None,
    npy: str | os.PathLike | None = None,
    npy_samples: str | os.PathLike | None = None,
    npy_variants: str | os.PathLike | None = None,
    covariates: Sequence[str] = (),
    iid_col: str | None = None,
    fid_col: str | None = None,
    id_match: str = "auto",
    extract: str | os.PathLike | None = None,
    region: str | None = None,
    qc: QCThresholds | None = None,
    min_samples_per_env: int = MIN_SAMPLES_PER_ENV,
    count_a1: bool = True,
    chunk_variants: int = DEFAULT_CHUNK_VARIANTS,
    hash_inputs: bool = True,
    missing_codes: Sequence[str] = MISSING_CODES,
    cluster: str | None = None,
) -> GeneticAnalysisInput:
    """Load a PLINK 1 fileset (`bfile` prefix) or a .npy matrix with a phenotype table into `MRData`.

    Only the samples present in both files (and with a non-missing exposure,
    outcome, environment and covariates) and only the selected variants
    (`extract`: a file of variant IDs; `region`: CHROM[:START-END]) are read
    from disk. QC (`qc`, see `invariant_mr.io.qc`) runs on that block; the
    environment sizes are checked again after sample QC. `cluster` names a
    phenotype column of cluster labels (e.g. family ID; samples without one are
    dropped and counted) carried into `MRData.clusters`.
    """
    if min_samples_per_env < 2:
        raise InputError(f"--min-env-samples must be at least 2, got {min_samples_per_env}")
    thresholds = qc or QCThresholds()
    source = open_genotypes(
        bfile=bfile, npy=npy, npy_samples=npy_samples, npy_variants=npy_variants, count_a1=count_a1
    )
    pheno_path = Path(pheno)
    table = read_phenotype_table(pheno_path, missing_codes)
    columns = PhenotypeColumns(
        env=env_col, exposure=exposure, outcome=outcome, covariates=tuple(covariates), iid=iid_col, fid=fid_col,
        cluster=cluster,
    )
    if source.source_kind == "npy" and not source.ids_from_file:
        if id_match not in ("auto", "row_order"):
            raise InputError(f"--id-match {id_match}: the .npy genotypes have no sample IDs (give --npy-samples)")
        id_match = "row_order"
    matched = match_phenotypes(
        source.sample_table, table, columns, source=str(pheno_path), id_match=id_match,
        min_samples_per_env=min_samples_per_env,
    )
    source_name = str(getattr(source, "bim_path", None) or source.path)
    selection = select_variants(
        source.variant_table,
        extract=None if extract is None else read_variant_id_file(extract),
        region=region,
        source=source_name,
    )
    genotypes = source.read(matched.genotype_rows, selection.indices, chunk_variants=chunk_variants)
    variant_table = source.variant_table.iloc[selection.indices].reset_index(drop=True)
    variant_table.insert(0, "name", unique_variant_names(variant_table))
    qc_result = run_genotype_qc(genotypes, matched.env, variant_table, thresholds)
    del genotypes
    if not qc_result.sample_mask.all():
        matched = matched.subset(
            qc_result.sample_mask, f"genotype missing rate > {thresholds.max_sample_missing:g} (--mind)"
        )
        check_environment_sizes(matched.env, min_samples_per_env, env_col, "after sample QC (--mind)")
    kept_variants = variant_table[qc_result.variant_mask].reset_index(drop=True)
    data = MRData(
        Z=qc_result.dosages,
        exposure=matched.exposure,
        outcome=matched.outcome,
        env=matched.env,
        covariates=matched.covariates,
        sample_ids=matched.sample_ids,
        instrument_names=tuple(kept_variants["name"]),
        covariate_names=matched.covariate_names or None,
        min_samples_per_env=min_samples_per_env,
        clusters=matched.clusters,
    )
    if data.dropped_instruments:
        kept_variants = kept_variants[kept_variants["name"].isin(data.instrument_names)].reset_index(drop=True)
    paths = source.input_paths() + [pheno_path] + ([Path(extract)] if extract is not None else [])
    inputs = (
        input_record(paths)
        if hash_inputs
        else [{"path": str(p), "bytes": p.stat().st_size} for p in paths]
    )
    parameters = {
        "genotypes": str(source.prefix) if source.source_kind == "plink1" else str(source.path),
        "genotype_format": source.source_kind,
        "dosage_of": ("A1 (.bim column 5)" if count_a1 else "A2 (.bim column 6)")
        if source.source_kind == "plink1"
        else "as stored in the .npy matrix",
        "pheno": str(pheno_path),
        "env_col": env_col,
        "exposure": exposure,
        "outcome": outcome,
        "covariates": list(covariates),
        "covariate_columns": list(matched.covariate_names),
        "cluster": cluster,
        "id_match": matched.accounting.match_key,
        "extract": None if extract is None else str(extract),
        "region": region,
        "min_samples_per_env": min_samples_per_env,
        "qc": thresholds.to_dict(),
        "missing_codes": list(missing_codes),
    }
    return GeneticAnalysisInput(
        data=data,
        qc=qc_result.report,
        samples=matched.accounting,
        selection=selection,
        variants=kept_variants,
        inputs=tuple(inputs),
        parameters=parameters,
    )
