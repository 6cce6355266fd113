"""Work on the stored data, periodic or one-off: the worker that runs it beside the
shipper (:mod:`.worker`), retention, forgetting (and, later, collectors, health checks,
rollups)."""
