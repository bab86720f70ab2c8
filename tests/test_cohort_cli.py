"""The cohort features on the command line: --cluster, --outcome-type binary, fit/apply and --instruments-from."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from bed_reader import to_bed
from genetic_fixtures import write_study

from invariant_mr.cli import main
from invariant_mr.estimators.binary_outcome import fit_binary_iv
from invariant_mr.estimators.iv import fit_kclass
from invariant_mr.inference.crossfit import stratified_folds
from invariant_mr.simulation.binary import simulate_binary_outcome
from invariant_mr.simulation.families import simulate_sibling_families


def _estimates(path):
    return pd.read_csv(path / "estimates.tsv", sep="\t").set_index(["method", "scope"])


def _results(path):
    return json.loads((path / "results.json").read_text())


def _row(path, method, scope="pooled"):
    return next(e for e in _results(path)["estimates"] if e["method"] == method and e["scope"] == scope)


def _one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


# ----------------------------------------------------------------------------- --cluster
@pytest.fixture(scope="module")
def families(tmp_path_factory):
    d = simulate_sibling_families(300, 6, seed=1)
    df = pd.DataFrame(d.Z, columns=[f"z{j + 1}" for j in range(d.Z.shape[1])])
    df["exposure"], df["outcome"] = d.exposure, d.outcome
    df["fam"] = [f"f{x}" for x in d.family]
    df["env"] = np.where(d.family % 2 == 0, "A", "B")
    df["iid"] = [f"s{i}" for i in range(len(df))]
    df.loc[3, "fam"] = np.nan  # one sample without a family: dropped and counted
    path = tmp_path_factory.mktemp("fam") / "fam.tsv"
    df.to_csv(path, sep="\t", index=False, float_format="%.17g")
    return path, df


def _table_run(path, out, *extra):
    return ["run", "--table", str(path), "--env", "env", "--exposure", "exposure", "--outcome", "outcome",
            "--instruments", "z*", "--out", str(out), "--quiet", "--no-report", *extra]


def test_cluster_se_equals_fit_kclass_cluster_se(families, tmp_path):
    path, df = families
    out = tmp_path / "res"
    assert main(_table_run(path, out, "--cluster", "fam", "--methods", "tsls_all_env,liml_all_env")) == 0
    kept = df.dropna(subset=["fam"])
    Z = kept[[f"z{j + 1}" for j in range(6)]].to_numpy()
    env_dummy = (kept["env"] == "B").to_numpy(float)[:, None]
    ref = fit_kclass(kept["outcome"], kept["exposure"], Z, env_dummy, cov_type="cluster", clusters=kept["fam"])
    row = _row(out, "tsls_all_env")
    assert row["estimate"] == pytest.approx(ref.estimate, rel=1e-10)
    assert row["se"] == pytest.approx(ref.se, rel=1e-10)
    assert row["first_stage_f"] == pytest.approx(ref.first_stage_f, rel=1e-8)
    assert row["extra"]["cov_type"] == "cluster" and row["extra"]["n_clusters"] == 300 == ref.n_clusters
    hc0 = fit_kclass(kept["outcome"], kept["exposure"], Z, env_dummy, cov_type="robust")
    assert row["se"] > 1.1 * hc0.se  # siblings share errors: the clustered SE is larger
    # Per-environment rows are clustered on that environment's families.
    env_a = kept["env"] == "A"
    ref_a = fit_kclass(kept["outcome"][env_a], kept["exposure"][env_a], Z[env_a.to_numpy()], None,
                       cov_type="cluster", clusters=kept["fam"][env_a])
    assert _row(out, "tsls_all_env", "env:A")["se"] == pytest.approx(ref_a.se, rel=1e-10)
    params = _results(out)["provenance"]["parameters"]
    assert params["cov_type"] == "cluster" and params["rows_dropped"] == {"missing cluster (fam)": 1}


def test_cluster_bad_combinations_are_one_line_errors(families, tmp_path, capsys):
    path, _ = families
    _one_line_error(capsys, _table_run(path, tmp_path / "a", "--cluster", "fam", "--cov-type", "unadjusted"),
                    "cannot be combined with --cov-type unadjusted")
    _one_line_error(capsys, _table_run(path, tmp_path / "b", "--cov-type", "cluster"), "needs --cluster")
    _one_line_error(capsys, _table_run(path, tmp_path / "c", "--cluster", "family_id"), "--cluster")


def test_cluster_folds_keep_whole_clusters():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(90), rng.integers(1, 4, 90))
    env = (clusters % 3).astype(np.int64)
    folds = stratified_folds(env, 3, np.random.default_rng(1), clusters=clusters)
    for c in np.unique(clusters):
        assert np.unique(folds[clusters == c]).size == 1
    for e in range(3):  # balanced within environments up to one cluster's size
        sizes = np.bincount(folds[env == e], minlength=3)
        assert sizes.max() - sizes.min() <= 3


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    s = write_study(tmp_path_factory.mktemp("study"), n_per_env=(120, 120, 120), p=10, seed=11)
    table = s.pheno_table.copy()
    table["family"] = [f"fam{int(i[2:]) // 2}" for i in table["IID"]]  # pairs of consecutive samples
    table.loc[table.index[:2], "family"] = "NA"
    table.to_csv(s.pheno, sep="\t", index=False, float_format="%.17g")
    return s


def test_cluster_with_pheno_crossfit_and_direction_bootstrap(study, tmp_path):
    out = tmp_path / "res"
    argv = ["run", "--bfile", str(study.prefix), "--pheno", str(study.pheno), "--env-col", "environment",
            "--exposure", "exposure", "--outcome", "outcome", "--out", str(out), "--quiet", "--no-report",
            "--cluster", "family", "--signal-rank", "10", "--n-components", "3", "--direction-bootstrap", "20",
            "--diagnostic-permutations", "99", "--methods", "invariant_linear,invariant_linear_crossfit,tsht"]
    assert main(argv) == 0
    res = _results(out)
    assert res["provenance"]["samples"]["dropped"]["missing cluster (family)"] == 2
    lin = _row(out, "invariant_linear")
    assert lin["extra"]["cov_type"] == "cluster" and "direction bootstrap (20" in lin["extra"]["se_method"]
    assert _row(out, "invariant_linear_crossfit")["extra"]["n_clusters"] == 180
    tsht = _row(out, "tsht")
    assert tsht["extra"]["cov_type"] == "cluster" and "ignore clustering" in tsht["extra"]["selection_cov_type"]
    # Diagnostics permute whole families (the crossfit one needs cluster-aligned folds to run at all).
    names = {d["name"]: d for d in res["diagnostics"]}
    assert names["invariant_linear_crossfit/invariance_mmd"]["pvalue"] is not None


# ----------------------------------------------------------------------------- binary outcomes
@pytest.fixture(scope="module")
def binary_table(tmp_path_factory):
    sim = simulate_binary_outcome(n=4000, n_variants=8, seed=5)
    df = pd.DataFrame(sim.Z, columns=[f"g{j + 1}" for j in range(sim.Z.shape[1])])
    df["exposure"], df["disease"] = sim.exposure, sim.outcome.astype(int)
    df["env"] = np.where(np.random.default_rng(6).random(len(df)) < 0.5, "A", "B")
    path = tmp_path_factory.mktemp("binary") / "binary.tsv"
    df.to_csv(path, sep="\t", index=False, float_format="%.17g")
    return path, df, sim


def _binary_run(path, out, *extra):
    return ["run", "--table", str(path), "--env", "env", "--exposure", "exposure", "--outcome", "disease",
            "--instruments", "g*", "--out", str(out), "--quiet", "--no-report", "--outcome-type", "binary", *extra]


def test_binary_outcome_estimates_the_log_odds_ratio(binary_table, tmp_path):
    path, df, sim = binary_table
    out = tmp_path / "res"
    assert main(_binary_run(path, out, "--methods", "tsri_all_env,tsps_all_env")) == 0
    tsri = _row(out, "tsri_all_env")
    assert abs(tsri["estimate"] - sim.beta) < 3.5 * tsri["se"]  # 2SRI is consistent here (rho = 1)
    assert "conditional" in tsri["extra"]["estimand"] and tsri["extra"]["scale"] == "log odds ratio"
    assert tsri["extra"]["odds_ratio"] == pytest.approx(np.exp(tsri["estimate"]))
    ref = fit_binary_iv(df["disease"], df["exposure"], df[[f"g{j + 1}" for j in range(8)]],
                        (df["env"] == "B").to_numpy(float)[:, None], method="2sri")
    assert tsri["estimate"] == pytest.approx(ref.estimate, rel=1e-8)
    assert tsri["se"] == pytest.approx(ref.se, rel=1e-8)
    tsps = _row(out, "tsps_all_env")
    assert tsps["estimate"] < tsri["estimate"]  # attenuated by non-collapsibility
    assert "attenuated" in tsps["extra"]["estimand"]
    assert {s for _, s in _estimates(out).index} == {"pooled", "env:A", "env:B"}


def test_binary_defaults_bootstrap_and_refusals(binary_table, tmp_path, capsys):
    path, _, _ = binary_table
    out = tmp_path / "boot"
    assert main(_binary_run(path, out, "--no-per-env", "--binary-se", "bootstrap", "--binary-bootstrap", "30")) == 0
    methods = {m for m, _ in _estimates(out).index}
    assert methods == {"tsri_all_env", "tsps_all_env", "tsri_invariant_linear", "tsps_invariant_linear"}
    row = _row(out, "tsri_all_env")
    assert row["extra"]["se_type"] == "bootstrap" and row["extra"]["n_bootstrap"] == 30
    _one_line_error(capsys, _binary_run(path, tmp_path / "x", "--methods", "tsls_all_env"),
                    "fit a linear outcome model")
    argv = _binary_run(path, tmp_path / "y", "--methods", "tsri_all_env")
    argv[argv.index("disease")] = "exposure"
    argv[argv.index("--exposure") + 1] = "g1"
    _one_line_error(capsys, argv, "must be coded 0/1")
    cont = [a for a in _binary_run(path, tmp_path / "z", "--methods", "tsri_all_env") if a not in ("--outcome-type", "binary")]
    _one_line_error(capsys, cont, "add --outcome-type binary")


# ----------------------------------------------------------------------------- fit / apply / --instruments-from
def _write_cohort(study, prefix, order=None, swap=()):
    """Cohort `study`'s genotypes as a PLINK fileset, variants in `order`, alleles swapped at `swap`."""
    G = study.genotypes.copy()
    p = G.shape[1]
    order = np.arange(p) if order is None else np.asarray(order)
    a1, a2 = np.array(["A"] * p, dtype=object), np.array(["G"] * p, dtype=object)
    for j in swap:
        G[:, j] = 2 - G[:, j]
        a1[j], a2[j] = "G", "A"
    to_bed(
        str(prefix) + ".bed", G[:, order].astype(np.float32),
        properties={"fid": study.fid, "iid": study.iid, "sid": np.array(study.variant_ids)[order],
                    "chromosome": ["1"] * p, "bp_position": [10_000 * (j + 1) for j in order],
                    "allele_1": a1[order], "allele_2": a2[order]},
    )
    return prefix


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohorts")
    a = write_study(root / "a", n_per_env=(150, 150, 150), p=10, seed=3)
    b = write_study(root / "b", n_per_env=(120, 120, 120), p=10, seed=4)
    model = root / "map"
    argv = ["fit", "--bfile", str(a.prefix), "--pheno", str(a.pheno), "--env-col", "environment",
            "--exposure", "exposure", "--outcome", "outcome", "--method", "invariant_linear",
            "--signal-rank", "10", "--n-components", "3", "--model-out", str(model), "--quiet"]
    assert main(argv) == 0
    return a, b, model


