"""Portable instrument maps: learn instruments in one cohort, compute them in another.

A map is a directory, human readable, with no pickled code:

* `manifest.json`: format version, kind ("linear" or "autoencoder"), the
  learner's class and parameters, what it learned (number of instruments,
  environments), and the alignment rules below;
* `loadings.tsv` (linear maps): one row per variant with `variant_id`,
  `counted_allele`, `other_allele`, `center` (the fitted cohort's mean dosage
  of the counted allele), `scale` (the standardisation used, 1 when none),
  and one loading column per instrument (`W1`, `W2`, ...). The instruments
  are `((z - center) / scale) @ loadings`;
* `score.tsv` (linear maps): the same map as per-allele weights for other
  tools: `variant_id`, `counted_allele`, and `W1`... equal to
  `loadings / scale`, so that the sum of dosage x weight is the instrument
  up to a constant per instrument (`score_offset` in the manifest; a constant
  shift is absorbed by the intercept of any IV regression). With PLINK 2:
  `plink2 --pfile B --score score.tsv 1 2 header-read cols=scoresums
  --score-col-nums 3-K` (K = 2 + number of instruments). PLINK imputes a
  missing genotype with the target cohort's allele frequency, this module
  with the fitted cohort's (`center`): the two differ only where calls are
  missing;
* `variants.tsv` and `model/` (autoencoder maps): the variant list with
  alleles and centring, and the network written by the safe
  `InvariantAutoencoder.save` (tensors only, loaded with weights_only=True;
  the standardisation `z_mean_`, `z_map_` travels inside it).

Applying a map (`apply_instrument_map`) aligns the target genotypes to the
map by variant ID and allele:

* same counted allele: used as is;
* counted and other allele swapped: the dosage is flipped to 2 - x, so it
  counts the map's counted allele;
* any other allele pair (e.g. a different ALT at a multi-allelic site, or a
  strand flip A/G versus T/C): not used, reported as an allele mismatch;
* alleles unknown on either side (e.g. a .npy or table input): aligned by ID
  alone and counted as unchecked in the report.

Alleles are compared as given (case-insensitive), so the map and the target
must be on the same strand; palindromic SNPs (A/T, C/G) cannot be checked
for strand by any allele comparison. Missing variants and missing calls are
imputed at the map's `center`, i.e. they contribute nothing to the centred
score. More than `max_missing_fraction` (default 0.10, i.e. 10%) of the map's
variants missing or mismatched is an `InputError`: the instruments would then
be a noticeably different score from the one the map was fitted as.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from invariant_mr.errors import InputError
from invariant_mr.io.output import publish_directory

#: Version of the on-disk map format written by this module.
FORMAT_VERSION = 1
#: Default most share of the map's variants that may be missing (or allele-mismatched) in a target.
DEFAULT_MAX_MISSING_FRACTION = 0.10

_MANIFEST = "manifest.json"
_LOADINGS = "loadings.tsv"
_SCORE = "score.tsv"
_VARIANTS = "variants.tsv"
_MODEL = "model"


# ----------------------------------------------------------------------------- the map
@dataclass(frozen=True)
class InstrumentMap:
    """A learned instrument map with the variants it reads (immutable; arrays are read-only).

    kind: "linear" (instruments = ((z - center) / scale) @ loadings) or
    "autoencoder" (instruments = the encoder's hW block; `model` holds the
    network, `loadings` is None).
    """

    kind: str
    variant_ids: tuple[str, ...]
    counted_alleles: tuple[str | None, ...]
    other_alleles: tuple[str | None, ...]
    center: np.ndarray
    scale: np.ndarray
    loadings: np.ndarray | None
    learner: str
    params: dict
    fitted: dict = field(default_factory=dict)
    model: Any = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        for name in ("center", "scale", "loadings"):
            arr = getattr(self, name)
            if arr is not None:
                arr = np.array(arr, dtype=float)
                arr.setflags(write=False)
                object.__setattr__(self, name, arr)

    @property
    def n_variants(self) -> int:
        return len(self.variant_ids)

    @property
    def n_instruments(self) -> int:
        if self.loadings is not None:
            return int(self.loadings.shape[1])
        return int(self.fitted.get("n_instruments", 0))

    @property
    def instrument_names(self) -> list[str]:
        return [f"W{j + 1}" for j in range(self.n_instruments)]

    def score_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(per-counted-allele weights (p, k), offset (k,)): instruments = z @ weights - offset."""
        if self.loadings is None:
            raise InputError("only a linear map has per-variant score weights")
        weights = self.loadings / self.scale[:, None]
        return weights, self.center @ weights

    def summary(self) -> str:
        lines = [
            f"Instrument map ({self.kind}, {self.learner}, format {self.format_version})",
            f"  variants: {self.n_variants}; instruments: {self.n_instruments} ({', '.join(self.instrument_names)})",
        ]
        for key in ("env_levels", "n_samples"):
            if key in self.fitted:
                lines.append(f"  fitted {key}: {self.fitted[key]}")
        return "\n".join(lines)


