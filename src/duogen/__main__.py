"""`python -m duogen ...` is the `duogen` command (for environments where the entry point is not installed)."""

import sys

from .cli import main

sys.exit(main())