def test_fit_writes_a_map_with_alleles_and_provenance(cohorts):
    from invariant_mr.instruments.portable import load_instrument_map

    _, _, model = cohorts
    m = load_instrument_map(model)
    assert m.kind == "linear" and m.n_variants == 10 and m.n_instruments == 3
    assert set(m.counted_alleles) == {"A"} and set(m.other_alleles) == {"G"}
    assert sorted(p.name for p in model.iterdir()) == ["loadings.tsv", "manifest.json", "provenance.json", "score.tsv"]
    prov = json.loads((model / "provenance.json").read_text())["provenance"]
    assert prov["parameters"]["method"] == "invariant_linear" and prov["seed"] == 0


def test_apply_aligns_reordered_and_swapped_variants_to_1e8(cohorts, tmp_path):
    from invariant_mr.instruments.portable import load_instrument_map

    _, b, model = cohorts
    swapped = _write_cohort(b, tmp_path / "b_swapped", order=np.random.default_rng(0).permutation(10), swap=(1, 4, 7))
    outs = {}
    for name, prefix in (("orig", b.prefix), ("swap", swapped)):
        outs[name] = tmp_path / name
        assert main(["apply", "--model", str(model), "--bfile", str(prefix), "--out", str(outs[name]), "--quiet"]) == 0
    w0 = pd.read_csv(outs["orig"] / "instruments.tsv", sep="\t")
    w1 = pd.read_csv(outs["swap"] / "instruments.tsv", sep="\t")
    assert list(w0.columns) == ["IID", "W1", "W2", "W3"]
    assert (w0["IID"] == w1["IID"]).all()
    np.testing.assert_allclose(w1[["W1", "W2", "W3"]], w0[["W1", "W2", "W3"]], rtol=0, atol=1e-8)
    m = load_instrument_map(model)  # and equal to the map's formula on cohort b's dosages
    expected = ((b.genotypes - m.center) / m.scale) @ m.loadings
    np.testing.assert_allclose(w0[["W1", "W2", "W3"]], expected, rtol=0, atol=1e-8)
    report = json.loads((outs["swap"] / "alignment.json").read_text())
    assert report["alignment"]["n_flipped"] == 3 and report["alignment"]["n_missing"] == 0
    assert report["provenance"]["command"].startswith("invariant-mr apply")


