"""Figures people would rather look at than read. Matplotlib, headless (Agg)."""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from invariant_mr.results import AnalysisResult


def subplots(*args, figsize=None, **kwargs):
    """`pyplot.subplots` without pyplot: a `Figure` outside pyplot's registry, rendered headless by
    `figure_png_bytes`. Nothing to close, no GUI backend, and no pyplot import (0.1 s of every run)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # the headless canvas (it measures text for the layouts)
    return fig, fig.subplots(*args, **kwargs)


def cycle_colors() -> list[str]:
    """The colours of matplotlib's property cycle."""
    return rcParams["axes.prop_cycle"].by_key()["color"]


#: Tukey's far-out fence: values more than this many IQRs beyond the quartiles set no axis limit.
FENCE_IQR = 3.0


def robust_limits(points, ends, theta: float | None = None) -> tuple[float, float]:
    """An x-range that shows every ordinary point estimate and the bulk of the interval ends.

    `points` are point estimates, `ends` the finite CI bounds. Values beyond
    Tukey's far-out fence (quartiles -/+ 3 IQR of points and ends together)
    do not widen the axis, so one interval of +-7000 cannot squeeze every
    other estimate onto one pixel column; whatever is cut is marked by the
    caller. The true effect, when given, is always inside.
    """
    points = np.asarray([v for v in points if v is not None and math.isfinite(v)], dtype=float)
    ends = np.asarray([v for v in ends if v is not None and math.isfinite(v)], dtype=float)
    values = np.concatenate([points, ends, [] if theta is None else [float(theta)]])
    if values.size == 0:
        return -1.0, 1.0
    q1, q3 = np.percentile(values, [25, 75])
    spread = max(q3 - q1, 1e-9 * max(1.0, abs(float(np.median(values)))))
    inside = values[(values >= q1 - FENCE_IQR * spread) & (values <= q3 + FENCE_IQR * spread)]
    if theta is not None:
        inside = np.append(inside, float(theta))
    lo, hi = float(inside.min()), float(inside.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def forest_plot(result: AnalysisResult, scopes: tuple[str, ...] | None = None, title: str | None = None):
    """Point estimates with confidence intervals per method (rows) and scope (markers).

    Methods without an estimate keep their row, labelled with the reason.
    The axis range is robust (`robust_limits`): an interval running past it
    is drawn to the edge and ends in an arrow, a point estimate beyond it is
    drawn at the edge as an arrow with its value. The true effect, when known
    (simulations), is a dashed line.
    """
    all_rows = [e for e in result.estimates if scopes is None or e.scope in scopes]
    methods = list(dict.fromkeys(e.label for e in all_rows))
    rows = [e for e in all_rows if e.available]
    scope_list = list(dict.fromkeys(e.scope for e in rows)) or ["pooled"]
    theta = None if result.truth is None else result.truth.get("theta")
    lo_lim, hi_lim = robust_limits(
        [e.estimate for e in rows], [v for e in rows for v in (e.ci_low, e.ci_high)], theta
    )
    width = hi_lim - lo_lim
    height = 0.42 * max(len(methods), 2) * max(1.0, len(scope_list) * 0.55) + 1.3
    fig, ax = subplots(figsize=(8.5, height))
    offsets = {s: (i - (len(scope_list) - 1) / 2) * min(0.18, 0.7 / len(scope_list)) for i, s in enumerate(scope_list)}
    colors = cycle_colors()
    labelled: set[str] = set()
    n_clipped = 0
    arrow = dict(arrowstyle="-|>", lw=1.0, mutation_scale=9)
    for i, scope in enumerate(scope_list):
        color = colors[i % len(colors)]
        for e in rows:
            if e.scope != scope:
                continue
            y = methods.index(e.label) + offsets[scope]
            x = min(max(e.estimate, lo_lim), hi_lim)
            lo = e.ci_low if e.ci_low is not None and math.isfinite(e.ci_low) else -math.inf
            hi = e.ci_high if e.ci_high is not None and math.isfinite(e.ci_high) else math.inf
            if e.ci_low is None and e.ci_high is None:
                lo = hi = e.estimate
            lo_c, hi_c = max(lo, lo_lim), min(hi, hi_lim)
            if lo_c < hi_c:
                ax.plot([lo_c, hi_c], [y, y], color=color, lw=1.3, solid_capstyle="butt")
            for bound, clipped, edge, sign in ((lo, lo < lo_lim, lo_lim, -1), (hi, hi > hi_lim, hi_lim, 1)):
                if clipped:
                    n_clipped += 1
                    ax.annotate("", xy=(edge, y), xytext=(edge - sign * 0.035 * width, y), arrowprops={**arrow, "color": color})
                elif math.isfinite(bound):
                    ax.plot([bound, bound], [y - 0.06, y + 0.06], color=color, lw=1.0)
            outside = not (lo_lim <= e.estimate <= hi_lim)
            ax.plot(
                x, y, "o" if scope == "pooled" else "s", ms=5.5 if scope == "pooled" else 4,
                color=color, mfc="white" if outside else color, label=None if scope in labelled else scope,
            )
            labelled.add(scope)
            if outside:
                ax.annotate(f"{e.estimate:.3g}", xy=(x, y), xytext=(0, 5), textcoords="offset points",
                            ha="right" if x >= hi_lim else "left", fontsize=7, color=color)
    for e in all_rows:
        if e.label not in {r.label for r in rows} and e.scope == "pooled":
            ax.text(0.02, methods.index(e.label), f"no estimate: {e.reason}", transform=ax.get_yaxis_transform(),
                    va="center", ha="left", fontsize=8, color="#a33", style="italic")
    if theta is not None:
        ax.axvline(theta, ls="--", color="k", lw=1, label=f"true effect = {theta:g}")
    ax.set_xlim(lo_lim, hi_lim)
    ax.set_ylim(len(methods) - 0.5, -0.5)
    ax.set_yticks(range(len(methods)), methods)
    level = 100 * (1 - result.provenance.get("parameters", {}).get("alpha", 0.05))
    xlabel = f"causal effect estimate ({level:g}% CI)"
    if n_clipped:
        xlabel += f"; arrows: {n_clipped} interval end(s) beyond the axis"
    ax.set_xlabel(xlabel)
    ax.set_title(title or "Estimates by method")
    ax.grid(axis="x", alpha=0.3)
    if labelled or theta is not None:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def training_curves_figure(method: str, history: Sequence[Mapping]):
    """One small panel per loss term (train solid, validation dashed, one colour per fold).

    A panel uses a log scale when its values are positive and span more than
    a factor of 20, so the late epochs stay readable. Returns None when the
    history holds no numeric loss.
    """
    rows = [r for r in history if isinstance(r, Mapping)]
    keys = [
        k for k in dict.fromkeys(k for r in rows for k in r)
        if k not in ("epoch", "fold", "lr") and all(isinstance(r.get(k, 0.0), (int, float)) for r in rows)
    ]
    if not keys:
        return None
    terms: dict[str, list[tuple[str, str]]] = {}
    for k in keys:
        split, _, term = k.partition("_")
        if split in ("train", "val") and term:
            terms.setdefault(term, []).append((split, k))
        else:
            terms.setdefault(k, []).append(("", k))
    # A series that never changes (e.g. a fixed penalty weight) gets no panel: nothing to read in it.
    terms = {
        t: ks for t, ks in terms.items()
        if np.nanmax([r.get(k, np.nan) for r in rows for _, k in ks]) > np.nanmin([r.get(k, np.nan) for r in rows for _, k in ks])
    } or terms
    # "total" first: it is what model selection uses.
    names = sorted(terms, key=lambda t: (t != "total", list(terms).index(t)))
    folds = sorted({r.get("fold") for r in rows}, key=lambda f: (f is None, f))
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = subplots(nrows, ncols, figsize=(3.1 * ncols, 2.4 * nrows + 0.6), squeeze=False)
    colors = cycle_colors()
    for ax, name in zip(axes.flat, names):
        values = []
        for fi, fold in enumerate(folds):
            fold_rows = [r for r in rows if r.get("fold") == fold]
            epochs = [r.get("epoch", i) for i, r in enumerate(fold_rows)]
            for split, key in terms[name]:
                ys = np.array([r.get(key, np.nan) for r in fold_rows], dtype=float)
                values.append(ys[np.isfinite(ys)])
                ax.plot(epochs, ys, lw=1.1, color=colors[fi % len(colors)], ls="--" if split == "val" else "-")
        v = np.concatenate(values) if values else np.array([])
        if v.size and v.min() > 0 and v.max() / v.min() > 20:
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())  # minor labels would overprint each other
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[i % len(colors)], lw=1.5) for i in range(len(folds))]
    labels = ["all data" if f is None else f"fold {f}" for f in folds]
    handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--")]
    labels += ["train", "validation"]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{method}: training curves", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def figure_png_bytes(fig, dpi: int = 110) -> bytes:
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    # `tight_layout` leaves an inert placeholder layout engine behind, and savefig runs a whole extra
    # (non-rendering) draw for any figure with an engine: drop it, the layout is already applied.
    if isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
        fig.set_layout_engine(None)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
