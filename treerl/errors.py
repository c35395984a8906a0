"""User mistakes (the CLI prints one line and exits 2) and a requested stop (one line, exit 0)."""


class UserError(Exception):
    """A mistake the user can fix (bad config, bad path, malformed data); never a bug."""


class RunStopped(Exception):
    """Training stopped on request (SIGINT / SIGTERM) after saving a checkpoint; the CLI exits 0."""
