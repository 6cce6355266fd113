"""Insights: trends, thresholds, anomaly detection and forecasts (pure domain code, no I/O)."""
