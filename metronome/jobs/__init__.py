"""Work on the stored data, periodic or one-off: retention, forgetting (and, later,
collectors, health checks, rollups)."""
