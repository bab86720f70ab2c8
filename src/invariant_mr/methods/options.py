"""Every method option: the command-line flags, their defaults and which help section lists them.

Declared here, apart from the method functions, so that `--help` and
`invariant-mr methods` need neither torch nor any method module. The
defaults equal the learners' constructor defaults (a test checks it).
"""

from __future__ import annotations

import click

from invariant_mr.inference.settings import AR_MAX_INSTRUMENTS_DEFAULT, DIAGNOSTIC_PERMUTATIONS_DEFAULT
from invariant_mr.methods.spec import MethodOption

#: Names of the autoencoder's MMD kernels and independence measures (`instruments.penalties` has the
#: implementations; kept here so the CLI does not import torch; a test checks they agree).
MMD_KERNEL_NAMES = ("poly", "rbf", "moments")
INDEPENDENCE_NAMES = ("poly", "rbf", "crosscov", "dcor")
WARM_START_NAMES = ("none", "linear")
#: Autoencoder presets, encoder and decoder kinds (`instruments.autoencoder` / `networks`; a test checks they agree).
PRESET_NAMES = ("none", "paper")
ENCODER_NAMES = ("linear+mlp", "layernorm-mlp")
DECODER_NAMES = ("mlp", "poly", "layernorm-mlp")

# ------------------------------------------------------------------ shared by several families
AR_MAX_INSTRUMENTS = MethodOption(
    "ar_max_instruments", int, AR_MAX_INSTRUMENTS_DEFAULT,
    "most instruments for which the robust Anderson-Rubin set is computed (its inversion costs "
    "O(k^3) per grid point; the classical set is always computed)", "shared",
)  # fmt: skip
DIAGNOSTIC_PERMUTATIONS = MethodOption(
    "diagnostic_permutations", int, DIAGNOSTIC_PERMUTATIONS_DEFAULT,
    "permutations of the MMD invariance and HSIC independence diagnostics (seeded by --seed)", "shared",
)  # fmt: skip
MEAT_PRECISION = MethodOption(
    "meat_precision", click.Choice(("float64", "float32")), "float64",
    "precision of the k x k robust meats (first-stage F, AR sets) in the statistics route's second pass: "
    "float32 blocks summed in float64 are about 2x faster; the estimates' SEs stay float64 "
    "(docs/scaling.md gives the measured accuracy)", "shared",
)  # fmt: skip
N_FOLDS = MethodOption("n_folds", int, 2, "folds for the cross-fitted methods (at least 2)", "shared")

# ------------------------------------------------------------------ closed-form invariant directions
LINEAR = "invariant_linear"
LINEAR_OPTIONS = (
    MethodOption("n_components", str, "auto", "invariant directions to keep: 'auto' (permutation test) or a number", LINEAR),
    MethodOption("signal_rank", str, "auto", "signal subspace dimension: 'auto' (Tracy-Widom rule) or a number", LINEAR),
    MethodOption("n_permutations", int, 199, "permutations for choosing the number of invariant directions (at least 19)", LINEAR),
    MethodOption("standardize", bool, True, "scale instruments to unit variance before the invariant method", LINEAR),
    MethodOption(
        "direction_bootstrap", str, "auto",
        "invariant_linear: bootstrap draws for the pooled SE that refit the directions "
        "('auto' = 200 when a refit is cheap, else 0 = the 2SLS SE that treats them as fixed)", LINEAR,
    ),
    N_FOLDS,
    DIAGNOSTIC_PERMUTATIONS,
)  # fmt: skip

# ------------------------------------------------------------------ two-stage polynomial identification
POLY = "invariant_polynomial"
POLYNOMIAL_OPTIONS = (
    MethodOption("poly_degrees", str, "1,2,3", "decoder degrees tried; the one with the best held-out reconstruction wins", POLY),
    MethodOption("poly_restarts", int, 4, "restarts of the linear encoder per degree and latent dimension (one PCA start, the rest random)", POLY),
    MethodOption("poly_max_latent_dim", int, 6, "largest latent dimension tried", POLY),
    MethodOption("poly_bootstrap", int, 200, "stage-2 bootstrap draws for the pooled SE (0 = the 2SLS SE that treats the instruments as fixed)", POLY),
    *(o for o in LINEAR_OPTIONS if o.name in ("n_components", "n_permutations")),
    N_FOLDS,
    DIAGNOSTIC_PERMUTATIONS,
)  # fmt: skip

