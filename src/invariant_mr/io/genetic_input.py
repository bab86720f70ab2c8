"""Genotypes + phenotype table + options -> `MRData`, QC report and provenance.

The one function a PLINK (or .npy) analysis needs before estimation:

    open genotypes -> read phenotypes -> join by sample ID -> select variants
    -> read only the matched samples x selected variants -> QC -> MRData

Every step's counts are kept (`SampleAccounting`, `VariantSelection`,
`QCReport`) so the run's provenance says exactly what was analysed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from invariant_mr.data import MIN_SAMPLES_PER_ENV, MRData, StreamedMRData
from invariant_mr.errors import InputError
from invariant_mr.io.genotype_sources import open_genotypes
from invariant_mr.io.genotypes import VariantSelection, unique_variant_names
from invariant_mr.io.phenotypes import (
    PhenotypeColumns,
    SampleAccounting,
    check_environment_sizes,
    match_phenotypes,
    MISSING_CODES,
    read_phenotype_table,
)
from invariant_mr.io.qc import QCReport, QCThresholds
from invariant_mr.provenance import input_record
from invariant_mr.io.streamed_genotypes import READ_BLOCK_BYTES, StreamedGenotypes
from invariant_mr.io.streamed_qc import read_qc_dosages, streamed_genotype_qc

#: --streaming auto streams when the float64 instrument matrix (8 n p bytes) exceeds this share
#: of --memory-gb: the in-memory methods hold a few copies of it.
STREAMING_AUTO_SHARE = 0.25
#: Default --memory-gb.
DEFAULT_MEMORY_GB = 8.0


@dataclass(frozen=True)
class GeneticAnalysisInput:
    """Everything the estimation and the outputs need from a genotype + phenotype load.

    `variants` describes the analysed instruments (one row per column of
    `data.Z`, in order): name, ID, chromosome, position, counted and other allele.
    """

    data: MRData | StreamedMRData
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
            "genotypes": dict(self.parameters.get("genotype_source", {})),
            "streaming": dict(self.parameters.get("streaming", {})),
        }

    def summary(self) -> str:
        return "\n".join([self.samples.summary(), self.qc.summary()])


def streaming_decision(mode: str, n: int, p: int, memory_gb: float) -> tuple[bool, str]:
    """Whether to stream (`--streaming auto|on|off`) an n x p analysis within `memory_gb`, and why."""
    if mode not in ("auto", "on", "off"):
        raise InputError(f"--streaming must be auto, on or off, got {mode!r}")
    if memory_gb <= 0:
        raise InputError(f"--memory-gb must be positive, got {memory_gb}")
    need = 8.0 * n * p
    budget = STREAMING_AUTO_SHARE * memory_gb * 2**30
    if mode != "auto":
        return mode == "on", f"--streaming {mode}"
    if need > budget:
        return True, (f"auto: the float64 instruments ({need / 2**30:.2f} GiB) exceed {STREAMING_AUTO_SHARE:g} x "
                      f"--memory-gb {memory_gb:g}")
    return False, f"auto: the float64 instruments ({need / 2**30:.2f} GiB) fit in {STREAMING_AUTO_SHARE:g} x --memory-gb {memory_gb:g}"


def samples_in_file(path: str | os.PathLike, samples, option: str) -> np.ndarray:
    """Which of `samples` (FID, IID columns) a PLINK --keep/--remove file lists.

    Lines are "FID IID" (PLINK 1) or "IID" (PLINK 2 allows one column); a
    header starting with # and empty lines are skipped. With two columns both
    IDs must match; a file with no sample of the data is refused, since a
    --keep that matches nothing is almost surely the wrong file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option} {path}: file not found")
    pairs, iids = set(), set()
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) == 1:
                iids.add(fields[0])
            else:
                pairs.add((fields[0], fields[1]))
    if not pairs and not iids:
        raise InputError(f"{option} {path}: lists no samples (one 'FID IID' or 'IID' per line)")
    fid = samples["FID"].astype(str).to_numpy()
    iid = samples["IID"].astype(str).to_numpy()
    hit = np.isin(iid, list(iids)) if iids else np.zeros(iid.size, dtype=bool)
    if pairs:
        hit |= np.array([(f, i) in pairs for f, i in zip(fid, iid)], dtype=bool)
    if not hit.any():
        example = next(iter(pairs)) if pairs else next(iter(iids))
        raise InputError(
            f"{option} {path}: none of its samples (e.g. {' '.join(example) if pairs else example}) is among the "
            f"genotyped samples with phenotypes (e.g. {fid[0]} {iid[0]}); check the FID/IID columns"
        )
    return hit


