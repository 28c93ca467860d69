"""What `check-config` shows beyond validation: the effective config and its warnings.

Pure except for reading the installed systemd unit (root-owned, never a user's path).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from t3backupd.core.config import Config, all_keys
from t3backupd.core.usermap import User

# Where an installed copy of packaging/systemd/t3backupd.service (and drop-ins) live.
UNIT_NAME = "t3backupd.service"
# Highest priority first, as systemd reads them.
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
)
# The shipped unit's ReadWritePaths=, used when no installed unit is found.
DEFAULT_WRITABLE = ("/var/backups/t3-state", "/home")
# Writable for the unit whatever its ReadWritePaths=: CacheDirectory= and StateDirectory=.
UNIT_OWN_DIRS = ("/var/cache/t3backupd", "/var/lib/t3backupd")


def value_of(config: Config, dotted: str) -> Any:
    """The value of a dotted key ("retention.keep") in `config`."""
    target: Any = config
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


def effective_lines(config: Config) -> list[str]:
    """`key = value  (origin)` for every key the parser accepts, in the file's order."""
    origins = dict(config.origins)
    width = max(len(key) for key in all_keys())
    lines = []
    for key in all_keys():
        value = value_of(config, key)
        shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)
        if isinstance(value, str):
            shown = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key:<{width}} = {shown}  ({origins.get(key, 'default')})")
    return lines


def writable_paths(unit_texts: Sequence[str]) -> list[str]:
    """The paths of every `ReadWritePaths=` line in unit file texts (an empty assignment
    resets the list, as systemd does; a leading '-' only makes a path optional)."""
    paths: list[str] = []
    for text in unit_texts:
        for raw in text.splitlines():
            line = raw.strip()
            if not line.startswith("ReadWritePaths="):
                continue
            value = line.partition("=")[2].strip()
            if not value:
                paths = []
                continue
            paths += [item.lstrip("-+") for item in value.split()]
    return paths


def installed_unit(dirs: Sequence[str] = UNIT_DIRS) -> tuple[str | None, list[str]]:
    """(unit file path, texts of it and its drop-ins) of the first installed copy. Drop-ins
    come from every directory, as systemd merges them (the package's unit is in /lib,
    `systemctl edit` writes /etc/systemd/system/t3backupd.service.d/override.conf): in
    file-name order, a name in a higher-priority directory hiding the same name below."""
    for directory in dirs:
        path = os.path.join(directory, UNIT_NAME)
        try:
            texts = [Path(path).read_text(encoding="utf-8", errors="replace")]
        except OSError:
            continue
        dropins: dict[str, str] = {}
        for where in dirs:
            for dropin in glob.glob(os.path.join(where, UNIT_NAME + ".d", "*.conf")):
                dropins.setdefault(os.path.basename(dropin), dropin)
        for name in sorted(dropins):
            try:
                texts.append(Path(dropins[name]).read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue
        return path, texts
    return None, []


def _inside(path: str, roots: Sequence[str]) -> bool:
    path = os.path.normpath(path)
    return any(
        path == os.path.normpath(root) or path.startswith(os.path.normpath(root).rstrip("/") + "/")
        for root in roots
    )


def warnings_for(
    config: Config, users: Sequence[User], unit: str | None, writable: Sequence[str]
) -> list[str]:
    """What will not work under the unit's sandbox (ProtectSystem=strict)."""
    where = f"the unit {unit}" if unit else "the shipped unit (not installed here)"
    allowed = ", ".join(writable) or "nothing"
    origins = dict(config.origins)
    found = []
    if not _inside(config.dest, writable):
        found.append(
            f"dest {config.dest} ({origins.get('dest', 'default')}) is outside the paths "
            f"{where} lets the daemon write ({allowed}): snapshots will fail with a "
            "read-only file system; add ReadWritePaths= in a drop-in"
        )
    for user in users:
        source_dir = os.path.dirname(config.source_for(user.name, user.home))
        if not _inside(source_dir, writable):
            found.append(
                f"{user.name}: source directory {source_dir} is outside the paths {where} "
                f"lets the daemon write ({allowed}): SQLite cannot map the -shm file; add "
                "ReadWritePaths= in a drop-in"
            )
    offsite = config.offsite
    if offsite is not None:
        local = offsite.repository.removeprefix("local:")
        if local.startswith("/") and not _inside(local, writable):
            found.append(
                f"offsite.repository {local} is outside the paths {where} lets the daemon "
                f"write ({allowed}): its uploads will fail with reason read_only; add "
                f"ReadWritePaths={local} in a drop-in"
            )
        if not _inside(offsite.cache_dir, [*writable, *UNIT_OWN_DIRS]):
            found.append(
                f"offsite.cache_dir {offsite.cache_dir} is outside the paths {where} lets "
                f"the daemon write ({allowed}, and its cache directory /var/cache/t3backupd): "
                f"{offsite.engine} cannot keep its cache there; use the default or add "
                "ReadWritePaths="
            )
        if not _inside(offsite.ledger_dir, [*writable, *UNIT_OWN_DIRS]):
            found.append(
                f"offsite.ledger_dir {offsite.ledger_dir} is outside the paths {where} lets "
                f"the daemon write ({allowed}, and its state directory /var/lib/t3backupd): "
                "published snapshots cannot be recorded, so none is uploaded; use the default "
                "or add ReadWritePaths="
            )
    return found
