"""Shared pytest set-up: each area registers its fixtures module here."""

import asyncio
import os
from typing import Any

from callhub.loops import loop_factory, uvloop_installed

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

# The daemon runs on uvloop (callhub/loops.py), the tests on asyncio's loop; the modules
# whose code works the loop's transports and threads directly run on both.
BOTH_LOOPS = {
    "test_routing_fastagi.py",    # the FastAGI server's Protocol
    "test_routing_pair_group.py", # the shared position's groups (loop turns)
    "test_ami_connection.py",     # the AMI sessions (panoramisk's transports)
    "test_store_db_loop.py",      # the writer's loop in a thread
    "test_api_limits.py",         # the HTTP gate's Protocol
    "test_api_handoff.py",        # connections passed between processes
}


def pytest_asyncio_loop_factories(config: object, item: object) -> dict[str, Any]:
    """asyncio's loop for every test; uvloop's as well for BOTH_LOOPS (its own test id)."""
    path = getattr(item, "path", None)
    if path is not None and path.name in BOTH_LOOPS and uvloop_installed():
        return {"asyncio": asyncio.new_event_loop, "uvloop": loop_factory("uvloop")}
    return {"asyncio": asyncio.new_event_loop}
