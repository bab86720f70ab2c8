"""What people see: the terminal table, estimates.tsv notes, the forest and training plots, the verdict."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from matplotlib.text import Annotation

from invariant_mr.report.html import render_report
from invariant_mr.report.learned_instruments import (
    instrument_count_label,
    instruments_note,
    missing_instruments,
)
from invariant_mr.report.plots import forest_plot, robust_limits, training_curves_figure
from invariant_mr.report.terminal import terminal_summary
from invariant_mr.report.verdict import verdict
from invariant_mr.results import AnalysisResult, Diagnostic, Estimate, format_pvalue

REASON = "no invariant direction found"
SKIPPED = "robust Anderson-Rubin set skipped: 300 instruments > --ar-max-instruments 200"


def _est(method, scope, value, half=0.1, **kw):
    return Estimate(method, scope, value, half / 2, value - half, value + half, 600, kw.pop("k", 4),
                    kw.pop("f", 40.0), pvalue=kw.pop("p", 1e-5), **kw)


def _result(truth=None):
    rows = [
        _est("ols", "pooled", 1.25, k=0, f=None, p=0.0),
        _est("tsls_all_env", "pooled", 1.12, extra={"ar_set": [[None, 0.8], [1.3, None]], "ar_set_kind": "two_rays"}),
        _est("tsls_all_env", "env:pop1", 1.10),
        _est("tsls_big", "pooled", 1.05, extra={"ar_set_kind": "not computed", "ar_error": SKIPPED}),
        Estimate.unavailable("invariant_linear", "pooled", 600, 0, REASON),
        _est("weighted_mode", "env:pop2", 1.0, half=7000.0),
    ]
    return AnalysisResult(tuple(rows), {"parameters": {"alpha": 0.05}}, (), truth)


def _line(text, start):
    return next(line for line in text.splitlines() if line.startswith(start))


# ----------------------------------------------------------------------------- item 17: abstentions
def test_summary_says_why_a_method_abstained():
    text = _result().summary()
    line = _line(text, "invariant_linear")
    assert line.split()[1:] == ["pooled", "NA:", *REASON.split()]
    assert "inf" not in line


def test_estimates_tsv_has_a_note_column_with_the_reason():
    rows = list(csv.DictReader(io.StringIO(_result().to_tsv()), delimiter="\t"))
    by = {(r["method"], r["scope"]): r for r in rows}
    assert by[("invariant_linear", "pooled")]["note"] == f"NA: {REASON}"
    assert by[("ols", "pooled")]["note"] == ""
    assert by[("tsls_big", "pooled")]["note"] == f"AR set not computed: {SKIPPED}"


def test_report_shows_the_reason_and_the_verdict():
    page = render_report(_result())
    assert f"NA: {REASON}" in page
    assert '<h2 id="verdict">Verdict</h2>' in page
    assert "recommended:" in page or "no estimate can be trusted" in page


# ----------------------------------------------------------------------------- item 20: terminal table
def test_tiny_pvalues_print_as_a_floor_not_zero():
    assert format_pvalue(0.0) == "<1e-16"
    assert format_pvalue(1e-300) == "<1e-16"
    assert format_pvalue(0.01234) == "0.0123"
    assert format_pvalue(None) == "NA"
    assert "<1e-16" in _line(_result().summary(), "ols")


def test_union_of_rays_is_compact_and_stays_in_its_column():
    text = _result().summary()
    header = text.splitlines()[0]
    end = header.index("AR 95% set") + len("AR 95% set")
    line = _line(text, "tsls_all_env")
    cell = "(-inf, 0.800] U [1.300, inf)"
    assert cell in line
    # Right-aligned under its header; the CI column before it is untouched.
    assert line.index(cell) + len(cell) == end
    assert "[1.020, 1.220]" in line[: line.index(cell)]


def test_ar_column_blank_above_the_limit_with_a_footnote():
    text = _result().summary()
    line = _line(text, "tsls_big")
    assert "[1]" in line and "inf" not in line.split("]", 1)[1]
    assert f"[1] AR set left blank: {SKIPPED}" in text


def test_pooled_rows_by_default_show_env_adds_the_rest():
    result = _result()
    assert "env:pop1" not in result.summary()
    assert "env:pop1" in result.summary(scopes=None)
    assert "env:pop1" not in terminal_summary(result)
    assert "--show-env" in terminal_summary(result)
    assert "env:pop1" in terminal_summary(result, show_env=True)


def test_show_env_flag_on_the_command_line(tmp_path, capsys):
    from invariant_mr.cli import main

    args = ["demo", "--n-per-env", "150", "--methods", "ols", "--seed", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    plain = capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b"), "--show-env"]) == 0
    shown = capsys.readouterr().out
    assert "env:" not in plain.split("Verdict")[0] and "env:" in shown
    assert "Verdict:" in plain
    # File outputs do not depend on the flag.
    assert (tmp_path / "a" / "estimates.tsv").read_text() == (tmp_path / "b" / "estimates.tsv").read_text()


# ----------------------------------------------------------------------------- item 18: forest plot
def test_forest_axis_survives_one_huge_interval_and_marks_it():
    fig = forest_plot(_result(truth={"theta": 1.0}))
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert -1 < lo < 1.0 < hi < 3, (lo, hi)
    arrows = [t for t in ax.texts if isinstance(t, Annotation) and t.arrow_patch is not None]
    assert len(arrows) == 2  # both ends of the +-7000 interval
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "invariant_linear" in labels  # the abstaining method keeps its row
    assert any(REASON in t.get_text() for t in ax.texts)


def test_robust_limits_include_every_ordinary_estimate():
    lo, hi = robust_limits([0.2, 1.0, 1.3], [0.1, 1.4, -7000, 7000, 0.9, 1.1])
    assert lo < 0.1 and hi > 1.4 and hi - lo < 3
    lo, hi = robust_limits([5.0], [])
    assert lo < 5.0 < hi


# ----------------------------------------------------------------------------- item 22: training curves
def test_training_curves_one_panel_per_term_legend_outside():
    history = [
        {"fold": f, "epoch": e, "train_total": 3 / (e + 1), "val_total": 3.3 / (e + 1),
         "train_recon": 2 / (e + 1) ** 2, "val_recon": 2.2 / (e + 1) ** 2, "train_inv": 0.01, "val_inv": 0.012,
         "train_ent": -1.0 - e / 10, "val_ent": -1.1 - e / 10, "lr": 1e-3, "w_inv": 1.0}
        for f in (0, 1) for e in range(40)
    ]
    fig = training_curves_figure("invariant_autoencoder", history)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    # w_inv never changes: no panel for it.
    assert [ax.get_title() for ax in panels] == ["total", "recon", "inv", "ent"]
    by = {ax.get_title(): ax for ax in panels}
    assert len(by["total"].get_lines()) == 4  # train and validation, two folds
    assert by["recon"].get_yscale() == "log" and by["ent"].get_yscale() == "linear"
    assert all(ax.get_legend() is None for ax in panels) and len(fig.legends) == 1


# ----------------------------------------------------------------------------- item 23: instruments
def test_abstaining_method_says_why_it_wrote_no_instruments():
    result = _result()
    assert missing_instruments(result, 600)["invariant_linear"] == f"no instruments: {REASON}"
    note = instruments_note(result, 600)
    assert note.startswith("instruments.tsv not written") and REASON in note


def test_crossfit_instrument_count_matches_the_table():
    folds = np.repeat([0, 1], 50)
    result = AnalysisResult(
        (_est("invariant_linear_crossfit", "pooled", 1.0, k=4),), {},
        artifacts={"invariant_linear_crossfit": {"instruments": np.zeros((100, 2)), "folds": folds},
                   "invariant_linear": {"instruments": np.zeros((100, 2))}},
    )
    assert instrument_count_label(result, "invariant_linear_crossfit", 2) == (
        "2 learned instruments x 2 folds = 4 fold-interacted instruments"
    )
    assert instrument_count_label(result, "invariant_linear", 2) == "2 learned instruments"


# item 19 (the verdict) is tested in tests/test_verdict.py.
