"""Issue 10, items 1-16: nothing lost, nothing silently wrong, one clear line instead of a traceback.

Data-loss cases check that the files survive; the others check exit status 2,
one line on stderr, no traceback and no output left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from invariant_mr.cli import main

T = ["--env", "environment", "--exposure", "exposure", "--outcome", "outcome"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "small"
    assert main(["simulate", "--model", "paper", "--n-per-env", "300", "--seed", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def bn(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "bn"
    assert main(["simulate", "--model", "balding-nichols", "--envs", "3", "--n-per-env", "200", "--n-variants", "60",
                 "--seed", "1", "--out", str(out)]) == 0
    return out


def refused(args, capsys, out: Path | None = None, contains: str = "") -> str:
    """Run the CLI, expect exit 2 with one line naming the problem, and no output folder left."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert contains.lower() in err.lower(), err
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if "staging" in p.name]
    return err


def table_run(table, out, *extra):
    return ["run", "--table", str(table), *T, "--instruments", "z*", "--methods", "ols", "--quiet",
            "--out", str(out), *extra]


# ------------------------------------------------------------------ data loss
def test_1_demo_never_replaces_a_folder_without_overwrite(tmp_path, capsys):
    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "thesis.txt").write_text("x")
    capsys.readouterr()
    assert main(["demo", "--out", str(folder), "--n-per-env", "200", "--methods", "ols", "--quiet"]) == 2
    assert (folder / "thesis.txt").read_text() == "x"
    # Even with --overwrite: the folder was not written by invariant-mr.
    assert main(["demo", "--out", str(folder), "--n-per-env", "200", "--methods", "ols", "--quiet", "--overwrite"]) == 2
    assert (folder / "thesis.txt").read_text() == "x"


def test_1_overwrite_replaces_a_previous_run(small, tmp_path):
    out = tmp_path / "res"
    assert main(table_run(small / "data.tsv", out)) == 0
    assert main(table_run(small / "data.tsv", out, "--seed", "3", "--overwrite")) == 0
    assert json.loads((out / "results.json").read_text())["provenance"]["seed"] == 3


def test_2_overwrite_never_deletes_the_inputs(bn, capsys):
    before = sorted(p.name for p in bn.iterdir())
    err = refused(["run", "--bfile", str(bn / "genotypes"), "--pheno", str(bn / "phenotypes.tsv"), *T,
                   "--methods", "ols", "--out", str(bn), "--overwrite", "--quiet"], capsys, contains="input")
    assert "holds an input" in err
    assert sorted(p.name for p in bn.iterdir()) == before


