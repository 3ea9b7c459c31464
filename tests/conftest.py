"""Shared pytest set-up: each area registers its fixtures module here."""

pytest_plugins = [
    "traces_fixtures",
    "metrics_fixtures",
    "routing_fixtures",
    "ami_fixtures",
    "store_fixtures",
    "desk_fixtures",
    "cel_fixtures",
]
