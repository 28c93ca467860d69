"""The project's own exceptions: errors a user or operator can cause.

Each carries what the CLI needs to print one clear line (file, key, user) and the
exit code it maps to. Anything else reaching the top level is a bug.
"""

from __future__ import annotations

from collections.abc import Sequence

ENVIRONMENT_PREFIX = "environment "


class T3BackupError(Exception):
    """Base of every error a user can cause; `str()` is the one line to print."""

    exit_code = 1


class ConfigError(T3BackupError):
    """The config file (or an override) is invalid; carries every problem found."""

    exit_code = 2

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        # A problem set by an environment variable names the variable, not the file.
        from_file = [p for p in self.problems if not p.startswith(ENVIRONMENT_PREFIX)]
        parts = [f"{source}: " + "; ".join(from_file)] if from_file or not self.problems else []
        parts += [p for p in self.problems if p.startswith(ENVIRONMENT_PREFIX)]
        super().__init__("; ".join(parts) if self.problems else f"{source}: invalid")


class UsageError(T3BackupError):
    """A command-line request that cannot be served (unknown user, bad label...)."""

    exit_code = 2


class SnapshotNotFound(T3BackupError):
    """No snapshot matches what was asked for."""

    exit_code = 1
