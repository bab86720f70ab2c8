"""Summary-statistic MR: estimators that take per-variant associations (GWAS summary statistics), not people.

IVW, MR-Egger, medians and modes (`summary_mr`), MR-RAPS, ConMix, MR-Lasso, radial IVW, the extra
TwoSampleMR estimators (`summary_extra`), Steiger filtering, multivariable MR, LD clumping, the
`SummaryStatistics` container (`sumstats`), two-sample harmonised tables and instrument selection
(`two_sample`) and TwoSampleMR-style output tables (`mr_tables`). The individual-level IV estimators
(k-class, TSHT, within-family, many-instrument SEs, sufficient statistics) stay in `estimators`.
"""
