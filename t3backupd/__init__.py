"""t3backupd: verified, privilege-separated snapshots of T3 Code's state.sqlite."""

from __future__ import annotations

__version__ = "0.1.0"
