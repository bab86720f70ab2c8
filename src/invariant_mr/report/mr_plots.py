"""The four figures every summary-statistic MR paper shows, from per-variant associations and the fitted methods.

* `scatter_plot`: variant-outcome against variant-exposure associations with
  +-1.96 SE error bars and one line per method (slope = the estimate; MR-Egger
  with its intercept). Variants are oriented so that the exposure
  association is positive, as TwoSampleMR's `mr_scatter_plot` does; that
  leaves every ratio estimate unchanged.
* `funnel_plot`: each variant's ratio estimate by/bx against its precision
  |bx|/sy, with a vertical line per method.
* `leave_one_out_plot`: IVW without each variant in turn, with its CI.
* `single_variant_forest_plot`: each variant's ratio estimate with its
  first-order CI, then the pooled estimates of the methods.

Matplotlib is imported when a figure is drawn (headless Agg backend), so
importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from invariant_mr.estimators.summary.summary_mr import leave_one_out
from invariant_mr.estimators.summary.sumstats import SummaryStatistics
from invariant_mr.estimators.tail_probabilities import norm_ppf
from invariant_mr.results import AnalysisResult, Estimate

#: The files `write_mr_plots` writes, in report order, with their titles.
MR_PLOTS = (
    ("scatter.png", "Variant associations with the exposure and the outcome"),
    ("funnel.png", "Funnel plot"),
    ("leave_one_out.png", "Leave-one-out IVW"),
    ("single_variant_forest.png", "Single-variant estimates"),
)


def _figures():
    """`report.plots` (imports matplotlib): figures are made only when drawn, so importing this module stays cheap."""
    from invariant_mr.report import plots

    return plots


def _pooled(result: AnalysisResult | None, exposure: str | None = None) -> list[Estimate]:
    if result is None:
        return []
    return [
        e for e in result.estimates
        if e.scope == "pooled" and e.estimate is not None and math.isfinite(e.estimate)
        and (exposure is None or e.exposure in (None, exposure))
    ]  # fmt: skip


def _oriented(ss: SummaryStatistics):
    sign = np.where(ss.beta_exposure < 0, -1.0, 1.0)
    return ss.beta_exposure * sign, ss.se_exposure, ss.beta_outcome * sign, ss.se_outcome


def scatter_plot(ss: SummaryStatistics, result: AnalysisResult | None = None, *, exposure: str | None = None,
                 alpha: float = 0.05):
    """Associations with error bars and one fitted line per pooled method estimate."""
    mpl = _figures()
    bx, sx, by, sy = _oriented(ss)
    z = norm_ppf(1 - alpha / 2)
    fig, ax = mpl.subplots(figsize=(7.0, 5.2))
    ax.errorbar(bx, by, xerr=z * sx, yerr=z * sy, fmt="o", ms=3.5, color="0.3", ecolor="0.7", lw=0.8, capsize=0,
                label=f"variants ({ss.n_variants})")
    ax.axhline(0, color="0.8", lw=0.8)
    xs = np.array([0.0, float(np.max(bx + z * sx))])
    colors = mpl.cycle_colors()
    for i, e in enumerate(_pooled(result, exposure)):
        intercept = float(e.extra.get("intercept", 0.0) or 0.0) if e.method in ("mr_egger", "mv_egger") else 0.0
        ax.plot(xs, intercept + e.estimate * xs, color=colors[i % len(colors)], lw=1.4,
                ls="-" if i < len(colors) else "--", label=f"{e.method}: {e.estimate:.3g}")
    ax.set_xlabel(f"variant-exposure association{'' if exposure is None else f' ({exposure})'}")
    ax.set_ylabel("variant-outcome association")
    ax.set_title("Variant associations (oriented to a positive exposure effect)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    _tick_label_margins(fig, ax)
    return fig


def funnel_plot(ss: SummaryStatistics, result: AnalysisResult | None = None, *, exposure: str | None = None):
    """Ratio estimate against precision |bx|/sy, with the pooled estimates as vertical lines."""
    mpl = _figures()
    ratio = ss.beta_outcome / ss.beta_exposure
    precision = np.abs(ss.beta_exposure) / ss.se_outcome
    fig, ax = mpl.subplots(figsize=(6.5, 5.0))
    ax.scatter(ratio, precision, s=14, color="0.3", label="variants")
    colors = mpl.cycle_colors()
    for i, e in enumerate(_pooled(result, exposure)):
        ax.axvline(e.estimate, color=colors[i % len(colors)], lw=1.2, label=f"{e.method}: {e.estimate:.3g}")
    ax.set_xlabel("ratio estimate (outcome / exposure association)")
    ax.set_ylabel("precision |beta_exposure| / se_outcome")
    ax.set_title("Funnel plot: asymmetry suggests directional pleiotropy")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    _tick_label_margins(fig, ax)
    return fig


def _interval_rows(ax, labels: Sequence[str], est, lo, hi, *, colors=None) -> list:
    """One row per label, top to bottom: point and interval, the label where a y tick label would be.

    The labels are plain texts and the tick marks one line of tick markers, not ~80 axis ticks: each
    tick is three lines and two texts, and creating and drawing them was a third of these figures'
    cost. Returns the label texts (`_place_ylabel` measures them).
    """
    import matplotlib as mpl
    from matplotlib.markers import TICKLEFT
    from matplotlib.transforms import ScaledTranslation

    y = np.arange(len(labels))
    est, lo, hi = (np.asarray(a, dtype=float) for a in (est, lo, hi))
    colors = ["C0"] * len(labels) if colors is None else list(colors)
    # One errorbar call per colour, not per row: drawing 80 rows one by one dominated `mr`'s run time.
    for color in dict.fromkeys(colors):
        rows = np.array([c == color for c in colors])
        ax.errorbar(est[rows], y[rows], xerr=[est[rows] - lo[rows], hi[rows] - est[rows]], fmt="o", ms=3.5,
                    capsize=2, color=color, ls="none")
    ax.set_yticks([])
    rc = mpl.rcParams
    axis_x = ax.get_yaxis_transform()  # x in axes fraction, y in data
    ax.plot(np.zeros(len(y)), y, ls="none", marker=TICKLEFT, ms=rc["ytick.major.size"], mew=rc["ytick.major.width"],
            color=rc["ytick.color"], transform=axis_x, clip_on=False)
    pad = (rc["ytick.major.size"] + rc["ytick.major.pad"]) / 72  # inches, as the axis places tick labels
    shift = ScaledTranslation(-pad, 0, ax.get_figure().dpi_scale_trans)
    size = 7 if len(labels) > 30 else 8
    texts = [ax.text(0, yi, str(label), transform=axis_x + shift, ha="right", va="center_baseline", fontsize=size,
                     color=rc["ytick.labelcolor"] if rc["ytick.labelcolor"] != "inherit" else rc["ytick.color"])
             for yi, label in zip(y, labels)]
    ax.invert_yaxis()
    ax.axvline(0, color="0.6", lw=0.8)
    ax.grid(axis="x", alpha=0.3)
    return texts


def _place_ylabel(ax, texts) -> None:
    """Put the y label left of the row labels, where the axis would put it beside tick labels (it only
    knows its ticks): measured on the few longest labels, after the margins are set."""
    import matplotlib as mpl

    fig = ax.get_figure()
    renderer = fig.canvas.get_renderer()
    widest = max((t.get_window_extent(renderer).width for t in sorted(texts, key=lambda t: len(t.get_text()))[-5:]),
                 default=0.0)
    rc = mpl.rcParams
    gap = (rc["ytick.major.size"] + rc["ytick.major.pad"] + rc["axes.labelpad"]) * fig.dpi / 72
    ax.yaxis.set_label_coords(-(widest + gap) / ax.bbox.width, 0.5)


def _fixed_margins(fig, labels: Sequence[str]) -> None:
    """Margins from the longest label instead of `tight_layout`, which measured every tick label of
    these tall figures and cost more than drawing them."""
    width, height = fig.get_size_inches()
    longest = max((len(str(label)) for label in labels), default=4)
    left = min(0.6, (0.3 + 0.065 * longest) / width)
    fig.subplots_adjust(left=left, right=0.97, top=1 - 0.45 / height, bottom=0.55 / height)


def _tick_label_margins(fig, ax) -> None:
    """Margins for a single-axes figure from the length of its y tick labels, instead of `tight_layout`,
    which measured every artist of the figure in a layout pass costing about as much as drawing it.
    The ticks depend on the axes' height, so they are read after a first adjustment."""
    width, height = fig.get_size_inches()
    # Inches: the y label and tick marks, then each character of a 10-point tick label (fitted to what
    # tight_layout chose for 1- and 6-character labels); room for the title above, the x axis below.
    fig.subplots_adjust(left=1.0 / width, right=1 - 0.25 / width, top=1 - 0.4 / height, bottom=0.6 / height)
    longest = max((len(label.get_text()) for label in ax.get_yticklabels()), default=1)
    fig.subplots_adjust(left=min(0.4, (0.46 + 0.087 * longest) / width))


