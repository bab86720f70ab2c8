"""The command line: outputs, provenance and one clear line per user error."""

import json
import re
from pathlib import Path

import pytest

from invariant_mr.cli import main


@pytest.fixture(scope="module")
def paper_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "poly"
    assert main(["simulate", "--model", "paper", "--setting", "linear", "--n-per-env", "600", "--seed", "3",
                 "--out", str(out)]) == 0
    return out


def test_simulate_writes_table_and_truth(paper_table):
    header = (paper_table / "data.tsv").read_text().splitlines()[0].split("\t")
    assert header[:4] == ["iid", "environment", "exposure", "outcome"]
    assert header[4:] == ["z1", "z2", "z3", "z4"]
    truth = json.loads((paper_table / "truth.json").read_text())
    assert truth["theta"] == 1.0 and truth["setting"] == "linear"
    assert truth["provenance"]["seed"] == 3


def test_run_writes_results_with_provenance(paper_table, tmp_path, capsys):
    out = tmp_path / "res"
    code = main(["run", "--table", str(paper_table / "data.tsv"), "--env", "environment", "--exposure", "exposure",
                 "--outcome", "outcome", "--instruments", "z*", "--out", str(out), "--quiet",
                 "--methods", "ols,tsls_all_env,invariant_linear", "--seed", "7"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    methods = {e["method"] for e in res["estimates"]}
    assert methods == {"ols", "tsls_all_env", "invariant_linear"}
    pooled = [e for e in res["estimates"] if e["scope"] == "pooled"]
    for key in ("method", "scope", "estimate", "se", "ci_low", "ci_high", "n", "n_instruments", "first_stage_f"):
        assert all(key in e for e in pooled)
    assert {e["scope"] for e in res["estimates"]} == {"pooled", "env:env1", "env:env2"}
    prov = res["provenance"]
    assert prov["seed"] == 7 and prov["version"] and "invariant-mr run" in res["volatile"]["command"]
    assert len(prov["inputs"][0]["sha256"]) == 64
    tsv = (out / "estimates.tsv").read_text().splitlines()
    assert tsv[0].startswith("method\tscope\testimate\tse")
    assert len(tsv) == 1 + len(res["estimates"])
    assert (out / "forest.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_same_numbers(paper_table, tmp_path):
    args = ["run", "--table", str(paper_table / "data.tsv"), "--env", "environment", "--exposure", "exposure",
            "--outcome", "outcome", "--instruments", "z*", "--quiet", "--methods", "invariant_linear_crossfit"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())["estimates"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["estimates"]
    assert a == b


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--table": "missing.tsv"}, "--table missing.tsv: file not found"),
        ({"--env": "enviroment"}, "did you mean 'environment'"),
        ({"--instruments": "x*"}, "'x\\*': matches no column"),
        ({"--methods": "tsls,invariant_linear"}, "unknown method\\(s\\) tsls"),
        ({"--exposure": "iid"}, "non-numeric"),
    ],
)
def test_bad_input_is_one_clear_line_and_leaves_nothing(paper_table, tmp_path, capsys, change, message):
    opts = {"--table": str(paper_table / "data.tsv"), "--env": "environment", "--exposure": "exposure",
            "--outcome": "outcome", "--instruments": "z*", "--out": str(tmp_path / "res")}
    opts.update(change)
    argv = ["run", "--quiet"] + [x for kv in opts.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("invariant-mr: error:")
    assert re.search(message, err)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_directory_is_refused_unless_overwrite(paper_table, tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    argv = ["run", "--table", str(paper_table / "data.tsv"), "--env", "environment", "--exposure", "exposure",
            "--outcome", "outcome", "--instruments", "z*", "--out", str(out), "--quiet", "--methods", "ols"]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    # --overwrite replaces only a previous run's output, never a folder of the user's
    assert main(argv + ["--overwrite"]) == 2
    assert "was not written by invariant-mr" in capsys.readouterr().err and (out / "keep.txt").exists()
    (out / "keep.txt").unlink()
    out.rmdir()
    assert main(argv) == 0
    assert main(argv + ["--overwrite", "--seed", "4"]) == 0
    assert json.loads((out / "results.json").read_text())["provenance"]["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no staging debris, no lock


def test_demo_runs_and_reports_bias(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--n-per-env", "500", "--out", str(out), "--methods", "ols,tsls_all_env,invariant_linear"]) == 0
    text = capsys.readouterr().out
    assert "bias" in text and "invariant_linear" in text
    res = json.loads((out / "results.json").read_text())
    assert res["truth"]["theta"] == 1.0
    assert (out / "forest.png").exists()


def test_demo_on_a_simulated_plink_fileset(tmp_path, capsys):
    out = tmp_path / "demo-bn"
    args = ["demo", "--model", "balding-nichols", "--envs", "2", "--n-per-env", "150", "--out", str(out),
            "--methods", "ols,tsls_all_env,tsls_pcs"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Balding-Nichols" in text or "balding" in text.lower()
    assert "bias" in text and "tsls_pcs" in text
    assert {p.name for p in (out / "data").iterdir()} >= {"genotypes.bed", "genotypes.bim", "genotypes.fam",
                                                          "phenotypes.tsv", "truth.json"}
    res = json.loads((out / "results.json").read_text())
    assert res["truth"]["theta"] == 1.0
    assert res["provenance"]["qc"]["n_variants_in"] == 500  # read back from the PLINK files, QC recorded
    assert {i["path"].rsplit(".", 1)[-1] for i in res["provenance"]["inputs"]} == {"bed", "bim", "fam", "tsv"}
    assert (out / "qc.tsv").exists() and (out / "report.html").exists()


def test_demo_plink_provenance_names_the_final_files(tmp_path):
    out = tmp_path / "demo-bn"
    assert main(["demo", "--model", "balding-nichols", "--envs", "2", "--n-per-env", "100", "--out", str(out),
                 "--methods", "ols", "--quiet"]) == 0
    text = (out / "results.json").read_text()
    assert "staging" not in text
    res = json.loads(text)
    assert all(Path(i["path"]).exists() and Path(i["path"]).parent == (out / "data").resolve()
               for i in res["provenance"]["inputs"])
