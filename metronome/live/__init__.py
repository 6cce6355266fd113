"""Live subscriptions and the dashboard.

- :mod:`.protocol`: the messages of ``GET /live`` (WebSocket) and ``GET /live/events``
  (Server-Sent Events), their schemas and close codes.
- :mod:`.hub`: one shared evaluation per distinct subscription per process (store polling).
- :mod:`.connection`: one connection's subscriptions, coalescing, heartbeat and limits.
- :mod:`.token`: short-lived signed tokens for browsers (``POST /live/token``).
- :mod:`.dashboard`: the dashboard page and its assets (``GET /dashboard``).
"""