def test_3_concurrent_runs_exactly_one_wins(small, tmp_path):
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "invariant_mr.cli", *table_run(small / "data.tsv", out)[:-2]]
    procs = [subprocess.Popen(cmd + ["--out", str(out), "--seed", str(s)], stderr=subprocess.PIPE, text=True)
             for s in (1, 2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = [err for code, err in results if code == 2][0]
    assert "another invariant-mr run" in loser or "already exists" in loser
    seed = json.loads((out / "results.json").read_text())["provenance"]["seed"]
    winner = [s for s, (code, _) in zip((1, 2), results) if code == 0][0]
    assert seed == winner


def test_3_a_live_lock_is_respected_and_a_dead_one_taken_over(small, tmp_path, capsys):
    out = tmp_path / "locked"
    lock = tmp_path / ".locked.invariant-mr-lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(sleeper.pid))
        refused(table_run(small / "data.tsv", out), capsys, out, contains=f"process {sleeper.pid}")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(table_run(small / "data.tsv", out)) == 0  # the holder is gone
    assert not lock.exists()


def test_4_out_dot_is_refused_cleanly(small, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    for extra in ((), ("--overwrite",)):
        refused(table_run(small / "data.tsv", ".", *extra), capsys)
    assert (tmp_path / "keep.txt").exists()
    assert not [p for p in tmp_path.parent.iterdir() if "staging" in p.name]


def test_5_unwritable_out_fails_before_any_work(small, capsys):
    refused(table_run(small / "data.tsv", "/proc/x"), capsys, contains="cannot write")


def test_6_stale_staging_of_a_killed_run_is_cleaned(small, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f".res.invariant-mr-staging-{gone.pid}-abc"
    stale.mkdir()
    (stale / "results.json").write_text("partial")
    live = tmp_path / f".res.invariant-mr-staging-{os.getpid()}-def"
    live.mkdir()
    assert main(table_run(small / "data.tsv", tmp_path / "res")) == 0
    assert not stale.exists()
    assert live.exists()  # a live process's staging folder is left alone


# ------------------------------------------------------------------ wrong answers with exit status 0
def test_7_exposure_equal_to_outcome_is_refused(small, tmp_path, capsys):
    args = ["run", "--table", str(small / "data.tsv"), "--env", "environment", "--exposure", "exposure",
            "--outcome", "exposure", "--instruments", "z*", "--methods", "ols", "--out", str(tmp_path / "o")]
    refused(args, capsys, tmp_path / "o", contains="both name")


def test_8_plink_missing_code_is_missing_in_tables(small, tmp_path, capsys):
    df = pd.read_csv(small / "data.tsv", sep="\t", dtype=str)
    df.loc[:9, "exposure"] = "-9"
    df.loc[10:12, "outcome"] = "NA"
    path = tmp_path / "coded.tsv"
    df.to_csv(path, sep="\t", index=False)
    clean = df.iloc[13:]
    clean_path = tmp_path / "clean.tsv"
    clean.to_csv(clean_path, sep="\t", index=False)
    capsys.readouterr()
    assert main(table_run(path, tmp_path / "a")[:-3] + ["--out", str(tmp_path / "a")]) == 0
    said = capsys.readouterr().out
    assert "dropped 13 row(s)" in said and "missing exposure (exposure): 10" in said
    assert main(table_run(clean_path, tmp_path / "b")) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["estimates"][0]["estimate"] == pytest.approx(b["estimates"][0]["estimate"], rel=1e-12)
    assert a["provenance"]["parameters"]["rows_dropped"] == {"missing exposure (exposure)": 10,
                                                             "missing outcome (outcome)": 3}
    # --missing-code "" keeps -9 as a value (and then NA rows are still missing)
    assert main(table_run(path, tmp_path / "c", "--missing-code", "")) == 0
    c = json.loads((tmp_path / "c" / "results.json").read_text())
    assert c["estimates"][0]["n"] == len(df) - 3


def test_8_plink_missing_code_in_pheno_files(bn, tmp_path):
    pheno = pd.read_csv(bn / "phenotypes.tsv", sep="\t", dtype=str)
    pheno.loc[:4, "exposure"] = "-9"
    path = tmp_path / "pheno.tsv"
    pheno.to_csv(path, sep="\t", index=False)
    out = tmp_path / "r"
    assert main(["run", "--bfile", str(bn / "genotypes"), "--pheno", str(path), *T, "--methods", "ols",
                 "--out", str(out), "--quiet", "--no-report"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["estimates"][0]["n"] == len(pheno) - 5


def test_9_zero_permutations_is_refused(small, tmp_path, capsys):
    args = table_run(small / "data.tsv", tmp_path / "o", "--n-permutations", "0")
    args[args.index("ols")] = "invariant_linear"
    refused(args, capsys, tmp_path / "o", contains="--n-permutations")


def test_10_duplicate_header_names_are_refused(small, tmp_path, capsys):
    lines = (small / "data.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    header[header.index("z1")] = "z2"
    path = tmp_path / "dup.tsv"
    path.write_text("\n".join(["\t".join(header), *lines[1:]]) + "\n")
    err = refused(table_run(path, tmp_path / "o"), capsys, tmp_path / "o", contains="duplicate")
    assert "'z2'" in err


# ------------------------------------------------------------------ one clear line
def _write(df, path):
    df.to_csv(path, sep="\t", index=False)
    return path


@pytest.mark.parametrize("value", ["1e308", "1e300"])
def test_11_overflowing_values_name_the_column(small, tmp_path, capsys, value):
    df = pd.read_csv(small / "data.tsv", sep="\t", dtype=str)
    df.loc[3, "exposure"] = value
    err = refused(table_run(_write(df, tmp_path / "big.tsv"), tmp_path / "o"), capsys, tmp_path / "o", "too large")
    assert "'exposure'" in err


def test_12_constant_exposure(small, tmp_path, capsys):
    df = pd.read_csv(small / "data.tsv", sep="\t")
    df["exposure"] = 2.0
    refused(table_run(_write(df, tmp_path / "c.tsv"), tmp_path / "o"), capsys, tmp_path / "o", "constant")


def test_13_one_fold_is_refused(small, tmp_path, capsys):
    args = table_run(small / "data.tsv", tmp_path / "o", "--n-folds", "1")
    args[args.index("ols")] = "invariant_linear_crossfit"
    refused(args, capsys, tmp_path / "o", contains="--n-folds")


def test_14_wrong_type_in_config(small, tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("table = 5\n")
    refused(["run", "--config", str(cfg), *T, "--instruments", "z*", "--out", str(tmp_path / "o")], capsys,
            tmp_path / "o", contains="table")
    cfg.write_text('maf = "lots"\n')
    refused(["run", "--config", str(cfg), *T, "--out", str(tmp_path / "o")], capsys, tmp_path / "o", "maf")


def test_15_continuous_env_column_is_summarised(small, tmp_path, capsys):
    df = pd.read_csv(small / "data.tsv", sep="\t")
    df["environment"] = np.random.default_rng(0).standard_normal(len(df))
    err = refused(table_run(_write(df, tmp_path / "e.tsv"), tmp_path / "o"), capsys, tmp_path / "o", "distinct")
    assert len(err) < 400 and "600 distinct values" in err


def test_16_exposure_cannot_be_an_instrument(small, tmp_path, capsys):
    args = table_run(small / "data.tsv", tmp_path / "o")
    args[args.index("z*")] = "z*,exposure"
    refused(args, capsys, tmp_path / "o", contains="cannot also be an instrument")


# ================================================================== issue 22: the second round
LIPIDS = Path(__file__).parent / "data" / "lipids_chd_mendelianrandomization.tsv"


def _paper_table(n_per_env: dict, p: int, seed: int = 0, outcome=None) -> pd.DataFrame:
    """Genotype-like instruments, a confounded exposure and outcome, environments of the given sizes."""
    rng = np.random.default_rng(seed)
    env = np.concatenate([[name] * n for name, n in n_per_env.items()])
    n = env.size
    Z = rng.binomial(2, 0.3, size=(n, p)).astype(float)
    H = rng.normal(size=n)
    x = Z @ rng.normal(0.3, 0.1, p) + H + rng.normal(size=n)
    y = x + H + rng.normal(size=n) if outcome is None else outcome(x, H, rng)
    df = pd.DataFrame(Z, columns=[f"z{j}" for j in range(p)])
    df.insert(0, "outcome", y)
    df.insert(0, "exposure", x)
    df.insert(0, "environment", env)
    df.insert(0, "iid", [f"s{i}" for i in range(n)])
    return df


# ---- data loss
def test_22_sumstats_out_never_replaces_a_file_or_an_input(small, tmp_path, capsys):
    table = tmp_path / "data.tsv"
    table.write_bytes((small / "data.tsv").read_bytes())
    before = table.read_bytes()
    existing = tmp_path / "mine.tsv"
    existing.write_text("keep me\n")
    refused(table_run(table, tmp_path / "o", "--sumstats-out", str(existing)), capsys, tmp_path / "o", "already exists")
    assert existing.read_text() == "keep me\n"
    # Its own input: refused even with --overwrite.
    refused(table_run(table, tmp_path / "o", "--sumstats-out", str(table), "--overwrite"), capsys, tmp_path / "o",
            "input of this run")
    assert table.read_bytes() == before
    refused(table_run(table, tmp_path / "o", "--sumstats-out", str(tmp_path / "o" / "s.tsv")), capsys,
            tmp_path / "o", "inside --out")
    assert main(table_run(table, tmp_path / "o", "--sumstats-out", str(existing), "--overwrite")) == 0
    assert existing.read_text().startswith("variant\t")


def test_22_overwrite_keeps_files_the_user_added(small, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(table_run(small / "data.tsv", out)) == 0
    (out / "notes.txt").write_text("my notes")
    err = refused(table_run(small / "data.tsv", out, "--overwrite"), capsys, contains="did not write")
    assert "notes.txt" in err and (out / "notes.txt").read_text() == "my notes"
    (out / "notes.txt").unlink()
    assert main(table_run(small / "data.tsv", out, "--overwrite", "--seed", "5")) == 0


# ---- tracebacks
@pytest.mark.parametrize("command", [
    ["simulate", "--n-per-env", "50"], ["demo", "--n-per-env", "100"], ["mr", "--sumstats", str(LIPIDS)],
])
def test_22_negative_seed_is_refused_by_every_command(command, tmp_path, capsys):
    refused([*command, "--seed", "-1", "--out", str(tmp_path / "o")], capsys, tmp_path / "o", contains="--seed")


def test_22_negative_or_huge_seed_in_run_and_config(small, tmp_path, capsys):
    refused(table_run(small / "data.tsv", tmp_path / "o", "--seed", "-3"), capsys, tmp_path / "o", "--seed")
    refused(table_run(small / "data.tsv", tmp_path / "o", "--seed", str(2**40)), capsys, tmp_path / "o", "--seed")
    cfg = tmp_path / "c.toml"
    for text, word in (("seed = -1\n", "seed"), ("seed = 1.5\n", "seed"), ("seed = true\n", "true/false"),
                       ('per_env = "yes"\n', "true or false")):
        cfg.write_text(text)
        refused(table_run(small / "data.tsv", tmp_path / "o", "--config", str(cfg)), capsys, tmp_path / "o", word)


def test_22_more_folds_than_samples(small, tmp_path, capsys):
    args = table_run(small / "data.tsv", tmp_path / "o", "--n-folds", "1000")
    args[args.index("ols")] = "invariant_linear_crossfit"
    refused(args, capsys, tmp_path / "o", contains="at most 300")


def test_22_zero_exposure_beta_is_left_out_by_name(tmp_path, capsys):
    lines = LIPIDS.read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    rows[2][1] = "0"
    rows[5][1] = "0.000"
    path = tmp_path / "rounded.tsv"
    path.write_text("\n".join([lines[0], *("\t".join(r) for r in rows)]) + "\n")
    out = tmp_path / "o"
    assert main(["mr", "--sumstats", str(path), "--exposure", "ldlc", "--out", str(out), "--quiet"]) == 0
    dropped = pd.read_csv(out / "dropped_variants.tsv", sep="\t")
    assert set(dropped.loc[dropped["reason"] == "zero_exposure_beta", "variant"]) == {rows[2][0], rows[5][0]}
    estimates = pd.read_csv(out / "estimates.tsv", sep="\t")
    assert estimates["estimate"].notna().all()


@pytest.fixture(scope="module")
def genotype_files(tmp_path_factory):
    """One small fileset as VCF, BGEN and PLINK 2, with a two-environment phenotype table."""
    from genotype_writers import make_fileset, write_bgen, write_pgen, write_vcf

    d = tmp_path_factory.mktemp("formats")
    fs = make_fileset(n=60, p=9, missing_rate=0.0, seed=3)
    write_vcf(fs, d / "g.vcf")
    write_bgen(fs, d / "g.bgen")
    write_pgen(fs, d / "g")
    rng = np.random.default_rng(0)
    pd.DataFrame({"IID": fs.iid, "environment": ["a"] * 30 + ["b"] * 30, "exposure": rng.normal(size=60),
                  "outcome": rng.normal(size=60)}).to_csv(d / "pheno.tsv", sep="\t", index=False)
    return d


@pytest.mark.parametrize("flag,name", [("--vcf", "g.vcf"), ("--bgen", "g.bgen"), ("--pfile", "g.pgen")])
@pytest.mark.parametrize("fraction", [0.5, 0.97])
def test_22_truncated_genotype_files_give_one_line(genotype_files, tmp_path, capsys, flag, name, fraction):
    for f in genotype_files.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    data = (genotype_files / name).read_bytes()
    (tmp_path / name).write_bytes(data[: int(len(data) * fraction)])
    source = str(tmp_path / ("g" if flag == "--pfile" else name))
    err = refused(["run", flag, source, "--pheno", str(tmp_path / "pheno.tsv"), *T, "--methods", "ols",
                   "--min-env-samples", "20", "--out", str(tmp_path / "o"), "--quiet"], capsys, tmp_path / "o")
    assert "truncated" in err
    assert (genotype_files / name).read_bytes() == data


def _vcf(path: Path, records: list[str]) -> Path:
    samples = [f"S{i:03d}" for i in range(3)]
    head = ["##fileformat=VCFv4.2", "##contig=<ID=1>", "##contig=<ID=X>",
            '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
            "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples])]
    path.write_text("\n".join(head + records) + "\n")
    return path


def test_22_vcf_multiallelic_records_and_haploid_calls_are_refused_by_name(tmp_path):
    from invariant_mr.errors import InputError
    from invariant_mr.io.genotype_sources import VcfSource

    path = _vcf(tmp_path / "v.vcf", ["1\t100\trs1\tA\tG\t.\t.\t.\tGT\t0/1\t1/1\t0/0",
                                      "1\t200\trs2\tA\tG,T\t.\t.\t.\tGT\t0/1\t0/2\t0/0",
                                      "X\t300\trs3\tA\tG\t.\t.\t.\tGT\t1\t0/1\t0/0"])
    source = VcfSource(path)
    assert source.read(None, np.array([0])).ravel().tolist() == [1, 2, 0]
    with pytest.raises(InputError, match=r"multiallelic.*rs2.*bcftools norm"):
        source.read(None, np.array([1]))
    with pytest.raises(InputError, match=r"rs3.*haploid"):
        source.read(None, np.array([2]))
    # Leaving them out (--chr, --exclude) reads the rest.
    kept = source.select_variants(chromosomes="1", exclude=["rs2"])
    assert kept.read().ravel().tolist() == [1, 2, 0]


# ---- wrong answers with exit status 0
def test_22_per_environment_fit_with_too_few_samples_per_instrument_is_withheld(tmp_path):
    df = _paper_table({"big": 400, "tiny": 30}, p=40)
    out = tmp_path / "o"
    assert main(table_run(_write(df, tmp_path / "t.tsv"), out)[:-2] + ["--methods", "tsls_all_env,ols",
                                                                          "--out", str(out)]) == 0
    rows = {(e["method"], e["scope"]): e for e in json.loads((out / "results.json").read_text())["estimates"]}
    tiny = rows[("tsls_all_env", "env:tiny")]
    assert tiny["estimate"] is None and tiny["first_stage_f"] is None and "withheld" in tiny["extra"]["reason"]
    assert rows[("tsls_all_env", "env:big")]["estimate"] is not None
    assert 0 < rows[("tsls_all_env", "pooled")]["first_stage_f"] < 1e6
    assert rows[("ols", "env:tiny")]["estimate"] is not None  # OLS has no first stage to overfit


def test_22_results_json_differs_only_in_its_volatile_block(small, tmp_path):
    texts = []
    for name in ("a", "b"):
        args = table_run(small / "data.tsv", tmp_path / name)
        args[args.index("ols")] = "ols,tsls_all_env,invariant_linear"
        assert main(args) == 0
        texts.append((tmp_path / name / "results.json").read_text())
    stable = [t[: t.index('"volatile"')] for t in texts]
    assert stable[0] == stable[1]
    volatile = json.loads(texts[0])["volatile"]
    assert {"created_utc", "method_seconds", "command", "about"} <= set(volatile)
    assert "created_utc" not in json.loads(texts[0])["provenance"]
    from invariant_mr.results import AnalysisResult

    assert "method_seconds" in AnalysisResult.from_dict(json.loads(texts[0])).provenance


def test_22_binary_outcome_coded_1_2(tmp_path, capsys):
    df = _paper_table({"a": 200, "b": 200}, p=4, outcome=lambda x, H, rng: 1 + (x + H + rng.normal(size=x.size) > 0))
    path = _write(df, tmp_path / "cc.tsv")
    args = ["run", "--table", str(path), *T, "--instruments", "z*", "--outcome-type", "binary", "--quiet",
            "--methods", "tsri_all_env"]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "coded 1/2" in capsys.readouterr().err
    recoded = df.assign(outcome=df["outcome"] - 1)
    assert main([*args[:2], str(_write(recoded, tmp_path / "01.tsv")), *args[3:], "--out", str(tmp_path / "b")]) == 0
    a = pd.read_csv(tmp_path / "a" / "estimates.tsv", sep="\t")
    b = pd.read_csv(tmp_path / "b" / "estimates.tsv", sep="\t")
    assert np.allclose(a["estimate"], b["estimate"], rtol=1e-10)
    df.loc[:9, "outcome"] = 0  # 0/1/2: PLINK's 0 means missing
    args[2] = str(_write(df, tmp_path / "012.tsv"))
    refused([*args, "--out", str(tmp_path / "c")], capsys, tmp_path / "c", "0 means missing")


# ---- unclear messages
def test_22_csv_named_tsv_names_the_format(small, tmp_path, capsys):
    path = tmp_path / "data.tsv"
    path.write_text((small / "data.tsv").read_text().replace("\t", ","))
    refused(table_run(path, tmp_path / "o"), capsys, tmp_path / "o", "header is comma-separated")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    refused(table_run(empty, tmp_path / "o"), capsys, tmp_path / "o", "empty")
    header = tmp_path / "header.tsv"
    header.write_text((small / "data.tsv").read_text().splitlines()[0] + "\n")
    refused(table_run(header, tmp_path / "o"), capsys, tmp_path / "o", "no rows")


def test_22_pheno_csv_named_tsv(bn, tmp_path, capsys):
    pheno = tmp_path / "pheno.tsv"
    pheno.write_text((bn / "phenotypes.tsv").read_text().replace("\t", ","))
    refused(["run", "--bfile", str(bn / "genotypes"), "--pheno", str(pheno), *T, "--out", str(tmp_path / "o")],
            capsys, tmp_path / "o", "rename it to pheno.csv")


def test_22_out_below_a_file(small, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    refused(table_run(small / "data.tsv", blocker / "sub" / "o"), capsys, contains="is a file, not a folder")
    refused(table_run(small / "data.tsv", tmp_path / "no" / "o"), capsys, contains="mkdir -p")
    assert blocker.read_text() == "x"


def test_22_harmonisation_failure_says_why(tmp_path, capsys):
    rows = [line.split("\t") for line in LIPIDS.read_text().splitlines()[1:]]
    exposure, outcome = tmp_path / "exp.tsv", tmp_path / "out.tsv"
    exposure.write_text("variant\teffect_allele\tother_allele\tbeta\tse\n"
                        + "".join(f"{r[0]}\tA\tG\t{r[1]}\t{r[2]}\n" for r in rows))
    outcome.write_text("variant\teffect_allele\tother_allele\tbeta\tse\n"
                       + "".join(f"chr1:{i}\tA\tG\t{r[7]}\t{r[8]}\n" for i, r in enumerate(rows)))
    # Exit 2 with one line; the output folder keeps only dropped_variants.tsv, every variant with its reason.
    err = refused(["mr", "--exposure-gwas", str(exposure), "--outcome-gwas", str(outcome),
                   "--out", str(tmp_path / "o")], capsys, None, "not in outcome")
    assert "no variant id is shared" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["dropped_variants.tsv"]
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_22_duplicate_sample_ids_in_a_table(small, tmp_path, capsys):
    df = pd.read_csv(small / "data.tsv", sep="\t")
    df.loc[1, "iid"] = df.loc[0, "iid"]
    refused(table_run(_write(df, tmp_path / "d.tsv"), tmp_path / "o"), capsys, tmp_path / "o", "occurs 2 times")


def test_22_usage_errors_are_one_line(small, tmp_path, capsys):
    refused(table_run(small / "data.tsv", tmp_path / "o", "--alpha", "3"), capsys, tmp_path / "o", "--alpha")
    refused(["fit", "--table", str(small / "data.tsv")], capsys, contains="missing option")
    refused([*table_run(small / "data.tsv", tmp_path / "o"), "zero.tsv"], capsys, tmp_path / "o", "quote it")


def test_22_an_internal_error_is_one_line_with_the_traceback_in_a_file(small, tmp_path, capsys, monkeypatch):
    import invariant_mr.pipeline as pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(pipeline, "run_analysis", broken)
    monkeypatch.delenv("INVARIANT_MR_TRACEBACK", raising=False)
    capsys.readouterr()
    assert main(table_run(small / "data.tsv", tmp_path / "o")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "simulated bug" in err
    path = Path(err.split("the traceback is in ")[1].split(";")[0])
    assert "RuntimeError: simulated bug" in path.read_text()
    path.unlink()
    assert not (tmp_path / "o").exists()


# ---- PLINK habits
def test_22_plink_keep_remove_exclude_chr(bn, tmp_path, capsys):
    fam = pd.read_csv(bn / "genotypes.fam", sep=r"\s+", header=None)
    bim = pd.read_csv(bn / "genotypes.bim", sep=r"\s+", header=None)
    (tmp_path / "keep.txt").write_text("".join(f"{f} {i}\n" for f, i in zip(fam[0][::2], fam[1][::2])))
    (tmp_path / "remove.txt").write_text("#IID\n" + "".join(f"{i}\n" for i in fam[1][:50]))
    (tmp_path / "exclude.txt").write_text("".join(f"{v}\n" for v in bim[1][:10]))
    base = ["run", "--bfile", str(bn / "genotypes"), "--pheno", str(bn / "phenotypes.tsv"), *T, "--methods", "ols",
            "--quiet", "--no-report"]

    def run(name, *extra):
        assert main([*base, *extra, "--out", str(tmp_path / name)]) == 0
        res = json.loads((tmp_path / name / "results.json").read_text())
        return res["estimates"][0]["n"], res["provenance"]["variant_selection"]

    assert run("k", "--keep", str(tmp_path / "keep.txt"))[0] == len(fam) // 2
    assert run("r", "--remove", str(tmp_path / "remove.txt"))[0] == len(fam) - 50
    n, sel = run("e", "--exclude", str(tmp_path / "exclude.txt"))
    assert sel["n_excluded"] == 10 and sel["n_selected"] == len(bim) - 10
    chroms = sorted(set(bim[0].astype(str)))[:2]
    n, sel = run("c", "--chr", ",".join(chroms))
    assert sel["n_selected"] == int(bim[0].astype(str).isin(chroms).sum()) and sel["chromosomes"] == chroms
    (tmp_path / "nobody.txt").write_text("x y\n")
    refused([*base, "--keep", str(tmp_path / "nobody.txt"), "--out", str(tmp_path / "n")], capsys,
            tmp_path / "n", "none of its samples")
    refused([*base, "--chr", "99", "--out", str(tmp_path / "n")], capsys, tmp_path / "n", "--chr")


def test_22_genotype_filters_with_a_table_are_refused(small, tmp_path, capsys):
    keep = tmp_path / "keep.txt"
    keep.write_text("s000001\n")
    refused(table_run(small / "data.tsv", tmp_path / "o", "--keep", str(keep)), capsys, tmp_path / "o",
            "filter genotype files")


def test_22_fit_warns_when_the_map_is_not_invariant(small, tmp_path, capsys):
    base = ["fit", "--table", str(small / "data.tsv"), *T, "--instruments", "z*", "--method", "invariant_linear",
            "--quiet"]
    capsys.readouterr()
    assert main([*base, "--model-out", str(tmp_path / "auto")]) == 0
    assert "not invariant" not in capsys.readouterr().err
    # Forcing every direction keeps the environment-varying ones: saved, with a warning and the test recorded.
    assert main([*base, "--n-components", "4", "--model-out", str(tmp_path / "forced")]) == 0
    assert "not invariant across environments" in capsys.readouterr().err
    check = json.loads((tmp_path / "forced" / "provenance.json").read_text())["provenance"]["invariance_check"]
    assert check["pvalue"] < 0.05


def test_22_every_path_in_a_config_is_read_from_the_config_folder(bn, tmp_path, monkeypatch):
    folder = tmp_path / "study"
    folder.mkdir()
    fam = pd.read_csv(bn / "genotypes.fam", sep=r"\s+", header=None)
    (folder / "keep.txt").write_text("".join(f"{i}\n" for i in fam[1][:300]))
    (folder / "run.toml").write_text(
        f'bfile = "{bn / "genotypes"}"\npheno = "{bn / "phenotypes.tsv"}"\nkeep = "keep.txt"\n'
        'env = "environment"\nexposure = "exposure"\noutcome = "outcome"\nmethods = ["ols"]\nreport = false\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", "--config", str(folder / "run.toml"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["estimates"][0]["n"] == 300
    assert res["provenance"]["parameters"]["keep"] == str(folder / "keep.txt")
