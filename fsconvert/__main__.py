"""`python -m fsconvert`: the `fsconvert` command."""

import sys

from .cli import main

sys.exit(main())
