"""What a run prints on the terminal: the estimates table, the verdict, and what instruments.tsv left out."""

from __future__ import annotations

from invariant_mr.results import AnalysisResult


def terminal_summary(result: AnalysisResult, *, show_env: bool = False, n: int | None = None,
                     instruments_out: bool = False) -> str:
    """The estimates table (pooled rows only unless `show_env`), diagnostics and the verdict.

    With `instruments_out`, also one line on methods that have no column in
    instruments.tsv and why (`n` = analysed samples). File outputs never
    depend on these switches: they always hold every scope.
    """
    from invariant_mr.report.verdict import verdicts

    parts = [result.summary(scopes=None if show_env else ("pooled",)), *(v.summary() for v in verdicts(result))]
    if not show_env and any(e.scope != "pooled" for e in result.estimates):
        parts[0] += "\n(per-environment rows: --show-env, estimates.tsv or report.html)"
    if instruments_out and n is not None:
        from invariant_mr.report.learned_instruments import instruments_note

        note = instruments_note(result, n)
        if note:
            parts.append(note)
    return "\n\n".join(parts)


__all__ = ["terminal_summary"]