def _join_extra_covariates(matched, extra: pd.DataFrame, min_samples_per_env: int, env_col: str):
    """Append the numeric columns of `extra` (keyed by IID) to the covariates of the matched samples."""
    names = [c for c in extra.columns if c not in ("FID", "IID")]
    unique = extra.drop_duplicates("IID")
    table = unique.set_index(unique["IID"].astype(str))
    values = table.reindex([str(i) for i in matched.sample_ids])[names].to_numpy(dtype=float)
    found = ~np.isnan(values).any(axis=1)
    if not found.all():
        matched = matched.subset(found, "no genome-wide PCs (--pcs-from) for the sample")
        values = values[found]
        check_environment_sizes(matched.env, min_samples_per_env, env_col, "after joining --pcs-from")
    clash = [c for c in names if c in matched.covariate_names]
    if clash:
        raise InputError(f"--pcs-from adds {', '.join(clash)}, which --covar already gives; drop one of them")
    covariates = values if matched.covariates is None else np.hstack([matched.covariates, values])
    return replace(matched, covariates=covariates, covariate_names=tuple(matched.covariate_names) + tuple(names))


#: The most samples one FID may hold and still name a family (siblings, trios, small pedigrees). Some
#: biobanks write a cohort, site or batch code, or 0, in the FID column; such groups are far larger.
MAX_FAMILY_SIZE = 20


def family_sizes(fids) -> pd.Series | None:
    """Samples per FID (largest first) when the FIDs describe families: some FID is shared by two or
    more samples and none by more than `MAX_FAMILY_SIZE`; None otherwise (an FID equal to the IID, the
    usual code for unrelated samples, shares nothing)."""
    counts = pd.Series(np.asarray(fids, dtype=object)).astype(str).str.strip().value_counts()
    return counts if len(counts) and 2 <= counts.iloc[0] <= MAX_FAMILY_SIZE else None


def plink_family_ids(*, bfile=None, pfile=None) -> np.ndarray | None:
    """The FIDs of a PLINK fileset's sample file (.fam, or a .psam with an FID column); None otherwise."""
    from invariant_mr.io.genotype_sources import _read_psam
    from invariant_mr.io.genotypes import read_fam, resolve_bfile_prefix

    if bfile is not None:
        prefix = resolve_bfile_prefix(bfile)
        fam = prefix.with_name(prefix.name + ".fam")
        return read_fam(fam)["FID"].to_numpy(dtype=object) if fam.exists() else None
    if pfile is not None:
        psam = Path(str(pfile).removesuffix(".pgen").removesuffix(".psam").removesuffix(".pvar") + ".psam")
        if not psam.exists():
            return None
        samples, has_fid = _read_psam(psam)
        return samples["FID"].to_numpy(dtype=object) if has_fid else None
    return None


