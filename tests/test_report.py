"""report.html: self-contained, complete, atomic; and rendered by a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from invariant_mr.report.learned_instruments import instruments_table, instruments_tsv
from invariant_mr.report.html import render_report, write_report
from invariant_mr.results import AnalysisResult, Diagnostic, Estimate


def _result(with_instruments=True, with_history=True):
    rng = np.random.default_rng(0)
    env = np.repeat(["pop1", "pop2", "pop3"], 100).astype(object)
    estimates = []
    for method, center in (("tsls_all_env", 0.8), ("invariant_linear", 0.52)):
        for scope in ("pooled", "env:pop1", "env:pop2", "env:pop3"):
            est = center + rng.normal(0, 0.02)
            estimates.append(Estimate(method, scope, est, 0.05, est - 0.1, est + 0.1, 300, 4, 25.0, pvalue=1e-5))
    estimates.append(Estimate("invariant_nn", "pooled", float("nan"), None, None, None, 300, 0))
    artifacts = {}
    if with_instruments:
        artifacts["invariant_linear"] = {"instruments": rng.normal(size=(300, 2)), "spectrum": {"rank": 2}}
        artifacts["one_dim"] = {"instruments": rng.normal(size=300)}
    if with_history:
        artifacts["invariant_nn"] = {
            "history": [{"fold": f, "epoch": e, "train_total": 2 / (e + 1), "val_total": 2.2 / (e + 1),
                         "train_recon": 1 / (e + 1), "train_mmd": 0.01 / (e + 1)}
                        for f in (0, 1) for e in range(30)],
        }
    provenance = {
        "version": "0.0-test", "command": "invariant-mr run --bfile x <script>", "created_utc": "2026-01-01",
        "qc": {"n_variants_in": 10, "n_variants_out": 8, "removed_variants": {"maf": 2}, "n_samples_in": 305,
               "n_samples_out": 300, "removed_samples": {"sample_missingness": 5}, "n_imputed_calls": 12,
               "thresholds": {"min_maf": 0.01}},
        "samples": {"n_genotyped": 310, "n_phenotype_rows": 305, "n_matched": 305, "n_analysed": 300,
                    "match_key": "IID", "dropped": {"genotyped sample without phenotype row": 5}},
        "inputs": [{"path": "geno.bed", "bytes": 123, "sha256": "ab" * 32}],
    }
    diagnostics = (Diagnostic("invariance_test", "pooled", 3.2, 0.2, "ok", {}),)
    return AnalysisResult(tuple(estimates), provenance, diagnostics, {"theta": 0.5}, artifacts), env


def test_report_has_every_section_and_no_network_resources():
    result, env = _result()
    page = render_report(result, env=env)
    for title in ("Estimates", "Forest plot", "Learned instruments by environment", "Training curves",
                  "Diagnostics", "Samples and quality control", "Provenance"):
        assert f">{title}</h2>" in page
    images = re.findall(r'<img alt="([^"]*)" src="([^"]{0,40})', page)
    alts = [a for a, _ in images]
    assert alts == ["forest plot", "learned instruments of invariant_linear", "learned instruments of one_dim",
                    "training curves of invariant_nn"]
    assert all(src.startswith("data:image/png;base64,") for _, src in images)
    # Nothing is fetched: no scripts, style sheets, frames or remote URLs in attributes.
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)
    assert "url(" not in page
    # The estimates table holds every row, with the bias against the known truth.
    assert page.count("<tr class=") == len(result.estimates)
    assert "True effect: 0.5" in page and "<th>bias</th>" in page
    # QC, sample counts and provenance are shown, and text is escaped.
    assert "variants removed: maf</td><td>2" in page
    assert "dropped: genotyped sample without phenotype row</td><td>5" in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "abab" in page


def test_report_without_instruments_or_training_says_so():
    result, env = _result(with_instruments=False, with_history=False)
    page = render_report(result, env=env)
    assert "No method learned instruments in this run." in page
    assert "No neural method ran in this analysis." in page
    assert render_report(result).count("<img") == 1  # forest plot only


def test_write_report_is_atomic(tmp_path):
    result, env = _result()
    target = tmp_path / "report.html"
    write_report(target, result, env=env)
    assert target.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_instruments_table():
    result, env = _result()
    ids = np.array([f"s{i}" for i in range(300)], dtype=object)
    table = instruments_table(result, env, ids)
    assert list(table.columns) == ["IID", "environment", "invariant_linear_1", "invariant_linear_2", "one_dim_1"]
    np.testing.assert_array_equal(table["invariant_linear_2"], result.artifacts["invariant_linear"]["instruments"][:, 1])
    text = instruments_tsv(result, env, ids)
    assert text.splitlines()[1].startswith("s0\tpop1\t")
    bare, _ = _result(with_instruments=False)
    assert instruments_tsv(bare, env) is None


def _chromium() -> str:
    """The headless browser; skipped without one, except in CI (`.ci/run` sets
    INVARIANT_MR_REQUIRE_BROWSER=1), where a missing browser is a failure, not a silent skip."""
    import os

    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    why = "no headless browser: install Debian's chromium (apt-get install -y chromium) to run this test"
    if os.environ.get("INVARIANT_MR_REQUIRE_BROWSER") == "1":
        pytest.fail(why)
    pytest.skip(why)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    result, env = _result()
    page = tmp_path / "report.html"
    write_report(page, result, env=env)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    # A blank or broken page is (nearly) one colour; the rendered report has text, tables and plots.
    non_white = (pixels < 0.9).any(axis=2).mean()
    assert non_white > 0.02
    # The embedded figures decode: the forest plot's coloured markers show up (not greyscale only).
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.3
    assert colourful.mean() > 0.001


#: The README's Balding-Nichols example, as a new user types it.
README_SIMULATE = ["simulate", "--model", "balding-nichols", "--envs", "3", "--n-per-env", "200", "--n-variants", "60",
                   "--seed", "1"]
README_RUN = ["run", "--env", "environment", "--exposure", "exposure", "--outcome", "outcome", "--covariates",
              "age,sex", "--quiet"]


@pytest.fixture(scope="module")
def readme_example(tmp_path_factory):
    """The README's Balding-Nichols example run once: its output directory."""
    from invariant_mr.cli import main

    root = tmp_path_factory.mktemp("readme")
    bn, r1 = root / "bn", root / "r1"
    assert main([*README_SIMULATE, "--out", str(bn)]) == 0
    assert main([*README_RUN, "--bfile", str(bn / "genotypes"), "--pheno", str(bn / "phenotypes.tsv"),
                 "--out", str(r1)]) == 0
    return r1


