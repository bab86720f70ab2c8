"""`python -m invariant_mr.cli ...`, the same as the `invariant-mr` script."""

import sys

from invariant_mr.cli import main

sys.exit(main())
