"""KPIs: per-site definitions of a ``/query`` metric the worker watches, and where they
are kept (beside the events, like sites). Widgets are KPIs placed on a dashboard."""
