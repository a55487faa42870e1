"""`python -m servegraph`: the command line."""

from servegraph.cli import main

raise SystemExit(main())
