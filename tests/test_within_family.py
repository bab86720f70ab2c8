"""Within-family MR: exact agreement with the dummy-variable fit, bias and coverage on sibships, API and CLI."""

from __future__ import annotations

import numpy as np
import pytest

from invariant_mr.errors import InputError
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.estimators.within_family import (
    family_structure,
    fit_within_family,
    fit_within_family_crossfit,
    within_family_associations,
)
from invariant_mr.methods.registry import MethodContext
from invariant_mr.pipeline import run_analysis
from invariant_mr.simulation.sibships import simulate_sibships


def _small_families(seed=0, n_families=40):
    """Families of 1-3 members with a family effect in every variable."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, size=n_families)
    fam = np.repeat(np.arange(n_families), sizes)
    n = fam.size
    a = rng.standard_normal((n_families, 4))[fam]
    Z = rng.standard_normal((n, 3)) + a[:, :1]
    x = rng.standard_normal(n) + a[:, 1]
    u = rng.standard_normal(n)
    d = Z @ np.array([0.8, 0.5, 0.3]) + 0.5 * x + u + a[:, 2] + rng.standard_normal(n)
    y = 0.7 * d + 0.3 * x + u + a[:, 3] + rng.standard_normal(n)
    return y, d, Z, x, np.array([f"F{f}" for f in fam], dtype=object), fam


@pytest.mark.parametrize("kappa", ["tsls", "liml"])
def test_demeaned_fit_equals_family_dummies(kappa):
    """Frisch-Waugh-Lovell: the demeaned fit is the fit with one dummy per family, SE included."""
    y, d, Z, x, labels, fam = _small_families()
    wf = fit_within_family(y, d, Z, labels, x[:, None], kappa=kappa)
    sizes = np.bincount(fam)
    keep = sizes[fam] >= 2  # singletons are fitted exactly by their own dummy and carry no information
    codes = np.unique(fam[keep], return_inverse=True)[1]
    dummies = np.eye(codes.max() + 1)[codes]
    ref = fit_kclass(y[keep], d[keep], Z[keep], np.column_stack([dummies, x[keep]]), kappa=kappa,
                     cov_type="cluster", clusters=codes, add_intercept=False)
    assert wf.estimate == pytest.approx(ref.estimate, rel=1e-10)
    assert wf.se == pytest.approx(ref.se, rel=1e-8)
    assert wf.n_singletons_dropped == int((sizes == 1).sum())
    assert wf.n_families == codes.max() + 1


def test_within_family_associations_equal_per_variant_fixed_effects_fits():
    y, d, Z, _, labels, fam = _small_families(seed=1)
    ss = within_family_associations(Z, d, y, labels)
    keep = np.bincount(fam)[fam] >= 2
    codes = np.unique(fam[keep], return_inverse=True)[1]
    dummies = np.eye(codes.max() + 1)[codes]
    for j in range(Z.shape[1]):
        for trait, beta, se in ((d, ss.beta_exposure, ss.se_exposure), (y, ss.beta_outcome, ss.se_outcome)):
            ref = fit_kclass(trait[keep], Z[keep, j], None, dummies, kappa="ols", cov_type="cluster",
                             clusters=codes, add_intercept=False)
            assert beta[j] == pytest.approx(ref.estimate, rel=1e-10)
            assert se[j] == pytest.approx(ref.se, rel=1e-8)


def test_family_labels_are_checked():
    with pytest.raises(InputError, match="siblings"):
        family_structure(np.arange(10), 10)
    with pytest.raises(InputError, match="no family ID"):
        family_structure(np.array(["a", "a", None, "b", "b"], dtype=object), 5)
    with pytest.raises(InputError, match="one label per sample"):
        family_structure(np.array(["a", "a"]), 3)


def test_sibships_share_families_and_are_correlated():
    sim = simulate_sibships(n_families_per_env=200, n_variants=30, n_causal=5, generations=1, seed=4)
    assert sim.n == 3 * 200 * 2
    _, counts = np.unique(sim.family_ids, return_counts=True)
    assert set(counts.tolist()) == {2}
    # Sibling genotypes correlate 0.5 (identity by descent), within one population.
    G = sim.genotypes.astype(float)
    first, second = G[0::2], G[1::2]
    r = np.mean([np.corrcoef(first[:200, j], second[:200, j])[0, 1] for j in range(G.shape[1])])
    assert 0.4 < r < 0.6


def test_bias_and_coverage_on_sibships_where_population_mr_is_biased():
    """Stratification + cross-trait assortative mating + dynastic effect + household: within-family MR is
    unbiased and covers at the nominal rate (binomial tolerance), 2SLS with environment fixed effects is not."""
    R = 120
    err, covered, pop = [], [], []
    for seed in range(R):
        sim = simulate_sibships(n_families_per_env=200, n_variants=20, n_causal=10, n_causal_outcome=5,
                                generations=2, h2=0.6, seed=seed)
        wf = fit_within_family_crossfit(sim.outcome, sim.exposure, sim.genotypes, sim.family_ids, seed=seed,
                                        jackknife_groups=20)
        lo, hi = wf.ci(0.05)
        err.append(wf.estimate - sim.theta)
        covered.append(lo <= sim.theta <= hi)
        if seed < 20:
            env = sim.to_mrdata().env_dummies()
            pop.append(fit_kclass(sim.outcome, sim.exposure, sim.genotypes.astype(float), env).estimate - sim.theta)
    err = np.array(err)
    assert abs(err.mean()) < 3.5 * err.std(ddof=1) / np.sqrt(R)
    # The jackknife is conservative rather than liberal: accept 0.95 - 3 binomial SDs up to 1.
    assert np.mean(covered) >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / R)
    assert np.mean(pop) > 0.1


def test_method_needs_families_and_runs_with_them():
    sim = simulate_sibships(n_families_per_env=150, n_variants=20, n_causal=8, generations=1, seed=2)
    with pytest.raises(InputError, match="family IDs"):
        run_analysis(sim.to_mrdata(), ["within_family"], MethodContext(per_env=False))
    ctx = MethodContext(cov_type="cluster", per_env=True, options={"wf_folds": 3})
    result = run_analysis(sim.to_mrdata(families=True),
                          ["within_family", "within_family_ivw", "within_family_egger"], ctx)
    rows = {(e.method, e.scope): e for e in result.estimates}
    pooled = rows[("within_family", "pooled")]
    assert pooled.extra["n_families"] == 450 and pooled.extra["n_folds"] == 3
    assert pooled.se >= pooled.extra["cluster_se"] * 0.5
    assert ("within_family", "env:pop1") in rows
    assert rows[("within_family_ivw", "pooled")].extra["associations"].startswith("within-family")
    tsls = run_analysis(sim.to_mrdata(families=True), ["within_family"],
                        MethodContext(cov_type="cluster", per_env=False, options={"wf_first_stage": "tsls"}))
    assert tsls.estimates[0].n_instruments == 20


def test_cli_family_col_reads_fid_from_fam(tmp_path, capsys):
    from invariant_mr.cli import main
    from invariant_mr.simulation.genetic_dataset import write_fileset

    sim = simulate_sibships(n_families_per_env=100, n_variants=12, n_causal=4, generations=1, seed=5)
    write_fileset(sim, tmp_path / "sim")
    base = ["run", "--bfile", str(tmp_path / "sim" / "genotypes"), "--pheno", str(tmp_path / "sim" / "phenotypes.tsv"),
            "--env", "environment", "--exposure", "exposure", "--outcome", "outcome", "--quiet",
            "--no-per-env"]
    assert main(base + ["--family-col", "FID", "--methods", "within_family,tsls_all_env", "--wf-folds", "2",
                        "--out", str(tmp_path / "out")]) == 0
    import json

    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    methods = {e["method"]: e for e in payload["estimates"]}
    assert methods["within_family"]["extra"]["n_families"] == 300
    assert methods["tsls_all_env"]["extra"]["n_clusters"] == 300  # every method clusters by family
    assert main(base + ["--family-col", "FID", "--cluster", "environment", "--out", str(tmp_path / "bad")]) == 2
    assert "--family-col" in capsys.readouterr().err


def test_cli_treats_fam_fids_as_families_by_default_and_none_turns_it_off(tmp_path, capsys):
    import json

    from invariant_mr.cli import main
    from invariant_mr.simulation.genetic_dataset import write_fileset

    sim = simulate_sibships(n_families_per_env=100, n_variants=12, n_causal=4, generations=1, seed=5)
    write_fileset(sim, tmp_path / "sim")
    base = ["run", "--bfile", str(tmp_path / "sim" / "genotypes"), "--pheno", str(tmp_path / "sim" / "phenotypes.tsv"),
            "--env", "environment", "--exposure", "exposure", "--outcome", "outcome", "--no-per-env",
            "--methods", "tsls_all_env"]
    assert main(base + ["--out", str(tmp_path / "auto")]) == 0
    assert "families: the FIDs group 300 families" in capsys.readouterr().out
    auto = json.loads((tmp_path / "auto" / "results.json").read_text())
    assert auto["estimates"][0]["extra"]["n_clusters"] == 300
    assert main(base + ["--family-col", "none", "--quiet", "--out", str(tmp_path / "off")]) == 0
    off = json.loads((tmp_path / "off" / "results.json").read_text())
    assert "n_clusters" not in off["estimates"][0]["extra"]


def test_fids_name_families_only_when_groups_are_family_sized():
    from invariant_mr.io.genetic_input import MAX_FAMILY_SIZE, family_sizes

    assert family_sizes(["f1", "f1", "f2", "f3", "f3"]).to_dict() == {"f1": 2, "f3": 2, "f2": 1}
    assert family_sizes([f"i{k}" for k in range(50)]) is None  # FID = IID: unrelated
    assert family_sizes(["0"] * 50) is None  # a placeholder code, not a family
    assert family_sizes(["cohortA"] * (MAX_FAMILY_SIZE + 1) + ["cohortB"] * 3) is None
