"""Principal components of the genotype matrix, the usual adjustment for ancestry.

`genotype_pcs`: exact PCs of an in-memory matrix (the instruments).
`randomized_genotype_pcs`: genome-wide PCs from a genotype source read in row
blocks (a streamed randomised SVD), for `run --pcs-from FILESET`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import scipy.linalg

from invariant_mr.errors import InputError


def genotype_pcs(Z: np.ndarray, k: int, *, cross_products: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Top-k principal component scores (U s of the SVD) of the standardised genotype matrix.

    From the top-k eigenvectors of the smaller Gram matrix rather than a full
    SVD: at 30,000 x 1,000 that is about 1 s instead of 20 s, and the scores
    span the same space (only their signs are arbitrary, which adjustment
    does not see).

    `cross_products` = (Z'Z, column sums of Z), when a pass over the rows has
    already formed them (`run`'s shared first pass has): the standardised Gram
    matrix then comes from them, not from a second n p^2 product over two
    n x p standardised copies of Z (which set the peak memory of a run), and the
    scores are Z (V / sd) - (mean / sd) V, one n p k product. The same matrix up
    to rounding, so the same PCs (to about 1e-12, `tests/test_genome_wide_pcs.py`).
    """
    n, p = Z.shape
    k = min(k, n, p)
    if cross_products is not None and n >= p:
        return _pcs_from_cross_products(Z, k, *cross_products)
    Zs = (Z - Z.mean(axis=0)) / np.where(Z.std(axis=0) > 0, Z.std(axis=0), 1.0)
    if n >= p:
        _, vecs = scipy.linalg.eigh(Zs.T @ Zs, subset_by_index=[p - k, p - 1])
        return Zs @ vecs[:, ::-1]
    vals, vecs = scipy.linalg.eigh(Zs @ Zs.T, subset_by_index=[n - k, n - 1])
    return vecs[:, ::-1] * np.sqrt(np.clip(vals[::-1], 0, None))


def _pcs_from_cross_products(Z: np.ndarray, k: int, zz: np.ndarray, z_sum: np.ndarray) -> np.ndarray:
    n, p = Z.shape
    zz = np.asarray(zz, dtype=float)
    z_sum = np.asarray(z_sum, dtype=float)
    if zz.shape != (p, p) or z_sum.shape != (p,):
        raise InputError(f"cross_products must be Z'Z ({p} x {p}) and the column sums ({p}) of Z")
    mean = z_sum / n
    centred = zz - np.outer(z_sum, mean)
    var = np.diag(centred) / n
    # A constant column has variance 0 up to the rounding of zz (genotypes are small integers, so
    # relative to its mean square); like `Z.std() > 0` above it is then left unscaled (and is ~0).
    constant = var <= 1e-12 * np.maximum(np.diag(zz) / n, 1e-300)
    sd = np.where(constant, 1.0, np.sqrt(np.where(constant, 1.0, var)))
    gram = centred / np.outer(sd, sd)
    gram[constant] = 0.0
    gram[:, constant] = 0.0
    _, vecs = scipy.linalg.eigh((gram + gram.T) / 2, subset_by_index=[p - k, p - 1])
    W = vecs[:, ::-1] / sd[:, None]
    W[constant] = 0.0
    return Z @ W - mean @ W


# ----------------------------------------------------------------------------- genome-wide PCs, streamed
#: A callable that returns a fresh iterator over consecutive row blocks (rows x variants, float, NaN =
#: missing) of the genotype matrix: one call per pass. `row_blocks_of_array` and
#: `io.genotype_sources.GenotypeSource.iter_blocks` provide it for in-memory and on-disk genotypes.
RowBlocks = Callable[[], Iterable[np.ndarray]]


def row_blocks_of_array(G: np.ndarray, block_rows: int = 1024) -> RowBlocks:
    """`RowBlocks` over an in-memory genotype matrix."""
    return lambda: (np.asarray(G[i:i + block_rows], dtype=np.float64) for i in range(0, G.shape[0], block_rows))


@dataclass(frozen=True)
class GenomeWidePCs:
    """Top principal components of a standardised genotype matrix, from a streamed randomised SVD.

    `scores` (n, k) are U S (the PC scores PLINK's --pca reports up to scale);
    `singular_values` (k,); `variant_mask` the variants used (polymorphic,
    MAF at least `min_maf`, kept by LD pruning); `passes` the reads of the data.
    """

    scores: np.ndarray
    singular_values: np.ndarray
    variant_mask: np.ndarray
    passes: int
    n_iter: int
    oversample: int

    @property
    def variance_explained(self) -> np.ndarray:
        """Share of the total standardised variance (= number of variants used) per PC."""
        return self.singular_values**2 / (self.scores.shape[0] * int(self.variant_mask.sum()))


