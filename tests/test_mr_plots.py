"""The summary-statistic MR figures: their layout without `tight_layout` keeps every label on the canvas."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from invariant_mr.estimators.summary.summary_mr import ivw
from invariant_mr.report.mr_plots import funnel_plot, leave_one_out_plot, scatter_plot, single_variant_forest_plot
from invariant_mr.results import AnalysisResult, Estimate
from test_robust_summary_mr import bmi_chd_sumstats


@pytest.fixture(scope="module")
def ss():
    return bmi_chd_sumstats()


@pytest.fixture(scope="module")
def result(ss):
    fit = ivw(ss)
    row = Estimate(method="ivw", scope="pooled", estimate=fit.estimate, se=fit.se, ci_low=fit.ci_low,
                   ci_high=fit.ci_high, n=ss.n, n_instruments=ss.n_variants)
    return AnalysisResult(estimates=(row,), diagnostics=(), provenance={})


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer(), fig.bbox


def _inside(box, frame) -> bool:
    return (box.x0 >= frame.x0 - 0.5 and box.x1 <= frame.x1 + 0.5
            and box.y0 >= frame.y0 - 0.5 and box.y1 <= frame.y1 + 0.5)


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e3])
def test_scatter_and_funnel_margins_keep_tick_labels_and_titles_on_the_canvas(ss, result, scale):
    """Fixed margins from the tick-label length replace tight_layout; on associations scaled so that
    tick labels get longer (0.0001) or shorter, nothing is cut off and the axes still fill the figure."""
    scaled = dataclasses.replace(ss, beta_exposure=ss.beta_exposure * scale, se_exposure=ss.se_exposure * scale,
                                 beta_outcome=ss.beta_outcome * scale, se_outcome=ss.se_outcome * scale)
    for fig in (scatter_plot(scaled, result), funnel_plot(scaled, result)):
        renderer, frame = _drawn(fig)
        ax = fig.axes[0]
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        ticks = [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
        ticks += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
        texts = [*ticks, ax.yaxis.label, ax.xaxis.label, ax.title, ax.xaxis.offsetText, ax.yaxis.offsetText]
        for text in texts:
            if text.get_visible() and text.get_text():
                assert _inside(text.get_window_extent(renderer), frame), text.get_text()
        # ...and the margins are not wasteful: the axes take most of the figure.
        assert ax.get_position().width > 0.75 and ax.get_position().height > 0.75
        leftmost = min(t.get_window_extent(renderer).x0 for t in ticks if t.get_text() and t in ax.get_yticklabels())
        assert ax.yaxis.label.get_window_extent(renderer).x1 <= leftmost + 1  # the y label clears its tick labels


def test_leave_one_out_rows_are_labelled_in_order_and_the_y_label_clears_them(ss):
    fig = leave_one_out_plot(ss)
    renderer, frame = _drawn(fig)
    ax = fig.axes[0]
    rows = [t for t in ax.texts]
    assert [t.get_text() for t in rows] == [*ss.variant, "all variants"]
    ys = [ax.transData.transform((0, t.get_position()[1]))[1] for t in rows]
    assert np.all(np.diff(ys) < 0)  # top to bottom
    boxes = [t.get_window_extent(renderer) for t in rows]
    axes_left = ax.bbox.x0
    assert all(b.x1 < axes_left and _inside(b, frame) for b in boxes)
    # right-aligned at the same distance from the axis, as tick labels are
    assert np.ptp([b.x1 for b in boxes]) < 1
    ylabel = ax.yaxis.label.get_window_extent(renderer)
    assert ylabel.x1 < min(b.x0 for b in boxes) and ylabel.x0 > frame.x0
    # one tick mark per row, drawn outside the axes at its left edge
    from matplotlib.markers import TICKLEFT

    (marks,) = [line for line in ax.lines if line.get_marker() == TICKLEFT]
    assert len(marks.get_ydata()) == len(rows) and not marks.get_clip_on()


def test_single_variant_forest_lists_variants_by_ratio_then_the_pooled_rows(ss, result):
    fig = single_variant_forest_plot(ss, result)
    renderer, frame = _drawn(fig)
    ax = fig.axes[0]
    order = np.argsort(ss.beta_outcome / ss.beta_exposure)
    assert [t.get_text() for t in ax.texts] == [ss.variant[i] for i in order] + ["ivw"]
    assert all(_inside(t.get_window_extent(renderer), frame) for t in ax.texts)

