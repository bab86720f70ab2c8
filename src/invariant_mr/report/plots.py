"""Figures people would rather look at than read. Matplotlib, headless (Agg)."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from invariant_mr.results import AnalysisResult  # noqa: E402


def forest_plot(result: AnalysisResult, scopes: tuple[str, ...] | None = None, title: str | None = None):
    """Point estimates with 95% CIs per method (rows) and scope (markers).

    The true effect, when known (simulations), is drawn as a dashed line.
    """
    rows = [e for e in result.estimates if scopes is None or e.scope in scopes]
    rows = [e for e in rows if e.estimate is not None and math.isfinite(e.estimate)]
    methods = list(dict.fromkeys(e.label for e in rows))
    scope_list = list(dict.fromkeys(e.scope for e in rows))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(methods), 2) * max(1, len(scope_list) * 0.6) + 1.2))
    offsets = {s: (i - (len(scope_list) - 1) / 2) * 0.18 for i, s in enumerate(scope_list)}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, scope in enumerate(scope_list):
        for e in rows:
            if e.scope != scope:
                continue
            y = methods.index(e.label) + offsets[scope]
            lo = e.ci_low if e.ci_low is not None else e.estimate
            hi = e.ci_high if e.ci_high is not None else e.estimate
            ax.errorbar(
                e.estimate, y, xerr=[[e.estimate - lo], [hi - e.estimate]],
                fmt="o" if scope == "pooled" else "s", ms=5 if scope == "pooled" else 3.5,
                color=colors[i % len(colors)], capsize=2,
                label=scope if e.label == next(r.label for r in rows if r.scope == scope) else None,
            )
    theta = None if result.truth is None else result.truth.get("theta")
    if theta is not None:
        ax.axvline(theta, ls="--", color="k", lw=1, label=f"true effect = {theta:g}")
    ax.set_yticks(range(len(methods)), methods)
    ax.invert_yaxis()
    ax.set_xlabel("causal effect estimate (95% CI)")
    ax.set_title(title or "Estimates by method")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def figure_png_bytes(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