# ------------------------------------------------------------------ invariant autoencoder
AE = "invariant_autoencoder"
AUTOENCODER_OPTIONS = (
    MethodOption(
        "preset", click.Choice(PRESET_NAMES), "none",
        "'paper': the authors' recipe (InvariantAutoencoder.paper_recipe: LayerNorm encoder, monomial decoder "
        "of --decoder-degree, raw Z, V-statistic MMD/HSIC, no relevance head, 400 epochs); options given "
        "explicitly override it", AE,
    ),
    MethodOption("latent_dim_v", int, 2, "dimension of the confounded code hV", AE),
    MethodOption("latent_dim_w", int, 2, "dimension of the instrument code hW", AE),
    MethodOption("hidden", int, 64, "width of the hidden layers", AE),
    MethodOption("n_layers", int, 2, "hidden layers in encoder/decoder (0 = linear encoder)", AE),
    MethodOption("encoder_layers", int, None, "hidden layers of the encoder (default: --n-layers; 0 = linear encoder)", AE),
    MethodOption("encoder", click.Choice(ENCODER_NAMES), "linear+mlp", "encoder network", AE),
    MethodOption("decoder", click.Choice(DECODER_NAMES), "mlp", "decoder network ('poly': linear in the monomials of the codes)", AE),
    MethodOption("decoder_degree", int, 3, "degree of the monomials of the 'poly' decoder", AE),
    MethodOption("whiten", bool, True, "whiten Z (pooled covariance) before the network", AE),
    MethodOption("linear_w", bool, False, "make hW an affine function of Z (MLP only for hV)", AE),
    MethodOption("lam_inv", float, 100.0, "weight of the MMD invariance penalty", AE),
    MethodOption("lam_ind", float, 1.0, "weight of the hW-hV independence penalty", AE),
    MethodOption("lam_ent", float, 0.01, "weight of the log-det entropy bonus", AE),
    MethodOption("lam_rel", float, 1.0, "weight of the exposure relevance head (0 = off; >0 uses the exposure of the training folds)", AE),
    MethodOption("mmd_kernel", click.Choice(MMD_KERNEL_NAMES), "rbf", "MMD kernel", AE),
    MethodOption("independence", click.Choice(INDEPENDENCE_NAMES), "rbf", "independence measure", AE),
    MethodOption("adaptive_balancer", bool, False, "rescale penalty weights to the reconstruction scale", AE),
    MethodOption("warm_start", click.Choice(WARM_START_NAMES), "none", "initialise from the closed-form invariant directions", AE),
    MethodOption("epochs", int, 200, "maximum training epochs", AE),
    MethodOption("warmup_epochs", int, 40, "epochs over which penalty weights ramp up from 0", AE),
    MethodOption("batch_size", int, 128, "rows per environment in each mini-batch", AE),
    MethodOption("lr", float, 3e-3, "AdamW learning rate", AE),
    MethodOption("device", str, "auto", "torch device ('auto' = CUDA when available)", AE),
    N_FOLDS,
    MethodOption("invariance_permutations", int, 99, "permutations of the held-out invariance test (0 = skip)", AE),
    DIAGNOSTIC_PERMUTATIONS,
)  # fmt: skip
#: Autoencoder options that configure the method, not the `InvariantAutoencoder` estimator.
AUTOENCODER_METHOD_ONLY = ("n_folds", "invariance_permutations", "diagnostic_permutations", "preset")
#: Option name -> `InvariantAutoencoder` constructor argument, where they differ.
AUTOENCODER_ARGUMENT = {"latent_dim_v": "dim_v", "latent_dim_w": "dim_w"}

