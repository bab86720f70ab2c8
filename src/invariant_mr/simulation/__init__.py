"""Seeded data generators. Each returns the data together with the truth."""

from invariant_mr.simulation.paper import PAPER_SETTINGS, SimulatedData, simulate_paper

__all__ = ["PAPER_SETTINGS", "SimulatedData", "simulate_paper"]
