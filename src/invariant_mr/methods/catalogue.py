"""The built-in methods: names, descriptions, options and where each is implemented.

Metadata only: nothing here imports a method module, so `invariant-mr
--help` and `invariant-mr methods` answer without loading torch, dask or
matplotlib. The order is the order users see.
"""

from __future__ import annotations

from invariant_mr.methods import options as o
from invariant_mr.methods.spec import MethodSpec

_B = "invariant_mr.methods.baselines"
_L = "invariant_mr.methods.invariant_linear"
_S = "invariant_mr.methods.summary_level"
_A = "invariant_mr.methods.autoencoder"
_P = "invariant_mr.methods.polynomial"
_Y = "invariant_mr.methods.binary"
_T = "invariant_mr.methods.two_sample"
_F = "invariant_mr.methods.within_family"
_G = "invariant_mr.methods.genotype_invariant"

BUILTIN_METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("ols", f"{_B}:ols", "OLS of outcome on exposure, environment fixed effects (confounded)", family=o.BASELINE),
    MethodSpec("tsls_all", f"{_B}:tsls_all", "2SLS with every instrument, no environment adjustment",
               options=(o.AR_MAX_INSTRUMENTS, o.MEAT_PRECISION), family=o.BASELINE),
    MethodSpec("tsls_all_env", f"{_B}:tsls_all_env",
               "2SLS with every instrument and environment fixed effects (several exposures: multivariable 2SLS)",
               options=(o.AR_MAX_INSTRUMENTS, o.MEAT_PRECISION), family=o.BASELINE, multivariable=True),
    MethodSpec("liml_all_env", f"{_B}:liml_all_env", "LIML with every instrument and environment fixed effects",
               options=(o.AR_MAX_INSTRUMENTS, o.MEAT_PRECISION), family=o.BASELINE),
    MethodSpec("invariant_linear", f"{_L}:invariant_linear",
               "2SLS on closed-form invariant linear instruments (environment fixed effects)",
               options=o.LINEAR_OPTIONS, family=o.LINEAR),
    MethodSpec("invariant_linear_crossfit", f"{_L}:invariant_linear_crossfit",
               "Cross-fitted 2SLS on closed-form invariant instruments (learned on other folds)",
               options=o.LINEAR_OPTIONS, family=o.LINEAR),
    MethodSpec("ivw", f"{_S}:ivw_method",
               "Inverse-variance weighted MR on per-variant associations (multiplicative random effects)",
               options=o.SUMMARY_OPTIONS, family=o.SUMMARY, summary_input=True),
    MethodSpec("ivw_radial", f"{_S}:ivw_radial_method",
               "Radial IVW (RadialMR): modified second-order weights, iterative and exact (fixed/random) estimates, outliers",
               default=False, options=(*o.SUMMARY_OPTIONS, o.N_BOOTSTRAP, o.RADIAL_WEIGHTS), family=o.SUMMARY,
               summary_input=True),
    MethodSpec("mr_egger", f"{_S}:mr_egger_method", "MR-Egger regression on per-variant associations, with intercept test and I^2_GX",
               options=o.SUMMARY_OPTIONS, family=o.SUMMARY, summary_input=True),
    MethodSpec("ivw_fixed", f"{_S}:ivw_fixed_method", "Inverse-variance weighted MR with the fixed-effect SE",
               default=False, options=o.SUMMARY_OPTIONS, family=o.SUMMARY, summary_input=True),
    MethodSpec("weighted_median", f"{_S}:weighted_median_method", "Weighted median MR on per-variant associations (bootstrap SE)",
               options=(*o.SUMMARY_OPTIONS, o.N_BOOTSTRAP, o.MEDIAN_WEIGHTS), family=o.SUMMARY, summary_input=True),
    MethodSpec("simple_median", f"{_S}:simple_median_method", "Simple (unweighted) median of the ratio estimates (bootstrap SE)",
               default=False, options=(*o.SUMMARY_OPTIONS, o.N_BOOTSTRAP), family=o.SUMMARY, summary_input=True),
    MethodSpec("penalised_weighted_median", f"{_S}:penalised_weighted_median_method",
               "Penalised weighted median: outlying ratio estimates down-weighted (bootstrap SE)",
               default=False, options=(*o.SUMMARY_OPTIONS, o.N_BOOTSTRAP, o.MEDIAN_WEIGHTS, o.PENALTY_K),
               family=o.SUMMARY, summary_input=True),
    MethodSpec("simple_mode", f"{_S}:simple_mode_method", "Simple mode MR (Hartwig 2017), unweighted density (bootstrap SE)",
               default=False, options=(*o.SUMMARY_OPTIONS, o.N_BOOTSTRAP, o.MODE_PHI, o.MODE_DENSITY), family=o.SUMMARY,
               summary_input=True),
    MethodSpec("weighted_mode", f"{_S}:weighted_mode_method", "Weighted mode MR (Hartwig 2017) on per-variant associations (bootstrap SE)",
               options=(*o.SUMMARY_OPTIONS, o.N_BOOTSTRAP, o.MODE_PHI, o.MODE_DENSITY), family=o.SUMMARY,
               summary_input=True),
    MethodSpec("simple_mode_nome", f"{_S}:simple_mode_nome_method",
               "Simple mode assuming NOME (TwoSampleMR mr_simple_mode_nome): bootstrap from first-order ratio SEs",
               default=False, options=(*o.SUMMARY_OPTIONS, o.N_BOOTSTRAP, o.MODE_PHI, o.MODE_DENSITY), family=o.SUMMARY,
               summary_input=True, summary_default=False),
    MethodSpec("weighted_mode_nome", f"{_S}:weighted_mode_nome_method",
               "Weighted mode assuming NOME (TwoSampleMR mr_weighted_mode_nome): first-order ratio SEs as weights",
               default=False, options=(*o.SUMMARY_OPTIONS, o.N_BOOTSTRAP, o.MODE_PHI, o.MODE_DENSITY), family=o.SUMMARY,
               summary_input=True, summary_default=False),
    MethodSpec("mr_sign", f"{_S}:mr_sign_method",
               "Sign concordance test (TwoSampleMR mr_sign): exact binomial test of exposure/outcome sign agreement",
               default=False, options=o.SUMMARY_OPTIONS, family=o.SUMMARY, summary_input=True, summary_default=False),
    MethodSpec("mr_uwr", f"{_S}:mr_uwr_method", "Unweighted regression through the origin (TwoSampleMR mr_uwr)",
               default=False, options=o.SUMMARY_OPTIONS, family=o.SUMMARY, summary_input=True, summary_default=False),
    MethodSpec("ivw_mre", f"{_S}:ivw_mre_method",
               "IVW, multiplicative random effects without the under-dispersion floor (TwoSampleMR mr_ivw_mre)",
               default=False, options=o.SUMMARY_OPTIONS, family=o.SUMMARY, summary_input=True, summary_default=False),
    MethodSpec("mr_two_sample_ml", f"{_S}:mr_two_sample_ml_method",
               "Maximum likelihood MR (Burgess 2013; TwoSampleMR mr_two_sample_ml), exposure measurement error modelled",
               default=False, options=o.SUMMARY_OPTIONS, family=o.SUMMARY, summary_input=True, summary_default=False),
    MethodSpec("mr_grip", f"{_S}:mr_grip_method",
               "MR-GRIP (TwoSampleMR mr_grip): MR-Egger invariant to allele coding, by*bx on bx^2 with an intercept",
               default=False, options=o.SUMMARY_OPTIONS, family=o.SUMMARY, summary_input=True, summary_default=False),
    MethodSpec("mr_egger_bootstrap", f"{_S}:mr_egger_bootstrap_method",
               "MR-Egger by parametric bootstrap (TwoSampleMR mr_egger_regression_bootstrap)",
               default=False, options=(*o.SUMMARY_OPTIONS, o.N_BOOTSTRAP), family=o.SUMMARY, summary_input=True, summary_default=False),
    MethodSpec("mr_presso", f"{_S}:mr_presso_method",
               "MR-PRESSO: global pleiotropy test, outlier-corrected IVW and distortion test",
               options=(*o.SUMMARY_OPTIONS, o.PRESSO_DRAWS, o.PRESSO_SIGNIFICANCE), family=o.SUMMARY, summary_input=True),
    MethodSpec("mr_raps", f"{_T}:mr_raps_method",
               "MR-RAPS (Zhao 2020): robust adjusted profile score, robust to weak instruments and outliers",
               default=False, options=(*o.SUMMARY_OPTIONS, o.RAPS_LOSS, o.RAPS_OVERDISPERSION, o.RAPS_VERSION), family=o.SUMMARY,
               summary_input=True),
    MethodSpec("mr_lasso", f"{_T}:mr_lasso_method",
               "MR-Lasso (Rees 2019): lasso on per-variant pleiotropic intercepts, post-lasso IVW on the valid variants",
               default=False, options=o.SUMMARY_OPTIONS, family=o.SUMMARY, summary_input=True),
    MethodSpec("mr_conmix", f"{_T}:mr_conmix_method",
               "Contamination mixture MR (Burgess 2020): plurality-valid, likelihood-ratio confidence set",
               default=False, options=(*o.SUMMARY_OPTIONS, o.CONMIX_PSI, o.CONMIX_STEP), family=o.SUMMARY,
               summary_input=True),
    MethodSpec("mv_ivw", f"{_T}:mv_ivw_method",
               "Multivariable IVW: direct effect of each exposure, with conditional F statistics",
               default=False, options=(*o.SUMMARY_OPTIONS, o.MV_MODEL), family=o.SUMMARY,
               summary_input=True, multivariable=True),
    MethodSpec("mv_egger", f"{_T}:mv_egger_method",
               "Multivariable MR-Egger: direct effects under InSIDE and a pleiotropy intercept",
               default=False, options=(*o.SUMMARY_OPTIONS, o.MV_EGGER_ORIENTATE), family=o.SUMMARY,
               summary_input=True, multivariable=True),
    MethodSpec("tsls_pcs", f"{_B}:tsls_pcs",
               "2SLS with every instrument, adjusting for top-k genotype PCs and environment fixed effects",
               options=(o.N_PCS, o.AR_MAX_INSTRUMENTS), family=o.BASELINE),
    MethodSpec("tsht", f"{_B}:tsht_method", "Two-stage hard thresholding (Guo et al. 2018): 2SLS on instruments voted valid",
               options=(o.TSHT_THRESHOLD, o.AR_MAX_INSTRUMENTS), family=o.BASELINE),
    MethodSpec("within_family", f"{_F}:within_family",
               "Within-family MR: IV with family fixed effects (sibling differences), SEs by family; needs family "
               "IDs (run --family-col FID, which also makes it a default method)",
               default=False, options=o.WITHIN_FAMILY_OPTIONS, family=o.WITHIN_FAMILY),
    MethodSpec("within_family_ivw", f"{_F}:within_family_ivw",
               "Within-family summary-statistic MR: IVW on within-family (sibship) per-variant associations, "
               "SEs clustered by family",
               default=False, family=o.WITHIN_FAMILY),
    MethodSpec("within_family_egger", f"{_F}:within_family_egger",
               "Within-family summary-statistic MR: MR-Egger on within-family per-variant associations",
               default=False, family=o.WITHIN_FAMILY),
    MethodSpec("invariant_genotype", f"{_G}:invariant_genotype",
               "LIML (Bekker SE) on the genotype with the directions that shift across environments removed "
               "(per-variant scaling within environments); for population structure",
               options=o.GENOTYPE_INVARIANT_OPTIONS, family=o.GENOTYPE_INVARIANT,
               # Its relabelling null costs n x variants^2 per relabelling: the learner alone takes 2.4 CPU s at
               # 6,000 x 500 (1.5e9) and 23.7 s at 30,000 x 1,000 (3e10), more than the rest of that default run
               # (19.6 s; benchmarks/results/genotype_invariant_speed.md, battery.md): about 16 s at the bound.
               default_max_work=10**10),
    MethodSpec("invariant_polynomial", f"{_P}:invariant_polynomial",
               "2SLS on invariant latents identified by a polynomial decoder (linear encoder, or under measurement "
               "noise a projection onto the decoder's surface; cross-fitted, stage-2 bootstrap SE); for polynomial "
               "mixing",
               options=o.POLYNOMIAL_OPTIONS, family=o.POLY),
    MethodSpec("invariant_autoencoder", f"{_A}:invariant_autoencoder",
               "2SLS on instruments from the invariant autoencoder (cross-fitted), environment fixed effects",
               default=False, options=o.AUTOENCODER_OPTIONS, family=o.AE),
    MethodSpec("invariant_autoencoder_insample", f"{_A}:invariant_autoencoder_insample",
               "2SLS on invariant-autoencoder instruments learned on the same rows (the paper's variant)",
               default=False, options=o.AUTOENCODER_OPTIONS, family=o.AE),
    MethodSpec("tsls_external", f"{_B}:tsls_external",
               "2SLS on instruments from `run --instruments-from` (a map applied with `invariant-mr apply`), "
               "environment fixed effects, AR sets and diagnostics",
               default=False, options=(o.AR_MAX_INSTRUMENTS, o.DIAGNOSTIC_PERMUTATIONS), family=o.EXTERNAL),
    MethodSpec("tsri_all_env", f"{_Y}:tsri_all_env",
               "Binary outcome: two-stage residual inclusion (logistic), every instrument, environment fixed effects",
               default=False, options=o.BINARY_OPTIONS, family=o.BINARY),
    MethodSpec("tsps_all_env", f"{_Y}:tsps_all_env",
               "Binary outcome: two-stage predictor substitution (logistic), every instrument, environment fixed effects",
               default=False, options=o.BINARY_OPTIONS, family=o.BINARY),
    MethodSpec("tsri_invariant_linear", f"{_Y}:tsri_invariant_linear",
               "Binary outcome: two-stage residual inclusion on closed-form invariant instruments",
               default=False, options=(*o.BINARY_OPTIONS, *o.LINEAR_OPTIONS), family=o.BINARY),
    MethodSpec("tsps_invariant_linear", f"{_Y}:tsps_invariant_linear",
               "Binary outcome: two-stage predictor substitution on closed-form invariant instruments",
               default=False, options=(*o.BINARY_OPTIONS, *o.LINEAR_OPTIONS), family=o.BINARY),
)  # fmt: skip