# ------------------------------------------------------------------ summary-statistic MR and baselines
SUMMARY = "summary-statistic MR"
N_BOOTSTRAP = MethodOption("n_bootstrap", int, 1000, "bootstrap draws for the weighted median and weighted mode SEs", SUMMARY)
ENV_ADJUST = MethodOption("sumstats_env_adjust", bool, True, "adjust per-variant associations for environment fixed effects", SUMMARY)
MODE_PHI = MethodOption("mode_phi", float, 1.0, "bandwidth multiplier of the weighted mode estimator", SUMMARY)
PRESSO_DRAWS = MethodOption("presso_n_distribution", int, 1000, "simulated data sets for the MR-PRESSO null distribution", SUMMARY)
PRESSO_SIGNIFICANCE = MethodOption("presso_significance", float, 0.05, "MR-PRESSO level for the global and outlier tests", SUMMARY)
P_THRESHOLD = MethodOption(
    "sumstats_p_threshold", float, None,
    "keep only variants whose pooled exposure association has p below this "
    "(e.g. 5e-8, the usual genome-wide selection; default: every variant)", SUMMARY,
)  # fmt: skip
SUMMARY_PVALUES = MethodOption(
    "summary_pvalues", click.Choice(("twosamplemr", "normal", "t")), "twosamplemr",
    "p-values of summary-statistic MR: twosamplemr (t for MR-Egger and the modes, normal elsewhere), "
    "normal (MendelianRandomization) or t (p-values and intervals)", SUMMARY,
)  # fmt: skip
SUMMARY_OPTIONS = (ENV_ADJUST, P_THRESHOLD, SUMMARY_PVALUES)
MEDIAN_WEIGHTS = MethodOption(
    "median_weights", click.Choice(("second_order", "first_order")), "second_order",
    "weighted medians: second-order weights (TwoSampleMR) or first-order (MendelianRandomization)", SUMMARY,
)  # fmt: skip
RADIAL_WEIGHTS = MethodOption(
    "radial_weights", click.Choice(("modified_second_order", "second_order", "first_order")), "modified_second_order",
    "ivw_radial: weights of the radial regression (RadialMR weights = 3, 2, 1)", SUMMARY,
)  # fmt: skip
MODE_DENSITY = MethodOption(
    "mode_density", click.Choice(("r_density", "exact")), "r_density",
    "mode estimators: the maximum of R's binned density() grid (TwoSampleMR) or of the exact kernel sum", SUMMARY,
)  # fmt: skip
PENALTY_K = MethodOption("penalty_k", float, 20.0, "penalised weighted median: weight multiplier min(1, k p)", SUMMARY)
RAPS_LOSS = MethodOption("raps_loss", click.Choice(("huber", "tukey", "l2")), "huber",
                         "MR-RAPS loss: huber (k = 1.345), tukey (k = 4.685) or l2 (not robust)", SUMMARY)
RAPS_OVERDISPERSION = MethodOption("raps_overdispersion", bool, True,
                                   "MR-RAPS: model balanced pleiotropy as overdispersion tau^2", SUMMARY)
RAPS_VERSION = MethodOption("raps_version", click.Choice(("profile", "mle")), "profile",
                            "MR-RAPS: profile (current mr.raps::mr.raps, as TwoSampleMR) or mle (first generation)", SUMMARY)
CONMIX_PSI = MethodOption("conmix_psi", float, 0.0,
                          "contamination mixture: SD of the invalid variants' ratio estimates (0 = 1.5 x SD of the ratios)", SUMMARY)
CONMIX_STEP = MethodOption("conmix_step", float, 0.01, "contamination mixture: grid step of the profile likelihood", SUMMARY)
MV_MODEL = MethodOption("mv_model", click.Choice(("lm", "default", "random", "fixed")), "lm",
                        "mv_ivw SEs: lm (residual-SE scaled, TwoSampleMR and MVMR), or MendelianRandomization's "
                        "random/fixed/default (fixed with 3 variants or fewer)", SUMMARY)
MV_EGGER_ORIENTATE = MethodOption("mv_egger_orientate", str, None,
                                  "mv_egger: the exposure whose associations are made positive (default: the first)", SUMMARY)

BINARY = "binary outcome"
BINARY_SE = MethodOption(
    "binary_se", click.Choice(("sandwich", "bootstrap")), "sandwich",
    "SE of the log odds ratio: the two-stage sandwich, or a seeded bootstrap refitting both stages", BINARY,
)  # fmt: skip
BINARY_BOOTSTRAP = MethodOption("binary_bootstrap", int, 500, "bootstrap draws for --binary-se bootstrap", BINARY)
BINARY_OPTIONS = (BINARY_SE, BINARY_BOOTSTRAP)

EXTERNAL = "external instruments"

BASELINE = "IV baselines"
N_PCS = MethodOption(
    "n_pcs", int, 10,
    "PCs of the instrument matrix adjusted for by tsls_pcs (at most #instruments - 1) when no PC covariates "
    "are given; genome-wide PCs given with --covar PC1-PC10 (PLINK 2 --pca, or the biobank's) are used instead "
    "and are preferred", BASELINE,
)  # fmt: skip
TSHT_THRESHOLD = MethodOption("tsht_threshold", float, None, "TSHT thresholding multiplier (default sqrt(log n))", BASELINE)


