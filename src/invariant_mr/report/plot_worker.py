"""Draw the figures of `invariant-mr mr` in a helper process while the main one computes.

A summary-statistic run spends about as long importing matplotlib and drawing
its five figures as it does on every estimator together. The figures need the
estimates, but matplotlib does not: a helper process started when the command
starts imports it while the main process reads, harmonises and estimates, then
draws the figures from the result it is sent, on the second core. The figures
are the same bytes either way (same code, same inputs); if the helper cannot
start or fails, they are drawn in the main process as before.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from invariant_mr.results import AnalysisResult


def _draw(summary_stats, result: AnalysisResult, exposure: str | None, alpha: float,
          plots: bool) -> tuple[dict[str, bytes], bytes | None]:
    """(the mr plots' PNG bytes by file name, or {} when `plots` is False; the report's forest plot)."""
    from invariant_mr.report.html import forest_png
    from invariant_mr.report.mr_plots import mr_plot_pngs

    pngs = mr_plot_pngs(summary_stats, result, exposure=exposure, alpha=alpha) if plots else {}
    return pngs, forest_png(result)


def _serve(conn) -> None:
    """The helper: import the plotting stack now, then draw one job and send the bytes back."""
    try:
        import invariant_mr.report.html  # noqa: F401  (imports matplotlib while the parent estimates)
        import invariant_mr.report.mr_plots  # noqa: F401

        job = conn.recv()
        if job is None:
            return
        summary_stats, result_dict, exposure, alpha, plots = job
        conn.send(("ok", _draw(summary_stats, AnalysisResult.from_dict(result_dict), exposure, alpha, plots)))
    except Exception as exc:  # reported to the parent, which then draws the figures itself
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except (OSError, EOFError):
            pass
    finally:
        conn.close()


class PlotWorker:
    """A helper process that draws the `mr` figures; `draw` falls back to this process on any failure."""

    def __init__(self) -> None:
        self._conn: Any = None
        self._process: Any = None
        try:
            ctx = mp.get_context("spawn")  # fork would copy BLAS thread state; spawn starts clean
            self._conn, child = ctx.Pipe()
            self._process = ctx.Process(target=_serve, args=(child,), daemon=True, name="invariant-mr-plots")
            self._process.start()
            child.close()
        except (OSError, RuntimeError, ValueError):
            self._conn = self._process = None

    def draw(self, summary_stats, result: AnalysisResult, *, exposure: str | None, alpha: float,
             plots: bool = True) -> tuple[dict[str, bytes], bytes | None]:
        """The figures of `_draw`, from the helper when it is alive, else drawn here."""
        if self._process is not None:
            try:
                self._conn.send((summary_stats, result.to_dict(), exposure, alpha, plots))
                status, payload = self._conn.recv()
                if status == "ok":
                    return payload
            except (OSError, EOFError, ValueError, TypeError):
                pass
            finally:
                self.close()
        return _draw(summary_stats, result, exposure, alpha, plots)

    def close(self) -> None:
        """Stop the helper (idempotent)."""
        if self._conn is not None:
            try:
                if self._process is not None and self._process.is_alive():
                    self._conn.send(None)
            except (OSError, EOFError, ValueError):
                pass
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.terminate()
            self._process = None

    def __enter__(self) -> "PlotWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["PlotWorker"]