@dataclass(frozen=True)
class AlignmentReport:
    """How a target cohort's variants lined up with a map."""

    n_map_variants: int
    n_used: int
    n_flipped: int
    n_unchecked: int
    missing: tuple[str, ...]
    allele_mismatch: tuple[str, ...]
    max_missing_fraction: float

    @property
    def n_missing(self) -> int:
        return len(self.missing) + len(self.allele_mismatch)

    @property
    def missing_fraction(self) -> float:
        return self.n_missing / self.n_map_variants if self.n_map_variants else 0.0

    def to_dict(self) -> dict:
        return {
            "n_map_variants": self.n_map_variants,
            "n_used": self.n_used,
            "n_flipped": self.n_flipped,
            "n_alleles_unchecked": self.n_unchecked,
            "n_missing": len(self.missing),
            "n_allele_mismatch": len(self.allele_mismatch),
            "missing_fraction": self.missing_fraction,
            "max_missing_fraction": self.max_missing_fraction,
            "missing": list(self.missing),
            "allele_mismatch": list(self.allele_mismatch),
        }

    def summary(self) -> str:
        return (
            f"{self.n_used} of {self.n_map_variants} map variants used ({self.n_flipped} with swapped alleles "
            f"flipped, {self.n_unchecked} aligned by ID without allele check); {len(self.missing)} missing, "
            f"{len(self.allele_mismatch)} with other alleles; imputed at the map's centring "
            f"({100 * self.missing_fraction:.1f}% of the map, limit {100 * self.max_missing_fraction:.0f}%)"
        )


# ----------------------------------------------------------------------------- helpers
def _alleles(values, p: int, what: str) -> tuple[str | None, ...]:
    if values is None:
        return (None,) * p
    vals = list(pd.Series(values, dtype=object))
    if len(vals) != p:
        raise InputError(f"{what} has {len(vals)} entries for {p} variants")
    out = []
    for v in vals:
        missing = v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or str(v) in ("", "<NA>")
        out.append(None if missing else str(v).upper())
    return tuple(out)


def _variant_ids(values, p: int) -> tuple[str, ...]:
    ids = tuple(str(v) for v in values)
    if len(ids) != p:
        raise InputError(f"variant_ids has {len(ids)} entries for {p} variants")
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise InputError(f"variant IDs must be unique; {dup!r} appears more than once")
    return ids


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray, tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)  # e.g. a numpy Generator as random_state: recorded, not replayable


def _constructor_params(obj) -> dict:
    names = [p for p in inspect.signature(type(obj).__init__).parameters if p != "self"]
    return {n: _jsonable(getattr(obj, n)) for n in names if hasattr(obj, n)}


