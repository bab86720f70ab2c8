"""Genotype quality control with an account of everything removed.

Order of the steps (each on what the previous ones kept), as in the usual
PLINK QC sequence:

1. variants with a missing-call rate above `max_variant_missing` (PLINK --geno);
2. samples with a missing-call rate above `max_sample_missing` (PLINK --mind),
   computed over the variants that passed step 1;
3. variants with no observed call in some environment (they cannot be
   imputed within that environment);
4. monomorphic variants (one observed value);
5. variants with pooled minor-allele frequency below `min_maf` (PLINK --maf);
6. variants whose MAF within some environment is below `min_maf_per_env`;
7. the remaining missing calls are set to the variant's mean dosage *within
   the sample's environment*: a pooled mean would pull every environment
   towards the pooled frequency and create spurious cross-environment shifts
   that invariant methods would pick up;
8. optionally, every variant is centred and scaled with its pooled mean and
   SD. Pooled (not per-environment) so the across-environment shifts that
   identify invariant directions are kept; IV estimates do not change.

Defaults follow common GWAS/MR practice (call rate 95% per variant and per
sample, MAF >= 1%). Every threshold is a field of `QCThresholds`.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:  # pandas is imported where a table is built: the CLI reads the QC defaults at start-up
    import pandas as pd

from invariant_mr.errors import InputError

#: The flags that set each threshold, named in messages.
THRESHOLD_FLAGS = {
    "max_variant_missing": "--geno",
    "max_sample_missing": "--mind",
    "min_maf": "--maf",
    "min_maf_per_env": "--maf-env",
}


@dataclass(frozen=True)
class QCThresholds:
    """QC settings. A variant/sample is removed when its rate is strictly above a
    missingness threshold, or its MAF strictly below a MAF threshold (as in PLINK)."""

    max_variant_missing: float = 0.05
    max_sample_missing: float = 0.05
    min_maf: float = 0.01
    min_maf_per_env: float = 0.0
    standardize: bool = False

    def __post_init__(self):
        for name in ("max_variant_missing", "max_sample_missing"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{THRESHOLD_FLAGS[name]} must be between 0 and 1, got {value}")
        for name in ("min_maf", "min_maf_per_env"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.5:
                raise InputError(f"{THRESHOLD_FLAGS[name]} must be between 0 and 0.5, got {value}")
        object.__setattr__(self, "standardize", bool(self.standardize))

    def to_dict(self) -> dict:
        return asdict(self)


#: Variant removal reasons, in the order they are checked.
VARIANT_REASONS = ("variant_missingness", "all_missing_in_env", "monomorphic", "maf", "maf_env")


@dataclass(frozen=True)
class QCReport:
    """What QC kept and removed. Immutable; `variant_table()` returns a fresh copy each call."""

    thresholds: QCThresholds
    n_samples_in: int
    n_samples_out: int
    n_variants_in: int
    n_variants_out: int
    removed_variants: Mapping[str, int]
    removed_samples: Mapping[str, int]
    n_imputed_calls: int
    environments: tuple[str, ...]
    _table: pd.DataFrame = field(repr=False, compare=False, default=None)

    def __post_init__(self):
        object.__setattr__(self, "removed_variants", MappingProxyType(dict(self.removed_variants)))
        object.__setattr__(self, "removed_samples", MappingProxyType(dict(self.removed_samples)))
        object.__setattr__(self, "environments", tuple(self.environments))

    def variant_table(self) -> pd.DataFrame:
        """One row per variant that entered QC: ID, alleles, missing rate, MAFs, status, reason."""
        return self._table.copy()

    def to_tsv(self) -> str:
        buf = io.StringIO()
        self._table.to_csv(buf, sep="\t", index=False, na_rep="NA", float_format="%.6g", lineterminator="\n")
        return buf.getvalue()

    def to_dict(self) -> dict:
        return {
            "thresholds": self.thresholds.to_dict(),
            "n_samples_in": self.n_samples_in,
            "n_samples_out": self.n_samples_out,
            "n_variants_in": self.n_variants_in,
            "n_variants_out": self.n_variants_out,
            "removed_variants": dict(self.removed_variants),
            "removed_samples": dict(self.removed_samples),
            "n_imputed_calls": self.n_imputed_calls,
            "environments": list(self.environments),
        }

    def summary(self) -> str:
        t = self.thresholds
        lines = [
            f"QC: {self.n_variants_out}/{self.n_variants_in} variants and "
            f"{self.n_samples_out}/{self.n_samples_in} samples kept; {self.n_imputed_calls} missing calls "
            "imputed with the environment mean" + ("; dosages standardised (pooled)" if t.standardize else ""),
        ]
        labels = _reason_labels(t)
        for key, count in self.removed_variants.items():
            if count:
                lines.append(f"  removed {count} variant(s): {labels[key]}")
        if self.removed_samples.get("sample_missingness"):
            lines.append(
                f"  removed {self.removed_samples['sample_missingness']} sample(s): "
                f"missing rate > {t.max_sample_missing:g} (--mind)"
            )
        return "\n".join(lines)


def _reason_labels(t: QCThresholds) -> dict[str, str]:
    return {
        "variant_missingness": f"missing rate > {t.max_variant_missing:g} (--geno)",
        "all_missing_in_env": "no observed call in an environment",
        "monomorphic": "monomorphic",
        "maf": f"MAF < {t.min_maf:g} (--maf)",
        "maf_env": f"MAF < {t.min_maf_per_env:g} in an environment (--maf-env)",
    }


@dataclass(frozen=True)
class QCResult:
    """QC output: imputed float64 dosages of kept samples x kept variants, the masks, the report."""

    dosages: np.ndarray
    sample_mask: np.ndarray
    variant_mask: np.ndarray
    report: QCReport


def _env_levels(env: np.ndarray) -> tuple[list[str], np.ndarray]:
    labels = np.asarray(env).astype(str)
    levels, codes = np.unique(labels, return_inverse=True)
    return [str(lv) for lv in levels], codes


def run_genotype_qc(
    genotypes: np.ndarray,
    env: np.ndarray,
    variant_table: pd.DataFrame,
    thresholds: QCThresholds | None = None,
) -> QCResult:
    """Apply the QC steps (module docstring) to an (n, p) dosage matrix with NaN for missing calls.

    `variant_table` has one row per column (`variant_id` and, where known,
    `chrom`, `pos`, `counted_allele`, `other_allele`). Raises `InputError`
    when QC removes every variant or every sample.
    """
    t = thresholds or QCThresholds()
    G = np.asarray(genotypes)
    if G.ndim != 2:
        raise InputError(f"genotype matrix must be 2-D, got shape {G.shape}")
    n, p = G.shape
    env = np.asarray(env, dtype=object)
    if env.shape != (n,):
        raise InputError(f"environment labels have shape {env.shape}, expected ({n},)")
    if len(variant_table) != p:
        raise InputError(f"variant table has {len(variant_table)} rows for {p} genotype columns")

    missing = np.isnan(G)
    variant_missing_rate = missing.mean(axis=0) if n else np.zeros(p)
    reason = np.full(p, "", dtype=object)
    reason[variant_missing_rate > t.max_variant_missing] = "variant_missingness"
    passed_missing = reason == ""

    # Sample call rate over the variants that passed the variant call-rate filter.
    if passed_missing.any():
        sample_missing_rate = missing[:, passed_missing].mean(axis=1)
    else:
        sample_missing_rate = np.zeros(n)
    sample_mask = sample_missing_rate <= t.max_sample_missing
    n_samples_removed = int((~sample_mask).sum())
    if not sample_mask.any():
        raise InputError(
            f"QC removed all {n} samples: every sample has a missing rate above {t.max_sample_missing:g} "
            "(--mind); raise --mind or check the genotype file"
        )

    if sample_mask.all():
        Gk, miss_k = G, missing
    else:
        Gk, miss_k = G[sample_mask], missing[sample_mask]
    # Environments are those of the kept samples: one emptied by --mind is reported by the caller.
    levels, codes_k = _env_levels(env[sample_mask])
    observed = ~miss_k
    filled = np.where(miss_k, 0.0, Gk)
    k = len(levels)
    env_obs = np.empty((k, p))
    env_sum = np.empty((k, p))
    for e in range(k):
        rows = codes_k == e
        env_obs[e] = observed[rows].sum(axis=0)
        env_sum[e] = filled[rows].sum(axis=0, dtype=np.float64)
    del filled, observed  # as large as the genotype block: free them before the float64 copy below
    lo = np.fmin.reduce(Gk, axis=0) if Gk.shape[0] else np.full(p, np.nan)
    hi = np.fmax.reduce(Gk, axis=0) if Gk.shape[0] else np.full(p, np.nan)

    decision = decide_variants(
        variant_table, t, reason, variant_missing_rate, levels, env_obs, env_sum, lo, hi,
        n_kept=int(sample_mask.sum()),
    )
    variant_mask, env_mean = decision.variant_mask, decision.env_mean

    X = np.array(Gk[:, variant_mask], dtype=np.float64)
    miss_x = miss_k[:, variant_mask]
    n_imputed = int(miss_x.sum())
    if n_imputed:
        rows, cols = np.nonzero(miss_x)
        X[rows, cols] = env_mean[:, variant_mask][codes_k[rows], cols]
    if t.standardize:
        mean = X.mean(axis=0)
        sd = X.std(axis=0)
        X -= mean
        X /= sd

    report = decision.report(n_samples_in=n, n_samples_removed=n_samples_removed)
    if n_imputed != report.n_imputed_calls:
        raise AssertionError("imputed-call count disagrees with the per-variant counts")
    return QCResult(dosages=X, sample_mask=sample_mask, variant_mask=variant_mask, report=report)


@dataclass(frozen=True)
class VariantDecision:
    """Steps 3-6 of QC decided from per-environment counts (shared by the in-memory and streamed QC)."""

    variant_mask: np.ndarray
    env_mean: np.ndarray  # (k, p) mean observed dosage per environment: the imputation values
    table: pd.DataFrame
    removed: Mapping[str, int]
    levels: tuple[str, ...]
    thresholds: QCThresholds
    n_variants_in: int

    def report(self, *, n_samples_in: int, n_samples_removed: int) -> QCReport:
        return QCReport(
            thresholds=self.thresholds,
            n_samples_in=n_samples_in,
            n_samples_out=n_samples_in - n_samples_removed,
            n_variants_in=self.n_variants_in,
            n_variants_out=int(self.variant_mask.sum()),
            removed_variants=self.removed,
            removed_samples={"sample_missingness": n_samples_removed},
            n_imputed_calls=int(self.table["n_imputed"].sum()),
            environments=self.levels,
            _table=self.table,
        )


def decide_variants(
    variant_table: pd.DataFrame,
    t: QCThresholds,
    reason: np.ndarray,
    variant_missing_rate: np.ndarray,
    levels: list[str],
    env_obs: np.ndarray,
    env_sum: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    n_kept: int,
) -> VariantDecision:
    """Apply steps 3-6 to the variants `reason` leaves open ("" = not yet removed by step 1).

    `env_obs`/`env_sum` (k, p): observed calls and their dosage sum per
    environment over the kept samples; `lo`/`hi`: smallest and largest observed
    dosage (NaN when none). `reason` is updated in place. Raises `InputError`
    when no variant is left.
    """
    p = reason.size
    labels = _reason_labels(t)
    with np.errstate(invalid="ignore", divide="ignore"):
        env_mean = env_sum / env_obs
        env_af = env_mean / 2.0
        pooled_af = env_sum.sum(axis=0) / env_obs.sum(axis=0) / 2.0
    env_maf = np.minimum(env_af, 1.0 - env_af)
    pooled_maf = np.minimum(pooled_af, 1.0 - pooled_af)
    open_ = reason == ""
    step = open_ & (env_obs == 0).any(axis=0)
    reason[step] = "all_missing_in_env"
    open_ &= ~step
    step = open_ & (hi == lo)
    reason[step] = "monomorphic"
    open_ &= ~step
    step = open_ & (pooled_maf < t.min_maf)
    reason[step] = "maf"
    open_ &= ~step
    step = open_ & (env_maf < t.min_maf_per_env).any(axis=0)
    reason[step] = "maf_env"
    open_ &= ~step
    variant_mask = open_

    import pandas as pd

    table = pd.DataFrame({c: variant_table[c].to_numpy() for c in variant_table.columns})
    table["missing_rate"] = variant_missing_rate
    table["maf"] = pooled_maf
    for e, lv in enumerate(levels):
        table[f"maf_env_{lv}"] = env_maf[e]
    table["n_imputed"] = np.where(variant_mask, n_kept - env_obs.sum(axis=0), 0).astype(np.int64)
    table["status"] = np.where(variant_mask, "kept", "removed")
    table["reason"] = [labels[r] if r else "" for r in reason]
    # Name the first environment where a per-environment check failed.
    for key, bad in (("all_missing_in_env", env_obs == 0), ("maf_env", env_maf < t.min_maf_per_env)):
        for j in np.flatnonzero(reason == key):
            table.loc[j, "reason"] += f": {levels[int(np.argmax(bad[:, j]))]}"

    removed = {key: int((reason == key).sum()) for key in VARIANT_REASONS}
    if not variant_mask.any():
        detail = "; ".join(f"{c} {labels[key]}" for key, c in removed.items() if c)
        raise InputError(
            f"QC removed all {p} variants ({detail}). Relax the thresholds "
            "(--geno, --maf, --maf-env) or check the variant selection"
        )

    return VariantDecision(
        variant_mask=variant_mask, env_mean=env_mean, table=table, removed=removed, levels=tuple(levels),
        thresholds=t, n_variants_in=p,
    )
