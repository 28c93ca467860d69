"""The last known inventory, kept by root across restarts so the metrics are right from
the first scrape while the fresh inventory runs in the background.

One JSON file, `inventory.json`, in the unit's StateDirectory (`$STATE_DIRECTORY`, set by
systemd; without it there is no state file). It is read like hostile input: the directory
and the file must be root's (our euid's), not group/other-writable, reached without a
symbolic link, a regular file of bounded size, and the content must match the schema
exactly; anything else is ignored with one warning (the background inventory then fills
the values in). Each user's entry is checked on its own (`check_entry`): a bad one drops
that user only, with one warning naming them, and `save` leaves out what the loader would
refuse, so one user's values can never cost the others theirs. It is only a cache: what
is on disk always wins when the listing arrives.
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

from t3backupd.core.protocol import printable
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


def check_entry(entry: object, now: float) -> Summary:
    """One user's entry, [snapshots, newest, bytes], as a Summary: the one rule the loader
    and `save` share (so the daemon never writes what it would refuse at the next start).
    Raises ValueError saying what is wrong."""
    if not isinstance(entry, list | tuple) or len(entry) != 3:
        raise ValueError("expected [snapshots, newest, bytes]")
    count, newest, size = entry
    if type(count) is not int or not 0 <= count <= MAX_SNAPSHOTS:
        raise ValueError(f"snapshots {count!r}: expected an integer 0..{MAX_SNAPSHOTS}")
    if type(newest) not in (int, float) or not math.isfinite(newest) or newest < 0:
        raise ValueError(f"newest {newest!r}: expected a time (epoch seconds)")
    if newest > now + MAX_FUTURE_SECONDS:
        raise ValueError(f"newest {newest!r}: in the future")
    if type(size) is not int or not 0 <= size <= MAX_BYTES_PER_SNAPSHOT:
        raise ValueError(f"bytes {size!r}: expected an integer 0..{MAX_BYTES_PER_SNAPSHOT}")
    return (count, float(newest), size)


def parse(data: bytes, dest: str, now: float) -> tuple[dict[str, Summary], dict[str, str]]:
    """The per-user summaries in a state file's bytes, if it was written for `dest`, and
    the entries dropped (user -> what is wrong with their entry): one bad entry costs
    that user only. Raises ValueError (with what is wrong) if the file as a whole is not
    the schema."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(document, dict) or set(document) != {"version", "dest", "users"}:
        raise ValueError("expected keys version, dest, users")
    if document["version"] != VERSION:
        raise ValueError(f"version {document['version']!r}, expected {VERSION}")
    if document["dest"] != dest:
        return {}, {}  # written for another dest: nothing in it applies
    users = document["users"]
    if not isinstance(users, dict):
        raise ValueError("users: expected an object")
    found: dict[str, Summary] = {}
    dropped: dict[str, str] = {}
    for name, entry in users.items():
        try:
            found[name] = check_entry(entry, now)
        except ValueError as error:
            dropped[name] = str(error)
    return found, dropped


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
        summaries, dropped = parse(data, dest, time.time())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        text = f"{error.strerror}" if isinstance(error, OSError) and error.strerror else str(error)
        get_logger().warning("state file ignored", path=path, error=text)
        return {}
    for name, why in dropped.items():
        get_logger().warning(
            "state file entry dropped", path=path, user=printable(name)[:64], error=why
        )
    wanted = set(names)
    return {name: summary for name, summary in summaries.items() if name in wanted}


def save(directory: str | None, dest: str, summaries: Mapping[str, Summary]) -> None:
    """Replace the state file atomically (temp file, fsync, rename). An entry the loader
    would refuse (`check_entry`) is left out and logged; a failure is logged (the state
    file is only a cache); never raises."""
    if directory is None:
        return
    now = time.time()
    users: dict[str, list[int | float]] = {}
    for name, summary in sorted(summaries.items()):
        try:
            users[name] = list(check_entry(summary, now))
        except ValueError as error:
            get_logger().warning("state file entry not saved", user=name, error=str(error))
    document = {"version": VERSION, "dest": dest, "users": users}
    data = json.dumps(document, separators=(",", ":")).encode()
    temp = f".{FILE_NAME}.{os.getpid()}.{threading.get_ident()}.tmp"
    with _write_lock:
        try:
            dir_fd = _open_dir(directory)
            try:
                replace_file(dir_fd, FILE_NAME, temp, data)
            finally:
                os.close(dir_fd)
        except (OSError, ValueError) as error:
            text = str(error.strerror or error) if isinstance(error, OSError) else str(error)
            get_logger().warning("state file not written", directory=directory, error=text)


def replace_file(dir_fd: int, name: str, temp: str, data: bytes) -> None:
    """Replace `name` in the open directory `dir_fd` with `data` atomically: a new 0600
    file `temp` (O_EXCL, never through a link), fsync, rename over `name`. Raises OSError
    (the temp file removed)."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)  # fmt: skip
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.unlink(temp, dir_fd=dir_fd)
        raise
