"""`python -m bootd` is the `bootd` command."""

import sys

from bootd.cli import main

sys.exit(main())
