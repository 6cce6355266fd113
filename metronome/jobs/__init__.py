"""Periodic work on the store: retention (and, later, collectors, health checks, rollups)."""