def test_apply_reports_missing_variants_and_refuses_too_many(cohorts, tmp_path, capsys):
    _, b, model = cohorts
    sub = tmp_path / "sub"
    keep = np.arange(9)  # one of ten variants missing: 10%, at the limit
    G = b.genotypes[:, keep]
    to_bed(str(sub) + ".bed", G.astype(np.float32),
           properties={"fid": b.fid, "iid": b.iid, "sid": np.array(b.variant_ids)[keep], "chromosome": ["1"] * 9,
                       "bp_position": [10_000 * (j + 1) for j in keep], "allele_1": ["A"] * 9, "allele_2": ["G"] * 9})
    assert main(["apply", "--model", str(model), "--bfile", str(sub), "--out", str(tmp_path / "ok"), "--quiet"]) == 0
    report = json.loads((tmp_path / "ok" / "alignment.json").read_text())["alignment"]
    assert report["missing"] == [b.variant_ids[9]]
    _one_line_error(capsys, ["apply", "--model", str(model), "--bfile", str(sub), "--out", str(tmp_path / "no"),
                             "--max-missing-fraction", "0.05"], "the limit is 5%")
    assert not (tmp_path / "no").exists()


def test_run_instruments_from_estimates_2sls_on_the_applied_instruments(cohorts, tmp_path):
    _, b, model = cohorts
    applied = tmp_path / "applied"
    assert main(["apply", "--model", str(model), "--bfile", str(b.prefix), "--out", str(applied), "--quiet"]) == 0
    out = tmp_path / "res"
    argv = ["run", "--pheno", str(b.pheno), "--instruments-from", str(applied), "--env-col", "environment",
            "--exposure", "exposure", "--outcome", "outcome", "--out", str(out), "--quiet", "--no-report",
            "--diagnostic-permutations", "99"]
    assert main(argv) == 0
    row = _row(out, "tsls_external")
    W = pd.read_csv(applied / "instruments.tsv", sep="\t").set_index("IID")
    ph = b.pheno_table.set_index("IID").loc[W.index]
    dummies = pd.get_dummies(ph["environment"], drop_first=True).to_numpy(float)
    ref = fit_kclass(ph["outcome"], ph["exposure"], W.to_numpy(), dummies, cov_type="robust")
    assert row["estimate"] == pytest.approx(ref.estimate, rel=1e-9)
    assert row["se"] == pytest.approx(ref.se, rel=1e-9)
    assert row["ar_ci_low"] is not None
    res = _results(out)
    assert any(d["name"].startswith("tsls_external/") for d in res["diagnostics"])
    assert res["provenance"]["external_instruments"]["alignment"]["n_used"] == 10


