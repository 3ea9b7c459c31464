"""`python -m callhub` runs the CLI."""

import sys

from callhub.cli import main

if __name__ == "__main__":  # not when a spawned API worker imports it (callhub/api/workers.py)
    sys.exit(main())
