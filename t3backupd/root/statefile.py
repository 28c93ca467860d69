"""The last known inventory, kept by root across restarts so the metrics are right from
the first scrape while the fresh inventory runs in the background.

One JSON file, `inventory.json`, in the unit's StateDirectory (`$STATE_DIRECTORY`, set by
systemd; without it there is no state file). It is read like hostile input: the directory
and the file must be root's (our euid's), not group/other-writable, reached without a
symbolic link, a regular file of bounded size, and the content must match the schema
exactly; anything else is ignored with one warning (the background inventory then fills
the values in). It is only a cache: what is on disk always wins when the listing arrives.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from t3backupd.root.log import get_logger

FILE_NAME = "inventory.json"
VERSION = 1
MAX_BYTES = 16 * 1024 * 1024
MAX_FUTURE_SECONDS = 24 * 3600  # a clock fault between runs, not a forged far future
MAX_SNAPSHOTS = 1_000_000
MAX_BYTES_PER_SNAPSHOT = 1 << 50

Summary = tuple[int, float, int]  # snapshots kept, newest snapshot time, its bytes

_write_lock = threading.Lock()


def state_directory(environ: Mapping[str, str]) -> str | None:
    """The first absolute path in `$STATE_DIRECTORY` (systemd's StateDirectory=), or None."""
    first = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return first if first.startswith("/") else None


def _open_dir(directory: str) -> int:
    """An O_NOFOLLOW descriptor of `directory`, checked. Raises OSError / ValueError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check(os.fstat(fd), directory, stat.S_ISDIR)
    except ValueError:
        os.close(fd)
        raise
    return fd


def _check(info: os.stat_result, path: str, kind: Any) -> None:
    if not kind(info.st_mode):
        raise ValueError(f"{path}: not the expected file type")
    if info.st_uid != os.geteuid():
        raise ValueError(f"{path}: owned by uid {info.st_uid}, not {os.geteuid()}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"{path}: group/other-writable")


def parse(data: bytes, dest: str, now: float) -> dict[str, Summary]:
    """The per-user summaries in a state file's bytes, if it was written for `dest`.
    Raises ValueError (with what is wrong) for anything but the exact schema."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(document, dict) or set(document) != {"version", "dest", "users"}:
        raise ValueError("expected keys version, dest, users")
    if document["version"] != VERSION:
        raise ValueError(f"version {document['version']!r}, expected {VERSION}")
    if document["dest"] != dest:
        return {}  # written for another dest: nothing in it applies
    users = document["users"]
    if not isinstance(users, dict):
        raise ValueError("users: expected an object")
    found: dict[str, Summary] = {}
    for name, entry in users.items():
        if not isinstance(entry, list) or len(entry) != 3:
            raise ValueError(f"users.{name!r}: expected [snapshots, newest, bytes]")
        count, newest, size = entry
        if (
            type(count) is not int
            or not 0 <= count <= MAX_SNAPSHOTS
            or type(newest) not in (int, float)
            or not math.isfinite(newest)
            or not 0 <= newest <= now + MAX_FUTURE_SECONDS
            or type(size) is not int
            or not 0 <= size <= MAX_BYTES_PER_SNAPSHOT
        ):
            raise ValueError(f"users.{name!r}: value out of range")
        found[name] = (count, float(newest), size)
    return found


def load(directory: str | None, dest: str, names: Iterable[str]) -> dict[str, Summary]:
    """The last known summaries of the users in `names` ({} if there is no usable state
    file; a refused one is logged once with why)."""
    if directory is None:
        return {}
    path = os.path.join(directory, FILE_NAME)
    try:
        dir_fd = _open_dir(directory)
        try:
            fd = os.open(FILE_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=dir_fd)  # fmt: skip
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            _check(info, path, stat.S_ISREG)
            if info.st_size > MAX_BYTES:
                raise ValueError(f"{path}: larger than {MAX_BYTES} bytes")
            data = file.read(MAX_BYTES + 1)
        summaries = parse(data, dest, time.time())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        text = f"{error.strerror}" if isinstance(error, OSError) and error.strerror else str(error)
        get_logger().warning("state file ignored", path=path, error=text)
        return {}
    wanted = set(names)
    return {name: summary for name, summary in summaries.items() if name in wanted}


def save(directory: str | None, dest: str, summaries: Mapping[str, Summary]) -> None:
    """Replace the state file atomically (temp file, fsync, rename). A failure is logged
    (the state file is only a cache); never raises."""
    if directory is None:
        return
    document = {
        "version": VERSION,
        "dest": dest,
        "users": {name: list(summary) for name, summary in sorted(summaries.items())},
    }
    data = json.dumps(document, separators=(",", ":")).encode()
    temp = f".{FILE_NAME}.{os.getpid()}.{threading.get_ident()}.tmp"
    with _write_lock:
        try:
            dir_fd = _open_dir(directory)
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)  # fmt: skip
                try:
                    with os.fdopen(fd, "wb") as file:
                        file.write(data)
                        file.flush()
                        os.fsync(file.fileno())
                    os.rename(temp, FILE_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except BaseException:
                    os.unlink(temp, dir_fd=dir_fd)
                    raise
            finally:
                os.close(dir_fd)
        except (OSError, ValueError) as error:
            text = str(error.strerror or error) if isinstance(error, OSError) else str(error)
            get_logger().warning("state file not written", directory=directory, error=text)