def test_fit_and_apply_bad_inputs(cohorts, tmp_path, capsys):
    a, b, model = cohorts
    _one_line_error(capsys, ["fit", "--bfile", str(a.prefix), "--pheno", str(a.pheno), "--env-col", "environment",
                             "--exposure", "exposure", "--outcome", "outcome", "--method", "invariant_linear",
                             "--standardize-dosages", "--model-out", str(tmp_path / "m")], "--raw-dosages")
    _one_line_error(capsys, ["apply", "--model", str(tmp_path / "nomap"), "--bfile", str(b.prefix),
                             "--out", str(tmp_path / "o")], "not an instrument map")
    _one_line_error(capsys, ["apply", "--model", str(model), "--out", str(tmp_path / "o")], "exactly one genotype input")
    _one_line_error(capsys, ["run", "--pheno", str(b.pheno), "--bfile", str(b.prefix), "--instruments-from",
                             str(model), "--env-col", "environment", "--exposure", "exposure", "--outcome", "outcome",
                             "--out", str(tmp_path / "r")], "replaces the genotypes")


# ----------------------------------------------------------------------------- covariate ranges on --table
def test_table_covariates_accept_ranges_and_tsls_pcs_uses_them(families, tmp_path):
    _, df = families
    rng = np.random.default_rng(2)
    df = df.dropna(subset=["fam"]).copy()
    for k in range(1, 4):
        df[f"PC{k}"] = rng.normal(size=len(df))
    table = tmp_path / "pcs.tsv"
    df.to_csv(table, sep="\t", index=False)
    out = tmp_path / "res"
    assert main(_table_run(table, out, "--covariates", "PC1-PC3", "--methods", "tsls_pcs", "--no-per-env")) == 0
    row = _row(out, "tsls_pcs")
    assert row["extra"]["pcs_from"] == "covariates PC1, PC2, PC3" and row["extra"]["n_pcs"] == 3