WITHIN_FAMILY = "within-family MR"
WF_FIRST_STAGE = MethodOption(
    "wf_first_stage", click.Choice(("crossfit", "tsls", "liml")), "crossfit",
    "within_family: the instrument: 'crossfit' (a within-family score whose weights were fitted on other "
    "families; no many-instrument bias), or every variant with family fixed effects by 2SLS or LIML",
    WITHIN_FAMILY,
)  # fmt: skip
WF_FOLDS = MethodOption("wf_folds", int, 5, "within_family: folds of families for the cross-fitted score", WITHIN_FAMILY)
WF_SE = MethodOption(
    "wf_se", click.Choice(("jackknife", "cluster")), "jackknife",
    "within_family (crossfit): SE from the delete-a-group jackknife over families (refits the score weights), "
    "or the cluster-robust 2SLS SE that treats the score as fixed (too small by 10-20% in simulations)",
    WITHIN_FAMILY,
)  # fmt: skip
WITHIN_FAMILY_OPTIONS = (WF_FIRST_STAGE, WF_FOLDS, WF_SE)

GENOTYPE_INVARIANT = "invariant_genotype"
GENOTYPE_INVARIANT_OPTIONS = (
    MethodOption("gi_n_removed", str, "auto", "invariant_genotype: covariance-shift directions to remove: 'auto' "
                 "(parallel analysis over environment relabellings) or a number", GENOTYPE_INVARIANT),
    MethodOption("gi_permutations", int, 49, "invariant_genotype: environment relabellings of the parallel analysis "
                 "(at least 19)", GENOTYPE_INVARIANT),
    AR_MAX_INSTRUMENTS,
    DIAGNOSTIC_PERMUTATIONS,
)

#: Smallest accepted value of integer options, and why (checked before any work starts).
_MINIMUM = {
    "n_folds": (2, "cross-fitting needs at least 2 folds"),
    "n_permutations": (19, "with fewer permutations the test cannot reject at level 0.05, so every direction would be kept"),
    "diagnostic_permutations": (19, "with fewer permutations the tests cannot reject at level 0.05"),
    "ar_max_instruments": (1, "it is a number of instruments"),
    "n_bootstrap": (2, "a bootstrap SE needs at least 2 draws"),
    "presso_n_distribution": (2, "the null distribution needs at least 2 draws"),
    "n_pcs": (1, "it is a number of principal components"),
    "latent_dim_v": (1, "a code needs at least one dimension"),
    "latent_dim_w": (1, "a code needs at least one dimension"),
    "epochs": (1, "training needs at least one epoch"),
    "batch_size": (2, "a mini-batch needs at least 2 rows per environment"),
    "decoder_degree": (1, "the monomial decoder needs degree at least 1"),
    "invariance_permutations": (0, "0 skips the test"),
    "poly_restarts": (1, "stage 1 needs at least one start"),
    "poly_max_latent_dim": (1, "a code needs at least one dimension"),
    "poly_bootstrap": (0, "0 turns the bootstrap off"),
    "binary_bootstrap": (2, "a bootstrap SE needs at least 2 draws"),
    "wf_folds": (2, "cross-fitting needs at least 2 folds"),
}


def check_option_values(values) -> None:
    """Refuse option values that would make a method silently wrong (e.g. --n-permutations 0)."""
    from invariant_mr.errors import InputError

    for name, (minimum, why) in _MINIMUM.items():
        value = values.get(name)
        if value is None:
            continue
        if int(value) < minimum:
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag} must be at least {minimum}, got {value}: {why}")
    for name in ("n_components", "signal_rank", "direction_bootstrap"):
        value = values.get(name)
        if value is None or value == "auto":
            continue
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise InputError(f"--{name.replace('_', '-')} must be 'auto' or an integer, got {value!r}") from None
        if number < 0 or (name != "direction_bootstrap" and number == 0) or (name == "direction_bootstrap" and number == 1):
            allowed = "0, at least 2, or 'auto'" if name == "direction_bootstrap" else "a positive integer or 'auto'"
            raise InputError(f"--{name.replace('_', '-')} must be {allowed}, got {value!r}")
