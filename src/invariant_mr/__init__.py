"""invariant-mr: Mendelian randomization with instruments learned to be invariant across environments.

The names users call are importable from here. They load on first use
(PEP 562), so `import invariant_mr` and the command line stay fast and
torch is imported only when the autoencoder is.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> module that defines it.
_PUBLIC = {
    "InputError": "invariant_mr.errors",
    "MRData": "invariant_mr.data",
    "AnalysisResult": "invariant_mr.results",
    "Estimate": "invariant_mr.results",
    "LinearInvariantInstruments": "invariant_mr.instruments.linear",
    "InvariantAutoencoder": "invariant_mr.instruments.autoencoder",
    "fit_kclass": "invariant_mr.estimators.iv",
    "ivw": "invariant_mr.estimators.summary.summary_mr",
    "mr_egger": "invariant_mr.estimators.summary.summary_mr",
    "weighted_median": "invariant_mr.estimators.summary.summary_mr",
    "weighted_mode": "invariant_mr.estimators.summary.summary_mr",
    "mr_presso": "invariant_mr.estimators.summary.summary_mr",
    "summary_statistics": "invariant_mr.estimators.summary.sumstats",
    "anderson_rubin_confidence_set": "invariant_mr.inference.weak_iv",
    "InferenceSettings": "invariant_mr.inference.settings",
    "run_analysis": "invariant_mr.pipeline",
    "MethodContext": "invariant_mr.methods.registry",
    "simulate_paper": "invariant_mr.simulation",
    "simulate_genetic": "invariant_mr.simulation.genetic_dataset",
    "load_genetic_data": "invariant_mr.io.genetic_input",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'invariant_mr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
