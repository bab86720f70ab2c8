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