def test_readme_example_report_shows_abstention_and_a_readable_forest_plot(readme_example):
    """The README example: invariant_linear abstains; the report says why and the forest plot stays readable.

    No browser needed; the rendering is checked by the next test.
    """
    import html
    import json

    from invariant_mr.report.plots import forest_plot
    from invariant_mr.results import AnalysisResult, Diagnostic, estimates_from_dicts

    r1 = readme_example
    page = (r1 / "report.html").read_text()
    saved = json.loads((r1 / "results.json").read_text())
    abstained = [e for e in saved["estimates"] if e["estimate"] is None and e["scope"] == "pooled"]
    assert abstained, "the README example is meant to show an abstaining method"
    for e in abstained:
        assert html.escape(f"NA: {e['extra']['reason']}") in page
    assert '<h2 id="verdict">Verdict</h2>' in page
    assert "recommended:" in page or "no estimate can be trusted" in page
    # Readable: the axis spans the estimates, not the widest interval.
    result = AnalysisResult(estimates_from_dicts(saved["estimates"]), saved["provenance"],
                            tuple(Diagnostic(**d) for d in saved["diagnostics"]))
    lo, hi = forest_plot(result).axes[0].get_xlim()
    finite = [e["estimate"] for e in saved["estimates"] if e["estimate"] is not None]
    assert lo <= min(finite) and max(finite) <= hi and hi - lo < 10 * (max(finite) - min(finite) + 0.1)


@pytest.mark.browser
def test_readme_example_report_renders_in_headless_chromium(readme_example, tmp_path):
    """The README example's report, screenshotted by a headless browser, is not blank.

    Set INVARIANT_MR_SCREENSHOT_DIR (e.g. docs/img) to keep the screenshot as report_readme_example.png.
    """
    import os

    browser = _chromium()
    shot = tmp_path / "report_readme_example.png"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,3600",
         f"--screenshot={shot}", (readme_example / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (3600, 1200)
    assert (pixels < 0.9).any(axis=2).mean() > 0.02
    keep = os.environ.get("INVARIANT_MR_SCREENSHOT_DIR")
    if keep:
        shutil.copyfile(shot, os.path.join(keep, shot.name))