def leave_one_out_plot(ss: SummaryStatistics, *, alpha: float = 0.05):
    """IVW leaving out each variant in turn (its 1 - alpha CI), and IVW on all variants."""
    mpl = _figures()
    from invariant_mr.estimators.summary.summary_mr import ivw

    loo = leave_one_out(ss, alpha)
    full = ivw(ss, alpha)
    # Rows named by the variant left out, as TwoSampleMR's mr_leaveoneout_plot does: a "without "
    # on each of ~80 labels cost a third of this figure's rendering (text is most of it).
    labels = list(ss.variant) + ["all variants"]
    est = np.append(loo["estimate"], full.estimate)
    lo = np.append(loo["ci_low"], full.ci_low)
    hi = np.append(loo["ci_high"], full.ci_high)
    fig, ax = mpl.subplots(figsize=(6.5, 1.2 + 0.2 * len(labels)))
    texts = _interval_rows(ax, labels, est, lo, hi, colors=["0.3"] * (len(labels) - 1) + ["C3"])
    ax.axvline(full.estimate, color="C3", lw=0.8, ls="--")
    ax.set_xlabel(f"IVW estimate without the variant ({100 * (1 - alpha):g}% CI)")
    ax.set_ylabel("variant left out")
    ax.set_title("Leave-one-out IVW")
    _fixed_margins(fig, labels)
    _place_ylabel(ax, texts)
    return fig


