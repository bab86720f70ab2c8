"""The common result of the genotype simulators, and its PLINK fileset writer.

Every genetic model (Balding-Nichols, coalescent, assortative mating) returns a
`GeneticSimulation`: int8 genotypes (dosage of allele 1, the PLINK "A1"
convention that bed-reader counts by default), environment labels, variant
annotations, simulated phenotypes and the truth behind them.

`write_fileset` turns it into what a user would receive from a biobank:

    genotypes.bed / .bim / .fam    PLINK 1 fileset (A1 = the counted allele)
    phenotypes.tsv                 IID, environment, exposure, outcome, age, sex
    truth.json                     theta, model parameters, causal variants, provenance
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from invariant_mr.data import MRData
from invariant_mr.errors import InputError
from invariant_mr.provenance import json_default, make_provenance

#: File names inside a simulated fileset directory.
GENOTYPE_PREFIX = "genotypes"
PHENOTYPE_FILE = "phenotypes.tsv"
TRUTH_FILE = "truth.json"


def _readonly(values, dtype=None) -> np.ndarray:
    arr = np.array(values, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class GeneticSimulation:
    """Simulated genotypes and phenotypes for n individuals and m variants.

    Parameters
    ----------
    genotypes : (n, m) int8, dosage of `allele_1` (0, 1, 2).
    env : (n,) environment labels (population or cohort names).
    sample_ids : (n,) individual ids (used as both FID and IID).
    variant_ids, chrom, pos, allele_1, allele_2 : (m,) variant annotations.
    exposure, outcome : (n,) simulated phenotypes.
    covariates : name -> (n,) exogenous covariates (age, sex coded 1/2).
    truth : JSON-ready description of the data-generating model (theta first).
    latent : name -> array of latent quantities (ancestry, confounders) kept
        in memory for benchmarks and tests; never written to disk.
    family_ids : optional (n,) family ids (the .fam FID; siblings share one).
        Defaults to the sample id (unrelated individuals).
    """

    genotypes: np.ndarray
    env: np.ndarray
    sample_ids: np.ndarray
    variant_ids: np.ndarray
    chrom: np.ndarray
    pos: np.ndarray
    allele_1: np.ndarray
    allele_2: np.ndarray
    exposure: np.ndarray
    outcome: np.ndarray
    covariates: Mapping[str, np.ndarray]
    truth: Mapping[str, Any]
    latent: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)
    family_ids: np.ndarray | None = None

    def __post_init__(self):
        G = np.asarray(self.genotypes)
        if G.ndim != 2:
            raise InputError(f"genotypes must be 2-D, got shape {G.shape}")
        n, m = G.shape
        object.__setattr__(self, "genotypes", _readonly(G, np.int8))
        for name in ("env", "sample_ids"):
            arr = _readonly(getattr(self, name), object)
            if arr.shape != (n,):
                raise InputError(f"{name} has shape {arr.shape}, expected ({n},)")
            object.__setattr__(self, name, arr)
        for name, dtype in (("variant_ids", object), ("chrom", object), ("pos", np.int64),
                            ("allele_1", object), ("allele_2", object)):
            arr = _readonly(getattr(self, name), dtype)
            if arr.shape != (m,):
                raise InputError(f"{name} has shape {arr.shape}, expected ({m},)")
            object.__setattr__(self, name, arr)
        for name in ("exposure", "outcome"):
            arr = _readonly(getattr(self, name), float)
            if arr.shape != (n,):
                raise InputError(f"{name} has shape {arr.shape}, expected ({n},)")
            object.__setattr__(self, name, arr)
        if self.family_ids is not None:
            fam = _readonly(self.family_ids, object)
            if fam.shape != (n,):
                raise InputError(f"family_ids has shape {fam.shape}, expected ({n},)")
            object.__setattr__(self, "family_ids", fam)
        covs = {}
        for key, values in self.covariates.items():
            arr = _readonly(values)
            if arr.shape != (n,):
                raise InputError(f"covariate {key!r} has shape {arr.shape}, expected ({n},)")
            covs[key] = arr
        object.__setattr__(self, "covariates", covs)
        if len(set(self.sample_ids.tolist())) != n:
            raise InputError("simulated sample ids are not unique")
        if len(set(self.variant_ids.tolist())) != m:
            raise InputError("simulated variant ids are not unique")

    @property
    def n(self) -> int:
        return self.genotypes.shape[0]

    @property
    def m(self) -> int:
        return self.genotypes.shape[1]

    @property
    def theta(self) -> float:
        return float(self.truth["theta"])

    @property
    def env_levels(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.env.tolist()), key=str))

    def to_mrdata(self, *, include_covariates: bool = False, families: bool = False) -> MRData:
        """All variants as instruments (the user's starting point before any selection).

        `families=True` carries the family IDs as the cluster labels (what
        `run --family-col FID` does): SEs clustered by family, and the
        within-family methods can run.
        """
        if families and self.family_ids is None:
            raise InputError("this simulation has no family IDs (unrelated individuals)")
        cov_names = tuple(self.covariates) if include_covariates and self.covariates else None
        covariates = (
            np.column_stack([self.covariates[k] for k in cov_names]).astype(float) if cov_names else None
        )
        return MRData(
            Z=self.genotypes.astype(float),
            exposure=self.exposure,
            outcome=self.outcome,
            env=self.env,
            covariates=covariates,
            covariate_names=cov_names,
            sample_ids=self.sample_ids,
            instrument_names=tuple(str(v) for v in self.variant_ids),
            clusters=self.family_ids if families else None,
        )

    def summary(self) -> str:
        counts = {lv: int((self.env == lv).sum()) for lv in self.env_levels}
        per_env = ", ".join(f"{k}: {v}" for k, v in counts.items())
        return (
            f"{self.truth.get('model', 'genetic')} simulation: {self.n} individuals x {self.m} variants "
            f"({per_env}); theta = {self.theta:g}"
        )


#: Genetic models of `simulate_genetic`: name -> (module, function).
GENETIC_MODELS: dict[str, tuple[str, str]] = {
    "balding-nichols": ("invariant_mr.simulation.balding_nichols", "simulate_balding_nichols"),
    "coalescent": ("invariant_mr.simulation.coalescent", "simulate_coalescent"),
    "assortative": ("invariant_mr.simulation.assortative", "simulate_assortative"),
    "sibships": ("invariant_mr.simulation.sibships", "simulate_sibships"),
    "demes": ("invariant_mr.simulation.structured", "simulate_demes"),
    "nonlinear-ancestry": ("invariant_mr.simulation.structured", "simulate_nonlinear_ancestry"),
}


def simulate_genetic(model: str, **params) -> GeneticSimulation:
    """Simulate one of `GENETIC_MODELS`; the entry point of `invariant-mr simulate`.

    `params` are the model function's keyword arguments. The CLI passes every
    simulate option it has, so options a model does not take (e.g. `fst` for
    the coalescent model) and options left at None are dropped here; the
    model's own defaults then apply.
    """
    import importlib
    import inspect

    if model not in GENETIC_MODELS:
        raise InputError(f"unknown genetic model {model!r}; choose from {', '.join(GENETIC_MODELS)}")
    module_name, func_name = GENETIC_MODELS[model]
    func = getattr(importlib.import_module(module_name), func_name)
    accepted = inspect.signature(func).parameters
    kwargs = {k: v for k, v in params.items() if k in accepted and v is not None}
    return func(**kwargs)


def write_fileset(
    sim: GeneticSimulation,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    command: str = "python-api",
) -> Path:
    """Write the PLINK fileset, phenotypes.tsv and truth.json into `out_dir`.

    Atomic: everything is written into a staging directory next to `out_dir`
    and renamed into place, so an interrupted call leaves no partial fileset.
    An existing `out_dir` is refused unless `overwrite=True`.
    """
    from invariant_mr.io.output import OutputDirectory

    out = OutputDirectory(out_dir, overwrite=overwrite)
    out.check()
    with out:
        write_fileset_into(sim, out.path, command=command)
    return Path(out_dir)


def write_fileset_into(sim: GeneticSimulation, directory: str | os.PathLike, *, command: str = "python-api") -> None:
    """Write the fileset into an existing (staging) directory; `write_fileset` is the atomic wrapper."""
    from bed_reader import to_bed

    staging = Path(directory)
    ids = [str(s) for s in sim.sample_ids]
    sex = sim.covariates.get("sex")
    to_bed(
        staging / f"{GENOTYPE_PREFIX}.bed",
        # bed-reader's Rust writer insists on a writeable buffer; ours is read-only.
        np.array(sim.genotypes, order="C"),
        properties={
            "fid": ids if sim.family_ids is None else [str(f) for f in sim.family_ids],
            "iid": ids,
            "sex": [int(s) for s in sex] if sex is not None else [0] * sim.n,
            "chromosome": [str(c) for c in sim.chrom],
            "sid": [str(v) for v in sim.variant_ids],
            "bp_position": sim.pos.astype(np.int64),
            "cm_position": np.zeros(sim.m),
            "allele_1": [str(a) for a in sim.allele_1],
            "allele_2": [str(a) for a in sim.allele_2],
        },
        count_A1=True,
        num_threads=1,
    )
    _write_phenotypes(sim, staging / PHENOTYPE_FILE)
    truth = {
        **dict(sim.truth),
        "files": {
            "bfile": GENOTYPE_PREFIX,
            "phenotypes": PHENOTYPE_FILE,
            "counted_allele": "A1 (allele_1, column 5 of the .bim)",
            "id_column": "IID",
            "environment_column": "environment",
            "exposure_column": "exposure",
            "outcome_column": "outcome",
            "covariate_columns": list(sim.covariates),
        },
        "provenance": make_provenance(
            command=command, parameters=dict(sim.truth.get("parameters", {})),
            seed=sim.truth.get("seed"),
        ),
    }
    with open(staging / TRUTH_FILE, "w") as fh:
        json.dump(truth, fh, indent=2, default=json_default)
        fh.write("\n")


def _write_phenotypes(sim: GeneticSimulation, path: Path) -> None:
    import pandas as pd

    table = pd.DataFrame(
        {
            "IID": [str(s) for s in sim.sample_ids],
            "environment": [str(e) for e in sim.env],
            "exposure": sim.exposure,
            "outcome": sim.outcome,
            **{k: v for k, v in sim.covariates.items()},
        }
    )
    # Default float formatting is the shortest repr: the values read back bit for bit.
    table.to_csv(path, sep="\t", index=False)
