"""Figures and tables made from results (they read results; they never train)."""
