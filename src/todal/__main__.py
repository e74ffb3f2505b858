"""`python -m todal ...` (and `torchrun ... -m todal ...`): the todal command line."""

import sys

from .cli import main

sys.exit(main())
