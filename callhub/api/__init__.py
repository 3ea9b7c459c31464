"""The HTTP API: routes, auth, JSON and CSV."""
