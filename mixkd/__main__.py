"""`python -m mixkd`: the `mixkd` command where the package is on the path but not installed (a GPU machine)."""

import sys

from .cli import main

sys.exit(main())