def _write_atomically(target: Path, write) -> Path:
    """Write a directory through a staging directory next to it, then swap it in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(stage)
        publish_directory(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def _fmt(x: float) -> str:
    return repr(float(x))  # shortest round-trip text: the TSV reproduces the floats exactly


def _variant_frame(m: InstrumentMap) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "variant_id": list(m.variant_ids),
            "counted_allele": ["" if a is None else a for a in m.counted_alleles],
            "other_allele": ["" if a is None else a for a in m.other_alleles],
            "center": [_fmt(v) for v in m.center],
            "scale": [_fmt(v) for v in m.scale],
        }
    )


def _manifest(m: InstrumentMap, extra: dict) -> dict:
    from invariant_mr import __version__

    return {
        "format": "invariant-mr instrument map",
        "format_version": FORMAT_VERSION,
        "kind": m.kind,
        "learner": m.learner,
        "params": _jsonable(m.params),
        "fitted": _jsonable(m.fitted),
        "n_variants": m.n_variants,
        "n_instruments": m.n_instruments,
        "instrument_names": m.instrument_names,
        "alignment": {
            "by": "variant_id, then counted/other allele (same strand); swapped alleles flip the dosage to 2 - x",
            "imputation": "missing variants and calls at `center` (mean dosage of the counted allele in the "
            "fitted cohort)",
            "default_max_missing_fraction": DEFAULT_MAX_MISSING_FRACTION,
        },
        "invariant_mr_version": __version__,
        **extra,
    }


# ----------------------------------------------------------------------------- save
def save_linear_map(learner, variant_ids: Sequence, counted, other, path: str | os.PathLike) -> Path:
    """Write a fitted `LinearInvariantInstruments` as a map directory (see the module docstring).

    `counted`/`other`: the allele each dosage column counts and the other
    allele (e.g. `variant_table["counted_allele"]`, `["other_allele"]`), or
    None when unknown.
    """
    return write_instrument_map(linear_map(learner, variant_ids, counted, other), path)


def linear_map(learner, variant_ids: Sequence, counted, other) -> InstrumentMap:
    """The `InstrumentMap` of a fitted `LinearInvariantInstruments` (arguments as `save_linear_map`)."""
    if not hasattr(learner, "components_"):
        raise InputError("the learner is not fitted yet; call fit first")
    p = int(learner.n_features_in_)
    components = np.asarray(learner.components_, dtype=float)
    m = InstrumentMap(
        kind="linear",
        variant_ids=_variant_ids(variant_ids, p),
        counted_alleles=_alleles(counted, p, "counted"),
        other_alleles=_alleles(other, p, "other"),
        center=np.asarray(learner.mean_, dtype=float),
        scale=np.asarray(learner.scale_, dtype=float),
        loadings=components,
        learner=type(learner).__name__,
        params=_constructor_params(learner),
        fitted={
            "n_instruments": int(components.shape[1]),
            "signal_rank": int(learner.signal_rank_),
            "env_levels": [str(x) for x in learner.levels_],
            "invariance_eigenvalues": [float(x) for x in learner.invariance_eigenvalues_],
        },
    )
    if m.n_instruments == 0:
        raise InputError("the learner found no invariant direction: there is no map to save")
    return m


def write_instrument_map(m: InstrumentMap, path: str | os.PathLike) -> Path:
    """Write an `InstrumentMap` (e.g. one read with `load_instrument_map`) to `path`, atomically."""
    return _write_atomically(Path(path), lambda stage: write_map_files(m, stage))


def write_map_files(m: InstrumentMap, directory: str | os.PathLike) -> list[str]:
    """Write the map's files into an existing `directory` (not atomic: stage it, as the CLI's
    `OutputDirectory` does); returns the names written."""
    stage = Path(directory)
    if m.kind == "autoencoder":
        if m.model is None:
            raise InputError("an autoencoder map needs its fitted model to be written")
        _variant_frame(m).to_csv(stage / _VARIANTS, sep="\t", index=False)
        m.model.save(stage / _MODEL)
        extra = {
            "files": {"variants": _VARIANTS, "model": _MODEL + "/"},
            "standardisation": "inside model/model.pt: z_mean (= center) and the whitening map z_map",
        }
        (stage / _MANIFEST).write_text(json.dumps(_manifest(m, extra), indent=2))
        return [_MANIFEST, _VARIANTS, _MODEL + "/"]
    if m.kind != "linear":
        raise InputError(f"unknown map kind {m.kind!r}")
    weights, offset = m.score_weights()
    table = _variant_frame(m)
    for j, name in enumerate(m.instrument_names):
        table[name] = [_fmt(v) for v in m.loadings[:, j]]
    table.to_csv(stage / _LOADINGS, sep="\t", index=False)
    score = pd.DataFrame({"variant_id": list(m.variant_ids), "counted_allele": table["counted_allele"]})
    for j, name in enumerate(m.instrument_names):
        score[name] = [_fmt(v) for v in weights[:, j]]
    score.to_csv(stage / _SCORE, sep="\t", index=False)
    extra = {
        "files": {"loadings": _LOADINGS, "score": _SCORE},
        "score_offset": [float(v) for v in offset],
        "plink2_score": f"--score {_SCORE} 1 2 header-read cols=scoresums "
        f"--score-col-nums 3-{2 + m.n_instruments}",
    }
    (stage / _MANIFEST).write_text(json.dumps(_manifest(m, extra), indent=2))
    return [_MANIFEST, _LOADINGS, _SCORE]


def save_autoencoder_map(model, variant_ids: Sequence, counted, other, path: str | os.PathLike) -> Path:
    """Write a fitted `InvariantAutoencoder` with its variant list as a map directory.

    The network goes through the model's own safe `save` (state dict and
    JSON config, no pickled code) into `path/model`.
    """
    return write_instrument_map(autoencoder_map(model, variant_ids, counted, other), path)


def autoencoder_map(model, variant_ids: Sequence, counted, other) -> InstrumentMap:
    """The `InstrumentMap` of a fitted `InvariantAutoencoder` (the model travels in `model`)."""
    if not hasattr(model, "net_"):
        raise InputError("the autoencoder is not fitted yet; call fit first")
    p = int(model.n_features_in_)
    m = InstrumentMap(
        kind="autoencoder",
        variant_ids=_variant_ids(variant_ids, p),
        counted_alleles=_alleles(counted, p, "counted"),
        other_alleles=_alleles(other, p, "other"),
        center=np.asarray(model.z_mean_, dtype=float),
        scale=np.ones(p),
        loadings=None,
        learner=type(model).__name__,
        params=_jsonable(model.get_params()),
        fitted={"n_instruments": int(model.dim_w), "env_levels": [str(x) for x in model.env_levels_]},
        model=model,
    )
    return m


# ----------------------------------------------------------------------------- load
def load_instrument_map(path: str | os.PathLike) -> InstrumentMap:
    """Read a map directory written by `save_linear_map` or `save_autoencoder_map`."""
    path = Path(path)
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{path}: not an instrument map (no {_MANIFEST})") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path / _MANIFEST}: not valid JSON ({exc})") from exc
    version = manifest.get("format_version")
    if manifest.get("format") != "invariant-mr instrument map" or version != FORMAT_VERSION:
        raise InputError(
            f"{path / _MANIFEST}: not an instrument map of format version {FORMAT_VERSION} (got {version!r})"
        )
    kind = manifest.get("kind")
    if kind not in ("linear", "autoencoder"):
        raise InputError(f"{path / _MANIFEST}: unknown map kind {kind!r}")
    table_name = _LOADINGS if kind == "linear" else _VARIANTS
    table = pd.read_csv(
        path / table_name, sep="\t", dtype={"variant_id": str, "counted_allele": str, "other_allele": str},
        keep_default_na=False,
    )
    p = len(table)
    if p != manifest.get("n_variants"):
        raise InputError(f"{path / table_name}: {p} variants, the manifest says {manifest.get('n_variants')}")
    common = dict(
        kind=kind,
        variant_ids=_variant_ids(table["variant_id"], p),
        counted_alleles=_alleles(table["counted_allele"].replace("", None), p, "counted"),
        other_alleles=_alleles(table["other_allele"].replace("", None), p, "other"),
        center=table["center"].to_numpy(dtype=float),
        scale=table["scale"].to_numpy(dtype=float),
        learner=manifest.get("learner", ""),
        params=manifest.get("params", {}),
        fitted=manifest.get("fitted", {}),
    )
    if kind == "linear":
        names = manifest["instrument_names"]
        missing = [c for c in names if c not in table.columns]
        if missing:
            raise InputError(f"{path / _LOADINGS}: missing loading columns {missing}")
        return InstrumentMap(loadings=table[names].to_numpy(dtype=float), **common)
    from invariant_mr.instruments.autoencoder import InvariantAutoencoder  # torch only when an autoencoder map is read

    model = InvariantAutoencoder.load(path / _MODEL)
    if int(model.n_features_in_) != p:
        raise InputError(f"{path}: the model reads {model.n_features_in_} variants, {table_name} lists {p}")
    return InstrumentMap(loadings=None, model=model, **common)


# ----------------------------------------------------------------------------- apply
def align_genotypes(
    m: InstrumentMap,
    Z,
    variant_ids: Sequence,
    counted=None,
    other=None,
    *,
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
) -> tuple[np.ndarray, AlignmentReport]:
    """(dosages in the map's variant order and counted alleles, report); gaps imputed at `center`."""
    Z = np.asarray(Z, dtype=float)
    if Z.ndim != 2:
        raise InputError(f"Z must be a 2-D matrix, got shape {Z.shape}")
    if not 0 <= max_missing_fraction <= 1:
        raise InputError(f"max_missing_fraction must be in [0, 1], got {max_missing_fraction}")
    p_t = Z.shape[1]
    ids = _variant_ids(variant_ids, p_t)
    c_t, o_t = _alleles(counted, p_t, "counted"), _alleles(other, p_t, "other")
    where = {v: j for j, v in enumerate(ids)}
    out = np.empty((Z.shape[0], m.n_variants))
    missing, mismatch = [], []
    n_flipped = n_unchecked = 0
    for i, vid in enumerate(m.variant_ids):
        j = where.get(vid)
        if j is None:
            missing.append(vid)
            out[:, i] = m.center[i]
            continue
        mc, mo, tc, to = m.counted_alleles[i], m.other_alleles[i], c_t[j], o_t[j]
        col = Z[:, j]
        if mc is None or tc is None:
            n_unchecked += 1
        elif tc == mc and (mo is None or to is None or to == mo):
            pass
        elif tc == mo and (to is None or to == mc):
            col = 2.0 - col
            n_flipped += 1
        else:
            mismatch.append(vid)
            out[:, i] = m.center[i]
            continue
        out[:, i] = np.where(np.isnan(col), m.center[i], col)
    report = AlignmentReport(
        n_map_variants=m.n_variants,
        n_used=m.n_variants - len(missing) - len(mismatch),
        n_flipped=n_flipped,
        n_unchecked=n_unchecked,
        missing=tuple(missing),
        allele_mismatch=tuple(mismatch),
        max_missing_fraction=float(max_missing_fraction),
    )
    if report.missing_fraction > max_missing_fraction:
        examples = ", ".join((list(missing) + list(mismatch))[:5])
        raise InputError(
            f"{report.n_missing} of the map's {m.n_variants} variants ({100 * report.missing_fraction:.1f}%) are "
            f"missing from the target or have other alleles (e.g. {examples}); the limit is "
            f"{100 * max_missing_fraction:.0f}% (max_missing_fraction)"
        )
    return out, report


def apply_instrument_map(
    m: InstrumentMap,
    Z,
    variant_ids: Sequence,
    counted=None,
    other=None,
    *,
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
) -> tuple[np.ndarray, AlignmentReport]:
    """(instruments (n, k), alignment report) for a target cohort's dosages `Z` (n, p_target).

    `variant_ids`, `counted`, `other` describe Z's columns (any order, any
    superset or subset of the map's variants). See the module docstring for
    the alignment rules and the missing-variant limit.
    """
    aligned, report = align_genotypes(
        m, Z, variant_ids, counted, other, max_missing_fraction=max_missing_fraction
    )
    if m.kind == "linear":
        return ((aligned - m.center) / m.scale) @ m.loadings, report
    return m.model.transform(aligned), report


#: Short alias matching the CLI verb.
apply = apply_instrument_map

__all__ = [
    "AlignmentReport",
    "DEFAULT_MAX_MISSING_FRACTION",
    "FORMAT_VERSION",
    "InstrumentMap",
    "align_genotypes",
    "apply",
    "apply_instrument_map",
    "autoencoder_map",
    "linear_map",
    "load_instrument_map",
    "save_autoencoder_map",
    "save_linear_map",
    "write_instrument_map",
    "write_map_files",
]