def column_moments(blocks: RowBlocks) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, sd, n) of every column over the non-missing values, in one pass."""
    total = sq = count = None
    n = 0
    for B in blocks():
        B = np.asarray(B, dtype=np.float64)
        ok = ~np.isnan(B)
        V = np.where(ok, B, 0.0)
        if total is None:
            total, sq, count = np.zeros(B.shape[1]), np.zeros(B.shape[1]), np.zeros(B.shape[1])
        total += V.sum(axis=0)
        sq += (V * V).sum(axis=0)
        count += ok.sum(axis=0)
        n += B.shape[0]
    if total is None or n == 0:
        raise InputError("the genotype source has no rows")
    mean = total / np.maximum(count, 1)
    var = np.maximum(sq / np.maximum(count, 1) - mean**2, 0.0)
    return mean, np.sqrt(var), n


def randomized_genotype_pcs(
    blocks: RowBlocks,
    k: int = 10,
    *,
    oversample: int = 10,
    n_iter: int = 3,
    min_maf: float = 0.01,
    variant_mask: np.ndarray | None = None,
    seed: int | np.random.Generator = 0,
) -> GenomeWidePCs:
    """Top-`k` PCs of the standardised genotypes by a randomised SVD (Halko, Martinsson & Tropp 2011,
    algorithm 4.4 with `n_iter` power iterations), reading the genotypes only in row blocks.

    Standardisation is per variant (mean 0, variance 1, missing -> 0 = mean
    imputation), the convention of EIGENSOFT and PLINK --pca. Memory is
    O((n + m)(k + oversample)) plus one block; passes over the data are
    2 + 2 n_iter + 1 (moments, range, power iterations, projection). A power
    iteration re-orthonormalises, which keeps the small singular values of a
    slowly decaying genotype spectrum accurate. `variant_mask` (e.g. from LD
    pruning) restricts the variants used.
    """
    if k < 1:
        raise InputError(f"the number of PCs must be at least 1, got {k}")
    if n_iter < 0 or oversample < 0:
        raise InputError("n_iter and oversample must be non-negative")
    rng = np.random.default_rng(seed)
    mean, sd, n = column_moments(blocks)
    freq = mean / 2
    use = (sd > 0) & (np.minimum(freq, 1 - freq) >= min_maf)
    if variant_mask is not None:
        use &= np.asarray(variant_mask, dtype=bool)
    m = int(use.sum())
    if m < 2:
        raise InputError(f"only {m} variant(s) pass the PC filters (polymorphic, MAF >= {min_maf:g})")
    l = min(k + oversample, n, m)
    if k > min(n, m):
        raise InputError(f"{k} PCs asked for, but the data have {n} samples and {m} usable variants")
    mu, scale = mean[use], sd[use]
    use_all = bool(use.all())

    def raw(B):
        # Missing -> the variant's mean, i.e. 0 after standardising; the standardisation itself is
        # folded into the small factors below, so a block is never copied into a standardised array.
        B = np.asarray(B, dtype=np.float64)
        B = B if use_all else B[:, use]
        missing = np.isnan(B)
        return np.where(missing, mu, B) if missing.any() else B

    def times(Omega):  # A @ Omega = B (Omega / s) - mu' (Omega / s), (n, l)
        scaled = Omega / scale[:, None]
        shift = mu @ scaled
        return np.vstack([raw(B) @ scaled - shift for B in blocks()])

    def transposed_times(Q):  # A' @ Q = (B' Q - mu 1' Q) / s, (m, l)
        out, start = np.zeros((m, Q.shape[1])), 0
        for B in blocks():
            R = raw(B)
            out += R.T @ Q[start:start + R.shape[0]]
            start += R.shape[0]
        return (out - np.outer(mu, Q.sum(axis=0))) / scale[:, None]

    passes = 1
    Q = np.linalg.qr(times(rng.standard_normal((m, l))))[0]
    passes += 1
    for _ in range(n_iter):
        W = np.linalg.qr(transposed_times(Q))[0]
        Q = np.linalg.qr(times(W))[0]
        passes += 2
    Bt = transposed_times(Q)  # (Q' A)' = A' Q
    passes += 1
    U_small, s, _ = np.linalg.svd(Bt.T, full_matrices=False)
    scores = (Q @ U_small[:, :k]) * s[:k]
    return GenomeWidePCs(scores=scores, singular_values=s[:k], variant_mask=use, passes=passes, n_iter=n_iter,
                         oversample=oversample)


def ld_prune(source, *, r2: float = 0.2, window: int = 50, rows: int = 2000, chunk: int = 5000,
             seed: int | np.random.Generator = 0) -> np.ndarray:
    """Mask of variants kept by greedy LD pruning (PLINK --indep-pairwise WINDOW 1 R2 in spirit).

    Walks the variants of each chromosome in position order and keeps one
    when its squared correlation with each of the previous `window` kept
    variants is below `r2`. Correlations come from a seeded random subset
    of `rows` samples (enough for r^2 to +-0.03 near 0.2), read in column
    chunks of `chunk` variants (a .bed is stored variant by variant, so that
    is cheap), so memory is rows x chunk floats.
    """
    if not 0 < r2 < 1:
        raise InputError(f"the LD pruning threshold r^2 must be in (0, 1), got {r2}")
    if window < 1:
        raise InputError(f"the LD pruning window must be at least 1 variant, got {window}")
    rng = np.random.default_rng(seed)
    n = source.n_samples
    sub = np.sort(rng.choice(n, size=min(rows, n), replace=False))
    variants = source.variants
    order = np.lexsort((variants["pos"].to_numpy(), variants["chrom"].astype(str).to_numpy()))
    chrom = variants["chrom"].astype(str).to_numpy()[order]
    keep = np.zeros(len(order), dtype=bool)
    kept: list[np.ndarray] = []  # standardised columns of the last `window` kept variants
    current = None
    for start in range(0, len(order), chunk):
        cols = order[start:start + chunk]
        X = np.asarray(source.read(rows=sub, cols=np.sort(cols), dtype="float32"), dtype=np.float64)
        X = X[:, np.argsort(np.argsort(cols))]  # back to position order
        mean = np.nanmean(X, axis=0)
        X = np.where(np.isnan(X), mean, X) - mean
        sd = np.sqrt((X * X).mean(axis=0))
        for j in range(X.shape[1]):
            if chrom[start + j] != current:
                current, kept = chrom[start + j], []
            if not sd[j] > 0:
                continue
            x = X[:, j] / sd[j]
            if kept:
                r = np.stack(kept) @ x / len(x)
                if np.max(r * r) >= r2:
                    continue
            keep[order[start + j]] = True
            kept.append(x)
            if len(kept) > window:
                kept.pop(0)
    return keep


def pcs_from_fileset(
    path, k: int = 10, *, ld_r2: float | None = None, ld_window: int = 50, min_maf: float = 0.01,
    n_iter: int = 3, seed: int = 0,
):
    """Genome-wide PCs of a genotype fileset (PLINK 1 prefix, PLINK 2 prefix, .bgen, .vcf[.gz] or .npy).

    Returns (samples, pcs): the source's FID/IID table and a `GenomeWidePCs`
    over all of its samples (PCs are a property of the reference sample, not
    of the analysed subset, as with PLINK --pca). `ld_r2`: LD-prune first
    (see `ld_prune`); None uses every variant.
    """
    from pathlib import Path

    from invariant_mr.io.genotype_sources import open_genotypes

    p = Path(path)
    name = p.name.lower()
    if Path(str(p) + ".bed").exists():
        source = open_genotypes(bfile=p)
    elif Path(str(p) + ".pgen").exists():
        source = open_genotypes(pfile=p)
    elif name.endswith(".bgen"):
        source = open_genotypes(bgen=p)
    elif name.endswith((".vcf", ".vcf.gz", ".bcf")):
        source = open_genotypes(vcf=p)
    elif name.endswith(".npy"):
        source = open_genotypes(npy=p)
    else:
        raise InputError(f"--pcs-from {path}: not a PLINK prefix (.bed/.pgen next to it), .bgen, .vcf or .npy")
    mask = None if ld_r2 is None else ld_prune(source, r2=ld_r2, window=ld_window, seed=seed)

    def blocks():
        return (block for _, block in source.iter_blocks(dtype="float32"))

    return source.samples, randomized_genotype_pcs(blocks, k, min_maf=min_maf, variant_mask=mask, n_iter=n_iter,
                                                   seed=seed)
