"""Cross-fitting for learned instruments.

Instruments learned on the same rows that estimate the effect can overfit
the first stage and bias 2SLS towards OLS; SEs that treat the learned map as
fixed are then not exact. Cross-fitting learns the map on k-1 folds and
evaluates it on the held-out fold, so every sample's instruments are a fixed
function of other samples' data.

The effect is estimated by one 2SLS over all samples with *fold-interacted*
instruments (each fold's instruments in their own columns, zero elsewhere)
and fold-by-environment fixed effects. That lets every fold have its own first
stage (the maps differ between folds), gives a single pooled estimate, and its
robust SE accounts for all folds at once. Folds are stratified by environment.
With cluster labels (related samples) whole clusters go to one fold, so no
family is split between the rows that learn a map and the rows it is applied to.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from invariant_mr.data import MRData
from invariant_mr.errors import InputError
from invariant_mr.inference.settings import InferenceSettings
from invariant_mr.results import Estimate
from invariant_mr.inference.estimates import iv_estimates


class InstrumentLearner(Protocol):
    def fit(self, Z: np.ndarray, env: np.ndarray, exposure: np.ndarray | None = None) -> Any: ...

    def transform(self, Z: np.ndarray) -> np.ndarray: ...


def stratified_folds(
    env_codes: np.ndarray, k: int, rng: np.random.Generator, clusters: np.ndarray | None = None
) -> np.ndarray:
    """Fold index per sample, balanced within every environment.

    With `clusters` (one label per sample) every cluster lies in one fold: the
    clusters of each environment (by the environment of their first member) are
    shuffled and dealt to folds in turn, largest first, onto the fold with the
    fewest samples of that environment so far.
    """
    folds = np.empty(env_codes.shape[0], dtype=np.int64)
    # Every fold must hold out samples of every environment, or a fold's instruments are empty.
    units = env_codes if clusters is None else np.unique(np.column_stack([env_codes.astype(str), np.asarray(clusters).astype(str)]), axis=0)[:, 0]
    smallest = int(np.unique(units, return_counts=True)[1].min())
    if k > smallest:
        what = "samples" if clusters is None else "clusters"
        raise InputError(f"--n-folds {k}: the smallest environment has only {smallest} {what}, fewer than one per fold; "
                         f"use --n-folds at most {smallest} (2 to 5 is usual)")
    if clusters is None:
        for code in np.unique(env_codes):
            idx = np.flatnonzero(env_codes == code)
            rng.shuffle(idx)
            folds[idx] = np.arange(idx.size) % k
        return folds
    _, cluster_ids = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    n_clusters = int(cluster_ids.max()) + 1
    members = [[] for _ in range(n_clusters)]
    for i, c in enumerate(cluster_ids):
        members[c].append(i)
    home = np.array([env_codes[m[0]] for m in members])
    for code in np.unique(home):
        ids = np.flatnonzero(home == code)
        rng.shuffle(ids)
        ids = ids[np.argsort([-len(members[c]) for c in ids], kind="stable")]
        filled = np.zeros(k)
        for c in ids:
            f = int(np.argmin(filled))
            folds[members[c]] = f
            filled[f] += len(members[c])
    return folds


def rows_at(source, mask: np.ndarray):
    """The rows `mask` of an array, or of a `minibatches.RowSource` as a view (`SubsetRows`)."""
    if isinstance(source, np.ndarray):
        return source[mask]
    from invariant_mr.instruments.minibatches import SubsetRows  # torch only on the row-source route

    return SubsetRows(source, np.flatnonzero(mask))


def crossfit_instruments(
    data: MRData,
    make_learner: Callable[[int], InstrumentLearner],
    *,
    n_folds: int = 2,
    rng: np.random.Generator,
    use_exposure: bool = False,
    rows=None,
) -> tuple[np.ndarray, np.ndarray, list[InstrumentLearner]]:
    """Out-of-fold instruments (n, k) with their fold labels and the fitted learners.

    `make_learner(fold)` returns a fresh, unfitted learner for that fold.
    Folds may learn different numbers of instruments; missing columns are zero.
    `rows` is what the learners read instead of `data.Z`: a `minibatches.RowSource` of every analysed
    row (e.g. the row cache of streamed genotypes), which each fold sees through `rows_at`, never copied.
    """
    if n_folds < 2:
        raise InputError(f"cross-fitting needs at least 2 folds, got {n_folds}")
    if rows is not None and int(rows.n) != data.n:
        raise InputError(f"the training rows hold {rows.n} rows, the data {data.n}")
    source = data.Z if rows is None else rows
    folds = stratified_folds(data.env_codes, n_folds, rng, clusters=getattr(data, "clusters", None))
    blocks: list[np.ndarray | None] = [None] * n_folds
    learners = []
    for f in range(n_folds):
        train, test = folds != f, folds == f
        learner = make_learner(f)
        learner.fit(
            rows_at(source, train),
            data.env[train],
            exposure=data.exposure[train] if use_exposure else None,
        )
        learners.append(learner)
        blocks[f] = np.asarray(learner.transform(rows_at(source, test)), dtype=float).reshape(int(test.sum()), -1)
    width = max(b.shape[1] for b in blocks)
    out = np.zeros((data.n, width))
    for f, block in enumerate(blocks):
        out[folds == f, : block.shape[1]] = block
    return out, folds, learners


def fold_interacted(instruments: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each fold's instruments in their own block of columns (zero outside the fold)."""
    k = int(folds.max()) + 1
    n, m = instruments.shape
    out = np.zeros((n, k * m))
    for f in range(k):
        rows = folds == f
        out[rows, f * m : (f + 1) * m] = instruments[rows]
    return out


def fold_dummies(folds: np.ndarray, env_codes: np.ndarray) -> np.ndarray:
    """Fold-by-environment indicators, minus one reference cell (env FE are added separately)."""
    k = int(folds.max()) + 1
    n_env = int(env_codes.max()) + 1
    cell = folds * n_env + env_codes
    dummies = (cell[:, None] == np.arange(k * n_env)[None, :]).astype(float)
    # Drop the columns already spanned by environment dummies + intercept: fold 0 cells.
    return dummies[:, n_env:]


def crossfit_estimates(
    data: MRData,
    instruments: np.ndarray,
    folds: np.ndarray,
    settings: InferenceSettings,
    *,
    method: str,
    kappa="tsls",
    extra: dict | None = None,
    clusters: np.ndarray | None = None,
) -> list[Estimate]:
    """Pooled and per-environment 2SLS on cross-fitted instruments (cluster-robust with `clusters`)."""
    return iv_estimates(
        data,
        fold_interacted(instruments, folds),
        settings,
        method=method,
        kappa=kappa,
        env_fixed_effects=True,
        extra_controls=fold_dummies(folds, data.env_codes),
        extra={"n_folds": int(folds.max()) + 1, **(extra or {})},
        clusters=clusters,
    )