def load_genetic_data(
    *,
    pheno: str | os.PathLike,
    env_col: str,
    exposure: str,
    outcome: str,
    bfile: str | os.PathLike | None = None,
    pfile: str | os.PathLike | None = None,
    bgen: str | os.PathLike | None = None,
    sample: str | os.PathLike | None = None,
    vcf: str | os.PathLike | None = None,
    vcf_dosage: str | None = None,
    pfile_hardcalls: bool = False,
    npy: str | os.PathLike | None = None,
    npy_samples: str | os.PathLike | None = None,
    npy_variants: str | os.PathLike | None = None,
    covariates: Sequence[str] = (),
    iid_col: str | None = None,
    fid_col: str | None = None,
    id_match: str = "auto",
    extract: str | os.PathLike | None = None,
    region: str | None = None,
    min_info: float | None = None,
    exclude: str | os.PathLike | None = None,
    chromosomes: str | None = None,
    keep: str | os.PathLike | None = None,
    remove: str | os.PathLike | None = None,
    qc: QCThresholds | None = None,
    min_samples_per_env: int = MIN_SAMPLES_PER_ENV,
    count_a1: bool = True,
    hash_inputs: bool = True,
    missing_codes: Sequence[str] = MISSING_CODES,
    cluster: str | None = None,
    streaming: str = "off",
    memory_gb: float = DEFAULT_MEMORY_GB,
    subsample_rows: int = 20_000,
    seed: int = 0,
    block_rows: int | None = None,
    extra_covariates: pd.DataFrame | None = None,
) -> GeneticAnalysisInput:
    """Load genotypes (`bfile`, `pfile`, `bgen` + `sample`, `vcf` or `npy`) with a phenotype table.

    Only the samples present in both files (and with a non-missing exposure,
    outcome, environment and covariates) and only the selected variants
    (`extract`: a file of variant IDs; `region`: CHROM[:START-END];
    `min_info`: imputation INFO at least this, for formats that carry it;
    `chromosomes`: PLINK's --chr, e.g. "1-22"; less the IDs in the file
    `exclude`) are read; `keep`/`remove` are PLINK sample files (FID IID, or
    IID, per line) of the samples to analyse or leave out, counted in the
    sample accounting. QC (`qc`, see `invariant_mr.io.qc`) is computed in streamed
    passes over row blocks (`streamed_qc`), so it never holds an n x p float
    copy; the environment sizes are checked again after sample QC.
    `cluster` names a phenotype column of cluster labels (e.g. family ID;
    samples without one are dropped and counted) carried into the data.

    `streaming` ("off", "on" or "auto": on when 8 n p bytes exceed
    `STREAMING_AUTO_SHARE` x `memory_gb` GiB) chooses the result: an `MRData`
    holding the imputed float64 instruments, or a `StreamedMRData` that reads
    them from the file in row blocks of `block_rows` rows whenever a method
    needs them; `subsample_rows` and `seed` fix the rows that methods which need
    rows in memory get.
    """
    if min_samples_per_env < 2:
        raise InputError(f"--min-env-samples must be at least 2, got {min_samples_per_env}")
    thresholds = qc or QCThresholds()
    source = open_genotypes(
        bfile=bfile, pfile=pfile, bgen=bgen, sample=sample, vcf=vcf, npy=npy, npy_samples=npy_samples,
        npy_variants=npy_variants, count_a1=count_a1, pfile_hardcalls=pfile_hardcalls, vcf_dosage=vcf_dosage,
        extract=extract, region=region, min_info=min_info, exclude=exclude, chromosomes=chromosomes,
    )
    pheno_path = Path(pheno)
    table = read_phenotype_table(pheno_path, missing_codes)
    # `--family-col FID` with no FID column in the phenotypes: the families are the genotype file's FIDs (.fam).
    fid_from_genotypes = (cluster is not None and cluster.lstrip("#").upper() == "FID"
                          and cluster not in table.columns)
    if fid_from_genotypes and not source.has_fid:
        raise InputError(f"--family-col {cluster}: {pheno} has no such column and the genotype file names no "
                         "families (VCF, BGEN without FIDs, .psam without FID); give a family column in --pheno")
    columns = PhenotypeColumns(
        env=env_col, exposure=exposure, outcome=outcome, covariates=tuple(covariates), iid=iid_col, fid=fid_col,
        cluster=None if fid_from_genotypes else cluster,
    )
    if source.format == "npy" and not source.ids_from_file:
        if id_match not in ("auto", "row_order"):
            raise InputError(f"--id-match {id_match}: the .npy genotypes have no sample IDs (give --npy-samples)")
        id_match = "row_order"
    elif id_match == "auto" and not source.has_fid:
        # VCF, BGEN without FIDs, a .psam without FID: the file's FID is the IID, so join on IID.
        id_match = "iid"
    matched = match_phenotypes(
        source.samples, table, columns, source=str(pheno_path), id_match=id_match,
        min_samples_per_env=min_samples_per_env,
    )
    for path, listed, why in ((keep, True, "not in --keep"), (remove, False, "in --remove")):
        if path is not None:
            hit = samples_in_file(path, source.samples.iloc[matched.genotype_rows], "--keep" if listed else "--remove")
            matched = matched.subset(hit if listed else ~hit, f"{why} {Path(path).name}")
            check_environment_sizes(matched.env, min_samples_per_env, env_col,
                                    f"after {'--keep' if listed else '--remove'}")
    if fid_from_genotypes:
        fids = source.samples["FID"].astype(str).str.strip().to_numpy(dtype=object)
        matched = replace(matched, clusters=fids[np.asarray(matched.genotype_rows, dtype=np.intp)])
    if extra_covariates is not None:
        matched = _join_extra_covariates(matched, extra_covariates, min_samples_per_env, env_col)
    selection = source.selection
    variant_table = source.variants.drop(columns=["info"]).copy()
    if source.has_info:
        variant_table["info"] = source.info_scores()
    variant_table.insert(0, "name", unique_variant_names(variant_table))
    genotype_rows = np.asarray(matched.genotype_rows, dtype=np.intp)
    # 64 MB raw blocks: QC holds a block plus a few same-sized masks, so this sets its peak.
    qc_result = streamed_genotype_qc(source, genotype_rows, matched.env, thresholds, variant_table=variant_table,
                                     block_bytes=READ_BLOCK_BYTES)
    if not qc_result.sample_mask.all():
        matched = matched.subset(
            qc_result.sample_mask, f"genotype missing rate > {thresholds.max_sample_missing:g} (--mind)"
        )
        check_environment_sizes(matched.env, min_samples_per_env, env_col, "after sample QC (--mind)")
    kept_variants = variant_table[qc_result.variant_mask].reset_index(drop=True)
    n, p = int(qc_result.rows.size), int(qc_result.variant_positions.size)
    stream, why = streaming_decision(streaming, n, p, memory_gb)
    if stream:
        genotypes = StreamedGenotypes.from_qc(source, genotype_rows, qc_result, block_rows=block_rows)
        data = StreamedMRData(
            genotypes=genotypes, exposure=matched.exposure, outcome=matched.outcome, env=matched.env,
            covariates=matched.covariates, sample_ids=matched.sample_ids,
            instrument_names=tuple(kept_variants["name"]), covariate_names=matched.covariate_names or None,
            min_samples_per_env=min_samples_per_env, clusters=matched.clusters,
            subsample_rows=subsample_rows, seed=seed,
        )
    else:
        data = MRData(
            Z=read_qc_dosages(source, genotype_rows, qc_result, block_bytes=READ_BLOCK_BYTES),
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
    paths = [Path(p_) for p_ in source.input_paths()] + [pheno_path] + [
        Path(f) for f in (extract, exclude, keep, remove) if f is not None]
    inputs = input_record(paths) if hash_inputs else [{"path": str(p_), "bytes": p_.stat().st_size} for p_ in paths]
    main_input = {"plink1": getattr(source, "prefix", None), "plink2": getattr(source, "prefix", None)}.get(
        source.format
    ) or source.path
    parameters = {
        "genotypes": str(main_input),
        "genotype_format": source.format,
        "dosage_of": source.counted_allele_rule,
        "genotype_source": source.describe(),
        "streaming": {
            "streamed": stream,
            "reason": why,
            "memory_gb": memory_gb,
            **({"subsample_rows": min(int(subsample_rows), n), "subsample_seed": seed,
                **data.genotypes.describe()} if stream else {}),
        },
        "pheno": str(pheno_path),
        "env_col": env_col,
        "exposure": exposure,
        "outcome": outcome,
        "covariates": list(covariates),
        "covariate_columns": list(matched.covariate_names),
        "cluster": cluster,
        **({"families_from": "genotype file FID"} if fid_from_genotypes else {}),
        "id_match": matched.accounting.match_key,
        "extract": None if extract is None else str(extract),
        "region": region,
        "exclude": None if exclude is None else str(exclude),
        "chromosomes": chromosomes,
        "keep": None if keep is None else str(keep),
        "remove": None if remove is None else str(remove),
        "min_info": min_info,
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