def test_autoencoder_map_round_trip_through_fit_and_apply(cohorts, tmp_path):
    a, b, _ = cohorts
    model = tmp_path / "ae_map"
    argv = ["fit", "--bfile", str(a.prefix), "--pheno", str(a.pheno), "--env-col", "environment",
            "--exposure", "exposure", "--outcome", "outcome", "--method", "invariant_autoencoder",
            "--epochs", "3", "--warmup-epochs", "1", "--device", "cpu", "--model-out", str(model), "--quiet"]
    assert main(argv) == 0
    assert (model / "model").is_dir() and (model / "variants.tsv").is_file()
    swapped = _write_cohort(b, tmp_path / "b_swapped", order=np.arange(10)[::-1], swap=(0, 5))
    got = []
    for name, prefix in (("orig", b.prefix), ("swap", swapped)):
        assert main(["apply", "--model", str(model), "--bfile", str(prefix), "--out", str(tmp_path / name),
                     "--quiet"]) == 0
        got.append(pd.read_csv(tmp_path / name / "instruments.tsv", sep="\t"))
    assert got[0].shape == (360, 3)
    np.testing.assert_allclose(got[1].iloc[:, 1:], got[0].iloc[:, 1:], rtol=0, atol=1e-8)


def test_apply_to_a_dosage_table_aligns_by_column_name(cohorts, tmp_path):
    _, b, model = cohorts
    table = pd.DataFrame(b.genotypes[:, ::-1], columns=list(b.variant_ids)[::-1])
    table.insert(0, "iid", b.iid)
    table["extra_col"] = 1.0  # not a map variant: ignored
    path = tmp_path / "dosages.tsv"
    table.to_csv(path, sep="\t", index=False)
    assert main(["apply", "--model", str(model), "--table", str(path), "--out", str(tmp_path / "t"), "--quiet"]) == 0
    assert main(["apply", "--model", str(model), "--bfile", str(b.prefix), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    from_table = pd.read_csv(tmp_path / "t" / "instruments.tsv", sep="\t")
    from_plink = pd.read_csv(tmp_path / "p" / "instruments.tsv", sep="\t")
    np.testing.assert_allclose(from_table.iloc[:, 1:], from_plink.iloc[:, 1:], rtol=0, atol=1e-10)
    report = json.loads((tmp_path / "t" / "alignment.json").read_text())["alignment"]
    assert report["n_alleles_unchecked"] == 10


def test_apply_to_a_vcf_with_other_ref_alt_orientation(cohorts, tmp_path):
    from genotype_writers import Fileset, write_vcf

    _, b, model = cohorts
    # VCF dosages count ALT; make ALT the map's other allele at half the variants (dosage 2 - x there).
    swap = np.arange(10) % 2 == 0
    G = np.where(swap, 2 - b.genotypes, b.genotypes)
    variants = pd.DataFrame({"variant_id": b.variant_ids, "chrom": ["1"] * 10,
                             "pos": [10_000 * (j + 1) for j in range(10)],
                             "ref": np.where(swap, "A", "G"), "alt": np.where(swap, "G", "A")})
    vcf = write_vcf(Fileset(G, b.iid, b.iid, variants), tmp_path / "b.vcf")
    assert main(["apply", "--model", str(model), "--vcf", str(vcf), "--out", str(tmp_path / "v"), "--quiet"]) == 0
    assert main(["apply", "--model", str(model), "--bfile", str(b.prefix), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    from_vcf = pd.read_csv(tmp_path / "v" / "instruments.tsv", sep="\t")
    from_plink = pd.read_csv(tmp_path / "p" / "instruments.tsv", sep="\t")
    np.testing.assert_allclose(from_vcf.iloc[:, 1:], from_plink.iloc[:, 1:], rtol=0, atol=1e-8)
    assert json.loads((tmp_path / "v" / "alignment.json").read_text())["alignment"]["n_flipped"] == 5
