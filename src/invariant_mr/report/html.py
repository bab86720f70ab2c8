"""A self-contained HTML report of one analysis.

One file, no network resources (no scripts, fonts or style sheets fetched;
figures are base64 PNGs), so it can be mailed or archived with the results:
the estimates table, a forest plot (pooled and per environment), the learned
instruments by environment, training curves of neural methods, diagnostics,
QC and sample counts, and the provenance.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from invariant_mr.report.learned_instruments import instrument_count_label, learned_instruments, missing_instruments
from invariant_mr.io.output import atomic_write_text
from invariant_mr.provenance import json_default
from invariant_mr.results import ESTIMATE_COLUMNS, AnalysisResult, format_pvalue

_TEXT_COLUMNS = ("method", "scope", "note")


def _cell_class(column: str) -> str:
    return "text note" if column == "note" else ("text" if column in _TEXT_COLUMNS else "")

#: Points drawn per scatter plot: enough to see the shape, small enough to keep the file light.
MAX_SCATTER_POINTS = 4000

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:0.2em}h2{border-bottom:1px solid #ccc;padding-bottom:0.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f3f3f3}
td.text,th.text{text-align:left}td{white-space:nowrap}td.note{color:#a33;white-space:normal;min-width:12em}
.wide{overflow-x:auto}pre.verdict{white-space:pre-wrap}tr.pooled td{font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:0.4em 0}
pre{background:#f7f7f7;padding:0.8em;overflow-x:auto;font-size:0.8em}
.muted{color:#777}.figs{display:flex;flex-wrap:wrap;gap:1em}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "NA"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NA" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return f"{value:.4g}"
    return str(value)


def _png_tag(fig, alt: str) -> str:
    from invariant_mr.report.plots import figure_png_bytes

    data = base64.b64encode(figure_png_bytes(fig)).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _estimates_table(result: AnalysisResult) -> str:
    theta = None if result.truth is None else result.truth.get("theta")
    cols = list(ESTIMATE_COLUMNS)
    head = "".join(f'<th class="{"text" if c in _TEXT_COLUMNS else ""}">{_esc(c)}</th>' for c in cols)
    if theta is not None:
        head += "<th>bias</th>"
    rows = []
    ordered = sorted(result.estimates, key=lambda e: (e.scope != "pooled", e.scope))
    for e in ordered:
        d = e.to_dict()
        d["pvalue"] = format_pvalue(e.pvalue)
        d["note"] = e.note
        if not e.available:
            # Where the numbers would be, say why there are none (the first thing a reader looks at).
            span = len(cols) - 2 + (theta is not None)
            cells = (
                f'<td class="text">{_esc(e.method)}</td><td class="text">{_esc(e.scope)}</td>'
                f'<td class="text note" colspan="{span}">{_esc(e.note)}</td>'
            )
            rows.append(f'<tr class="{"pooled" if e.scope == "pooled" else ""} na">{cells}</tr>')
            continue
        cells = "".join(
            f'<td class="{_cell_class(c)}">{_esc(_fmt(d[c]))}</td>' for c in cols
        )
        if theta is not None:
            bias = e.estimate - theta
            cells += f"<td>{_esc(_fmt(bias))}</td>"
        rows.append(f'<tr class="{"pooled" if e.scope == "pooled" else ""}">{cells}</tr>')
    caption = f'<p class="muted">True effect: {theta:g}</p>' if theta is not None else ""
    return f'{caption}<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _forest(result: AnalysisResult) -> str:
    from invariant_mr.report.plots import forest_plot

    if not result.estimates:
        return '<p class="muted">No estimate to plot.</p>'
    fig = forest_plot(result, title="Estimates by method: pooled and per environment")
    note = (
        '<p class="muted">The axis covers the point estimates and the bulk of the interval ends; an interval '
        "that runs past it ends in an arrow at the edge (its bounds are in the table). Methods without an "
        "estimate keep their row, with the reason.</p>"
    )
    return _png_tag(fig, "forest plot") + note


def _verdict(result: AnalysisResult) -> str:
    from invariant_mr.report.verdict import STANDINGS, verdicts

    parts = [
        "<p>The verdict answers one question: is there an estimate whose instruments we have evidence are not "
        "confounded with the outcome? It reads only the checks below (never the true effect), by the rule in "
        "<code>docs/verdict.md</code>. Methods that use the variants as they are cannot remove confounding that "
        "every variant shares (population stratification, assortative mating), so they are shown as references, "
        "never recommended on individual-level data. A passed invariance test across environments is the strongest "
        "evidence; an overidentification test (J) only sees instruments that disagree; a skipped check is no "
        "evidence. <b>&ldquo;No estimate can be trusted&rdquo;</b> means that no method that addresses the "
        "confounding passed its checks, or that such methods disagree: the table still holds every estimate, but "
        "none of them should be reported as the causal effect without more data.</p>"
    ]
    for v in verdicts(result):
        head = "" if v.exposure is None else f"<h3>Exposure {_esc(v.exposure)}</h3>"
        reasons = "".join(f"<li>{_esc(r)}</li>" for r in v.reasons)
        left = ' style="text-align:left;white-space:normal;min-width:22em"'
        rows = "".join(
            f"<tr><td>{_esc(s.method)}</td><td>{_esc(s.design)}</td><td>{s.estimate:.4f}</td>"
            f"<td>[{s.ci_low:.3f}, {s.ci_high:.3f}]</td><td title=\"{_esc(STANDINGS.get(s.standing, ''))}\">"
            f"<b>{_esc(s.standing)}</b></td><td{left}>"
            + "".join(f'<span style="color:#b00">&#10007; {_esc(c)}</span><br>' for c in s.failed)
            + "".join(f"&#10003; {_esc(c)}<br>" for c in s.passed)
            + "</td></tr>"
            for s in v.standings
        )
        rows += "".join(f"<tr><td>{_esc(m)}</td><td></td><td>NA</td><td></td><td>no estimate</td>"
                        f"<td{left}>{_esc(r)}</td></tr>" for m, r in v.abstained)
        advice = "" if not v.advice else "<p>What would help: " + _esc("; ".join(v.advice)) + ".</p>"
        parts.append(
            f'{head}<p class="verdict"><b>{_esc(v.statement)}</b></p><ul>{reasons}</ul>{advice}'
            '<div class="wide"><table><tr><th>method</th><th>design</th><th>estimate</th><th>CI</th>'
            f"<th>standing</th><th{left}>checks (&#10007; failed, &#10003; passed)</th></tr>{rows}</table></div>"
        )
    return "".join(parts)


def _instrument_figures(result: AnalysisResult, env: np.ndarray | None) -> str:
    from invariant_mr.report.plots import cycle_colors, subplots

    if env is None:
        return '<p class="muted">Environment labels not available.</p>'
    env = np.asarray(env).astype(str)
    found = learned_instruments(result, env.shape[0])
    missing = missing_instruments(result, env.shape[0])
    notes = "".join(f'<p class="muted">No instruments from {_esc(m)}: {_esc(why)}.</p>' for m, why in missing.items())
    if not found:
        return '<p class="muted">No method learned instruments in this run.</p>' + notes
    levels = sorted(set(env.tolist()))
    colors = cycle_colors()
    # A fixed seed: the same run gives the same report.
    rng = np.random.default_rng(0)
    shown = rng.permutation(env.shape[0])[:MAX_SCATTER_POINTS]
    parts = []
    for method, values in found.items():
        k = values.shape[1]
        ncols = 2 if k >= 2 else 1
        fig, axes = subplots(1, ncols, figsize=(5.2 * ncols, 4.0), squeeze=False)
        ax = axes[0, 0]
        for i, lv in enumerate(levels):
            col = values[env == lv, 0]
            col = col[np.isfinite(col)]
            if col.size:
                ax.hist(col, bins=40, density=True, alpha=0.45, color=colors[i % len(colors)], label=f"{lv} (n={col.size})")
        ax.set_xlabel(f"{method} instrument 1")
        ax.set_ylabel("density")
        ax.set_title("Distribution by environment")
        ax.legend(fontsize=8)
        if k >= 2:
            ax2 = axes[0, 1]
            for i, lv in enumerate(levels):
                rows = shown[env[shown] == lv]
                ax2.scatter(values[rows, 0], values[rows, 1], s=4, alpha=0.5, color=colors[i % len(colors)], label=lv)
            ax2.set_xlabel("instrument 1")
            ax2.set_ylabel("instrument 2")
            ax2.set_title(f"Instruments 1 and 2 ({min(len(shown), env.shape[0])} samples)")
            ax2.legend(fontsize=8, markerscale=3)
        fig.suptitle(f"{method}: {instrument_count_label(result, method, k)}")
        fig.tight_layout()
        parts.append(_png_tag(fig, f"learned instruments of {method}"))
    return '<div class="figs">' + "".join(parts) + "</div>" + notes


def _training_figures(result: AnalysisResult) -> str:
    from invariant_mr.report.plots import training_curves_figure

    parts = []
    for method, artifacts in result.artifacts.items():
        history = artifacts.get("history") if hasattr(artifacts, "get") else None
        fig = training_curves_figure(method, history) if history else None
        if fig is not None:
            parts.append(_png_tag(fig, f"training curves of {method}"))
    if not parts:
        return '<p class="muted">No neural method ran in this analysis.</p>'
    return '<div class="figs">' + "".join(parts) + "</div>"


def _diagnostics_table(result: AnalysisResult) -> str:
    if not result.diagnostics:
        return '<p class="muted">No diagnostics were computed.</p>'
    rows = "".join(
        f'<tr><td class="text">{_esc(d.name)}</td><td class="text">{_esc(d.scope)}</td>'
        f"<td>{_esc(_fmt(d.statistic))}</td><td>{_esc(_fmt(d.pvalue))}</td><td class=\"text\">{_esc(d.flag)}</td></tr>"
        for d in result.diagnostics
    )
    return (
        '<table><thead><tr><th class="text">diagnostic</th><th class="text">scope</th><th>statistic</th>'
        f'<th>p-value</th><th class="text">flag</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def _counts_table(title: str, counts: Mapping[str, Any]) -> str:
    rows = "".join(
        f'<tr><td class="text">{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>' for k, v in counts.items()
    )
    return f'<table><thead><tr><th class="text">{_esc(title)}</th><th>count</th></tr></thead><tbody>{rows}</tbody></table>'


def _qc_section(qc: Mapping[str, Any] | None, samples: Mapping[str, Any] | None) -> str:
    if qc is None and samples is None:
        return '<p class="muted">No genotype QC in this run (table input).</p>'
    parts = []
    if samples is not None:
        counts = {k: samples[k] for k in ("n_genotyped", "n_phenotype_rows", "n_matched", "n_analysed") if k in samples}
        counts.update({f"dropped: {r}": c for r, c in samples.get("dropped", {}).items() if c})
        parts.append(f"<p>Samples joined by {_esc(samples.get('match_key', ''))}.</p>")
        parts.append(_counts_table("samples", counts))
    if qc is not None:
        counts = {
            "variants in": qc.get("n_variants_in"),
            "variants kept": qc.get("n_variants_out"),
            **{f"variants removed: {r}": c for r, c in qc.get("removed_variants", {}).items()},
            "samples in": qc.get("n_samples_in"),
            "samples kept": qc.get("n_samples_out"),
            **{f"samples removed: {r}": c for r, c in qc.get("removed_samples", {}).items()},
            "missing calls imputed (environment mean)": qc.get("n_imputed_calls"),
        }
        parts.append(_counts_table("QC", counts))
        parts.append(
            "<p>Thresholds: "
            + ", ".join(f"{_esc(k)} = {_esc(v)}" for k, v in qc.get("thresholds", {}).items())
            + ". Per-variant details are in qc.tsv.</p>"
        )
    return "".join(parts)


def _genotype_note(prov: Mapping[str, Any]) -> str:
    """Which file and which allele the dosages count, and how each method read the genotypes."""
    geno = prov.get("genotypes") or {}
    parts = []
    if geno:
        parts.append(
            f"<p>Genotypes: {_esc(geno.get('format', ''))} file {_esc(geno.get('path', ''))}. "
            f"Dosages count {_esc(geno.get('counted_allele', 'the allele stored in the file'))}; "
            "the counted and other allele of every variant are in qc.tsv (and --sumstats-out).</p>"
        )
    routes = (prov.get("streamed_passes") or {}).get("routes")
    if routes:
        items = "".join(f"<li>{_esc(m)}: {_esc(r)}</li>" for m, r in routes.items())
        parts.append(f"<p>The genotypes were streamed from the file (never held in memory). Route per method:</p>"
                     f"<ul>{items}</ul>")
    return "".join(parts)


def render_report(
    result: AnalysisResult,
    *,
    env: Sequence | np.ndarray | None = None,
    title: str = "invariant-mr analysis report",
    extra_sections: Sequence[tuple[str, str]] = (),
    individual_data: bool = True,
) -> str:
    """The report as one HTML string.

    `extra_sections` are (title, HTML) pairs placed after the forest plot
    (e.g. the summary-statistic MR plots of `invariant-mr mr`). With
    `individual_data=False` (summary statistics only) the sections that need
    samples (learned instruments, training curves, sample QC) are left out.

    `env` (one label per analysed sample) colours the learned-instrument
    plots. QC and sample counts are read from `result.provenance["qc"]` and
    `["samples"]` when the run loaded genotypes.
    """
    prov = dict(result.provenance)
    qc = prov.get("qc")
    samples = prov.get("samples")
    created = prov.get("created_utc", "")
    version = prov.get("version", "")
    command = prov.get("command", "")
    prov_json = json.dumps(prov, indent=2, default=json_default, sort_keys=False)
    sections = [
        ("Estimates", _estimates_table(result)),
        ("Forest plot", _forest(result)),
        ("Verdict", _verdict(result)),
        *extra_sections,
        *([("Learned instruments by environment", _instrument_figures(result, None if env is None else np.asarray(env))),
           ("Training curves", _training_figures(result))] if individual_data else []),
        ("Diagnostics", _diagnostics_table(result)),
        *([("Samples and quality control", _genotype_note(prov) + _qc_section(qc, samples))] if individual_data else []),
        ("Provenance", f"<pre>{_esc(prov_json)}</pre>"),
    ]
    body = "".join(f'<h2 id="{_esc(t.lower().replace(" ", "-"))}">{_esc(t)}</h2>{c}' for t, c in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_esc(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"
        f'<p class="muted">invariant-mr {_esc(version)} &middot; {_esc(created)}<br><code>{_esc(command)}</code></p>'
        f"{body}</body></html>\n"
    )


def write_report(
    path: str | os.PathLike, result: AnalysisResult, *, env=None, title: str | None = None,
    extra_sections: Sequence[tuple[str, str]] = (), individual_data: bool = True,
) -> None:
    """Render and write the report atomically (temporary file, then rename)."""
    text = render_report(result, env=env, title=title or "invariant-mr analysis report", extra_sections=extra_sections,
                         individual_data=individual_data)
    atomic_write_text(path, text)