def single_variant_forest_plot(ss: SummaryStatistics, result: AnalysisResult | None = None, *,
                               exposure: str | None = None, alpha: float = 0.05):
    """Each variant's ratio estimate (first-order SE sy/|bx|), sorted, then the pooled method estimates."""
    mpl = _figures()
    z = norm_ppf(1 - alpha / 2)
    ratio = ss.beta_outcome / ss.beta_exposure
    se = ss.se_outcome / np.abs(ss.beta_exposure)
    order = np.argsort(ratio)
    pooled = [e for e in _pooled(result, exposure) if e.ci_low is not None and e.ci_high is not None]
    labels = [ss.variant[i] for i in order] + [e.method for e in pooled]
    est = np.concatenate([ratio[order], [e.estimate for e in pooled]])
    lo = np.concatenate([ratio[order] - z * se[order], [e.ci_low for e in pooled]])
    hi = np.concatenate([ratio[order] + z * se[order], [e.ci_high for e in pooled]])
    colors = ["0.3"] * len(order) + ["C3"] * len(pooled)
    fig, ax = mpl.subplots(figsize=(6.5, 1.2 + 0.2 * len(labels)))
    _interval_rows(ax, labels, est, lo, hi, colors=colors)
    # Single weak variants have huge intervals; keep the pooled estimates readable.
    left = min(np.percentile(lo, 10), *(e.ci_low for e in pooled)) if pooled else np.percentile(lo, 10)
    right = max(np.percentile(hi, 90), *(e.ci_high for e in pooled)) if pooled else np.percentile(hi, 90)
    pad = 0.05 * (right - left)
    ax.set_xlim(left - pad, right + pad)
    ax.set_xlabel(f"ratio estimate ({100 * (1 - alpha):g}% CI); the widest single-variant intervals run off the axis")
    ax.set_title("Single-variant and pooled estimates")
    _fixed_margins(fig, labels)
    return fig


def mr_figures(ss: SummaryStatistics, result: AnalysisResult | None = None, *, exposure: str | None = None,
               alpha: float = 0.05) -> dict[str, object]:
    """{file name: figure} for the four plots (leave-one-out needs at least 3 variants)."""
    figures = {
        "scatter.png": scatter_plot(ss, result, exposure=exposure, alpha=alpha),
        "funnel.png": funnel_plot(ss, result, exposure=exposure),
    }
    if ss.n_variants >= 3:
        figures["leave_one_out.png"] = leave_one_out_plot(ss, alpha=alpha)
    figures["single_variant_forest.png"] = single_variant_forest_plot(ss, result, exposure=exposure, alpha=alpha)
    return figures


def mr_plot_pngs(ss: SummaryStatistics, result: AnalysisResult | None = None, *, exposure: str | None = None,
                 alpha: float = 0.05) -> dict[str, bytes]:
    """{file name: PNG bytes} of `mr_figures` (figures are closed after rendering)."""
    from invariant_mr.report.plots import figure_png_bytes

    # The two forest plots grow with the number of variants: a lower resolution keeps them quick to render.
    return {name: figure_png_bytes(fig, dpi=110 if name in ("scatter.png", "funnel.png") else 80)
            for name, fig in mr_figures(ss, result, exposure=exposure, alpha=alpha).items()}


def mr_plots_html(pngs: dict[str, bytes]) -> str:
    """The figures as base64 <img> tags for report.html."""
    import base64
    import html

    parts = []
    for name, title in MR_PLOTS:
        if name in pngs:
            data = base64.b64encode(pngs[name]).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(title)} ({name})</figcaption></figure>")
    return '<div class="figs">' + "".join(parts) + "</div>"


__all__ = [
    "MR_PLOTS", "funnel_plot", "leave_one_out_plot", "mr_figures", "mr_plot_pngs", "mr_plots_html",
    "scatter_plot", "single_variant_forest_plot",
]  # fmt: skip
