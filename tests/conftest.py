"""Shared pytest set-up: each area registers its fixtures module here."""

pytest_plugins = [
    "metrics_fixtures",
]
