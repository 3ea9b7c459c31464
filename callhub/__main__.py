"""`python -m callhub` runs the CLI."""

import sys

from callhub.cli import main

sys.exit(main())
