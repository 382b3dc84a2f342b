"""Error types that several layers raise and the command line turns into one line.

They live in the core so that the runners' command-line modules can raise them without
importing ``spactor.cli`` (imports go one way: CLI → runners → plugins → core).
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad command-line input; printed in one line, exit code 2."""
