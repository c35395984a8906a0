"""User mistakes (the CLI prints one line and exits 2), a requested stop (one line, exit 0), and
warnings (one line on stderr, the run goes on)."""

import sys


class UserError(Exception):
    """A mistake the user can fix (bad config, bad path, malformed data); never a bug."""


class RunStopped(Exception):
    """Training stopped on request (SIGINT / SIGTERM) after saving a checkpoint; the CLI exits 0."""


def warn(message: str) -> None:
    """One line on stderr that says what was done instead of failing (skipped,
    set aside, counted)."""
    print(f"treerl: warning: {message}", file=sys.stderr)
