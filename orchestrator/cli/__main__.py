"""`python -m orchestrator.cli`: the same as the `backstream` console script."""

import sys

from orchestrator.cli.main import main

sys.exit(main())
