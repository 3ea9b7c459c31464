"""Shared pytest set-up: each area registers its fixtures module here."""

import os

pytest_plugins = [
    "traces_fixtures",
    "metrics_fixtures",
    "routing_fixtures",
    "ami_fixtures",
    "store_fixtures",
    "desk_fixtures",
    "cel_fixtures",
    "sms_fixtures",
]

# Every API answer is checked against its documented model in the tests (production skips it).
os.environ.setdefault("CALLHUB_API_VALIDATE_RESPONSES", "1")
