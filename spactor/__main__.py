"""``python -m spactor`` (and ``torchrun -m spactor``) runs the CLI."""

import sys

from spactor.cli import main

sys.exit(main())
