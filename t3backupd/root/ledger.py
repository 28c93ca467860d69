"""Root's ledger of the snapshots it published: what may go offsite, and its digest.

Root writes an entry (name, size, sha256, when, label) when it accepts a snapshot
worker's publish report, and drops it when that report prunes the name, or when a root
listing no longer shows the name. A listing (the user's worker) only ever removes
entries, never adds one: a file the user planted in `<dest>/<user>`, or a `NAME.sha256`
they rewrote, never becomes something root uploads or checks against.

One JSON file per user, `<user>.json`, in `offsite.ledger_dir` (default
`/var/lib/t3backupd/published`, the unit's StateDirectory), which the daemon and the
root CLI both know from the config. It is trusted like the config: every directory from
`/` down is opened without following a link and must be root's (the invoking user's when
not run as root) and not group/other-writable (a sticky world-writable one such as /tmp
excepted); the ledger directory is created 0700. Files are read like hostile input (ours,
a regular file, bounded, the exact schema, each entry checked on its own) and replaced
atomically (temp file, fsync, rename, fsync of the directory) under an flock of the
directory, so the daemon and a CLI run never lose each other's entries. A refused file
counts as empty (one warning): nothing of that user is uploaded until root publishes
again. Never raises. Without [offsite] it is kept at the default path: the schema guard
and `restore --before-schema` read each snapshot's version from it. Beside it,
`<user>.hold` holds a backwards schema step (see "the backwards-step hold" below).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from t3backupd.core.config import Config
from t3backupd.core.naming import guard_version, parse_name
from t3backupd.core.offsite_config import DEFAULT_LEDGER_DIR
from t3backupd.core.protocol import SnapshotInfo
from t3backupd.root.log import get_logger
from t3backupd.root.statefile import replace_file
from t3backupd.root.trusted import UntrustedFile, check_owner_and_mode, read_own_file_at

VERSION = 1
MAX_ENTRIES = 10_000  # a worker report's bound on snapshots
MAX_BYTES = 4 * 1024 * 1024
MAX_SIZE = 1 << 50
MAX_FUTURE_SECONDS = 24 * 3600  # a clock fault between runs, not a forged far future
PRE_RESTORE_KEYS = ("pre_restore", "pre_restore_bytes", "pre_restore_sha256")
_KEYS = {"name", "size", "sha256", "published_at", "label", "schema_version"}


@dataclass(frozen=True)
class Entry:
    """One snapshot root published, as the worker's accepted report said."""

    name: str
    size: int
    sha256: str
    published_at: float
    label: str | None
    schema_version: int | None = None  # the app's schema in the snapshot (None: unknown)


Entries = dict[str, Entry]


class LedgerRefused(Exception):
    """One line: which path, what is wrong."""


def ledger_dir(config: Config) -> str | None:
    """Where the ledger is: `offsite.ledger_dir`, or its default without [offsite] (the
    schema guard needs root's record of each snapshot's version either way). None run by
    a user for themselves without [offsite]: root's directory is not theirs to write, and
    a warning at every snapshot would be noise (no guard then)."""
    if config.offsite is not None:
        return config.offsite.ledger_dir
    return DEFAULT_LEDGER_DIR if os.geteuid() == 0 else None


# --- reading (hostile input) ---------------------------------------------------------------


def check_entry(value: object, now: float) -> Entry:
    """One entry of the file. Raises ValueError saying what is wrong."""
    if not isinstance(value, dict) or set(value) != _KEYS:
        raise ValueError(f"expected keys {', '.join(sorted(_KEYS))}")
    name, size, digest = value["name"], value["size"], value["sha256"]
    parsed = parse_name(name) if isinstance(name, str) else None
    if parsed is None:
        raise ValueError(f"name {str(name)[:80]!r}: not a snapshot name")
    if type(size) is not int or not 0 < size <= MAX_SIZE:
        raise ValueError(f"{name}: size {size!r}: expected an integer 1..{MAX_SIZE}")
    if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise ValueError(f"{name}: sha256: not a sha256 digest")
    when = value["published_at"]
    if type(when) not in (int, float) or not math.isfinite(when) or when < 0:
        raise ValueError(f"{name}: published_at {when!r}: expected a time (epoch seconds)")
    if when > now + MAX_FUTURE_SECONDS:
        raise ValueError(f"{name}: published_at {when!r}: in the future")
    if value["label"] != parsed.label:
        raise ValueError(f"{name}: label {str(value['label'])[:80]!r}: not the name's label")
    version = value["schema_version"]
    if version is not None and (type(version) is not int or not 0 <= version < 1 << 31):
        raise ValueError(f"{name}: schema_version {version!r}: expected an integer or null")
    return Entry(name, size, digest, float(when), parsed.label, version)


def parse(data: bytes, user: str, now: float) -> tuple[Entries, list[str]]:
    """The entries in a ledger file's bytes and what was wrong with the ones dropped.
    Raises ValueError if the file as a whole is not the schema (or another user's)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"not JSON: {str(error)[:200]}") from None
    if not isinstance(document, dict) or set(document) != {"version", "user", "entries"}:
        raise ValueError("expected keys version, user, entries")
    if type(document["version"]) is not int or document["version"] != VERSION:
        raise ValueError(f"version {str(document['version'])[:20]!r}, expected {VERSION}")
    if document["user"] != user:
        raise ValueError(f"written for user {str(document['user'])[:40]!r}, not {user!r}")
    raw = document["entries"]
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise ValueError(f"entries: expected a list of at most {MAX_ENTRIES}")
    entries: Entries = {}
    dropped: list[str] = []
    for value in raw:
        try:
            entry = check_entry(value, now)
        except ValueError as error:
            dropped.append(str(error))
            continue
        entries[entry.name] = entry
    return entries, dropped


def render(user: str, entries: Entries) -> bytes:
    newest = sorted(entries.values(), key=lambda e: (e.published_at, e.name))[-MAX_ENTRIES:]
    document = {
        "version": VERSION,
        "user": user,
        "entries": [
            {
                "name": e.name,
                "size": e.size,
                "sha256": e.sha256,
                "published_at": e.published_at,
                "label": e.label,
                "schema_version": e.schema_version,
            }
            for e in newest
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _open_dir(directory: str, create: bool) -> int:
    """A descriptor of `directory`, reached from `/` one component at a time without
    following a link, every directory on the way trusted (`check_owner_and_mode`); the
    last one (created 0700 when `create`) not group/other-accessible at all.
    Raises OSError or LedgerRefused."""
    if not directory.startswith("/"):
        raise LedgerRefused(f"{directory}: not an absolute path")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    path = "/"
    try:
        for part in [p for p in directory.split("/") if p]:
            if part in (".", ".."):
                raise LedgerRefused(f"{directory}: '.' or '..' in the path")
            path = os.path.join(path, part)
            if create:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LedgerRefused(f"{path}: a link or not a directory") from None
                raise
            os.close(fd)
            fd = child
            _trust(os.fstat(fd), path, "directory")
        info = os.fstat(fd)
        if info.st_mode & 0o077:
            raise LedgerRefused(f"{path}: readable or writable by group or others (mode 0700)")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _trust(info: os.stat_result, path: str, kind: str) -> None:
    try:
        check_owner_and_mode(path, info, kind)
    except UntrustedFile as error:
        raise LedgerRefused(str(error)) from None


def _file_name(user: str) -> str:
    return f"{user}.json"  # usermap names are login names: [a-z_][a-z0-9_-]*


def _read_bytes(dir_fd: int, name: str, path: str) -> bytes | None:
    """The bytes of root's file `name` in the open directory (None: no such file).
    Raises OSError or LedgerRefused (a link, not root's, readable by others, too large)."""
    try:
        return read_own_file_at(dir_fd, name, path, MAX_BYTES, private=True)
    except UntrustedFile as error:
        raise LedgerRefused(str(error)) from None


def _read(dir_fd: int, path: str, user: str) -> tuple[Entries, bool]:
    """The user's entries in the open directory ({} if there is no file) and whether any
    was dropped. Raises OSError, ValueError or LedgerRefused for a file that is refused as
    a whole."""
    data = _read_bytes(dir_fd, _file_name(user), path)
    if data is None:
        return {}, False
    entries, dropped = parse(data, user, time.time())
    for problem in dropped[:1]:
        get_logger().warning(
            "ledger entry dropped", path=path, user=user, error=problem, count=len(dropped)
        )
    return entries, bool(dropped)


def _warn(event: str, path: str, user: str, error: Exception) -> None:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    get_logger().warning(event, path=path, user=user, error=text)


@contextmanager
def _locked(directory: str, create: bool) -> Iterator[int]:
    """The ledger directory, open and flocked (one writer at a time: daemon and CLI)."""
    fd = _open_dir(directory, create)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the flock


def load(directory: str | None, user: str) -> Entries:
    """The user's entries ({}: none, no ledger, or a refused file: one warning why)."""
    if directory is None:
        return {}
    path = os.path.join(directory, _file_name(user))
    try:
        with _locked(directory, create=False) as fd:
            return _read(fd, path, user)[0]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, LedgerRefused) as error:
        _warn("ledger ignored", path, user, error)
        return {}


def update(directory: str | None, user: str, change: Callable[[Entries], Entries]) -> Entries:
    """Replace the user's entries with `change(entries)` (a refused file counts as empty,
    one warning) and return them; a failure to write is one warning. Never raises."""
    if directory is None:
        return {}
    path = os.path.join(directory, _file_name(user))
    try:
        with _locked(directory, create=True) as fd:
            try:
                old, dropped = _read(fd, path, user)
            except (OSError, ValueError, LedgerRefused) as error:
                _warn("ledger ignored", path, user, error)
                old, dropped = {}, True
            new = change(dict(old))
            if new != old or dropped:  # a refused file or entry is warned of once
                temp = f".{_file_name(user)}.{os.getpid()}.tmp"
                replace_file(fd, _file_name(user), temp, render(user, new))
                os.fsync(fd)
            return new
    except (OSError, LedgerRefused) as error:
        _warn("ledger not written", path, user, error)
        return {}


# --- what root records ----------------------------------------------------------------------


def record_published(
    config: Config, user: str, published: SnapshotInfo | None, pruned: Iterable[str]
) -> None:
    """After root accepted a snapshot report: its snapshot in, what it pruned out. A
    report without a digest (an older worker) records nothing."""
    gone = set(pruned)
    entry = None
    if published is not None and published.sha256 is not None:
        entry = Entry(published.name, published.bytes, published.sha256, time.time(),
                      published.label, published.schema_version)  # fmt: skip
    if entry is None and not gone:
        return

    def change(entries: Entries) -> Entries:
        kept = {name: e for name, e in entries.items() if name not in gone}
        if entry is not None:
            kept[entry.name] = entry
        return kept

    update(ledger_dir(config), user, change)


def record_pre_restore(config: Config, user: str, extra: Mapping[str, str]) -> None:
    """After root accepted an in-place restore's report (ok or failed): the pre-restore
    snapshot it published, if any (the parser checked name, byte count and digest)."""
    name, size, digest = (extra.get(key) for key in PRE_RESTORE_KEYS)
    parsed = parse_name(name) if name is not None else None
    if parsed is None or size is None or digest is None:
        return
    info = SnapshotInfo(name or "", parsed.time.timestamp(), int(size), parsed.label, sha256=digest)
    record_published(config, user, info, [])


def previous_published(entries: Entries) -> Entry | None:
    """The newest snapshot root published with a known schema version, guards aside:
    the last one that verified with the version it has (what a forward step keeps)."""
    known = [
        (parsed.time, e.name, e)
        for e in entries.values()
        if e.schema_version is not None
        and (parsed := parse_name(e.name)) is not None
        and guard_version(parsed.label) is None
    ]
    return max(known, key=lambda item: (item[0], item[1]))[2] if known else None


def record_guard(config: Config, user: str, guard: str, original: Entry) -> None:
    """A schema guard the worker linked from `original`: same bytes, same digest (root's
    record of the original, never the user's), so it goes offsite with its label."""
    parsed = parse_name(guard)
    if parsed is None:
        return
    entry = Entry(guard, original.size, original.sha256, time.time(), parsed.label,
                  original.schema_version)  # fmt: skip
    update(ledger_dir(config), user, lambda entries: {**entries, guard: entry})


def still_present(config: Config, user: str, listed: Iterable[str], listed_at: float) -> Entries:
    """The user's entries whose snapshots a listing (started at `listed_at`) still shows;
    the others are dropped from the ledger (unless published after the listing began).
    The listing is the user's worker's: it can only take entries away, never add one."""
    names = set(listed)

    def change(entries: Entries) -> Entries:
        return {
            name: e for name, e in entries.items() if name in names or e.published_at >= listed_at
        }

    kept = update(ledger_dir(config), user, change)
    return {name: e for name, e in kept.items() if name in names}


# --- the backwards-step hold ----------------------------------------------------------------
# `<user>.hold`: the schema version a user's database went back from, written when a pass
# sees the version go down; while it exists, retention keeps that user's snapshots of that
# version and above. `snapshot --accept-schema-downgrade` removes it. Root's file, beside
# the ledger, read and written the same way.


def _hold_name(user: str) -> str:
    return f"{user}.hold"


def load_hold(config: Config, user: str) -> int | None:
    """The version `user` went back from while the hold stands (None: no hold; a refused
    file is one warning and counts as a hold on nothing)."""
    directory = ledger_dir(config)
    if directory is None:
        return None
    path = os.path.join(directory, _hold_name(user))
    try:
        with _locked(directory, create=False) as fd:
            data = _read_bytes(fd, _hold_name(user), path)
    except FileNotFoundError:
        return None
    except (OSError, LedgerRefused) as error:
        _warn("schema hold ignored", path, user, error)
        return None
    text = data.decode("ascii", "replace").strip() if data is not None else None
    if text is None:
        return None
    if not (text.isdigit() and len(text) <= 9):
        _warn("schema hold ignored", path, user, ValueError("expected a schema version"))
        return None
    return int(text)


def set_hold(config: Config, user: str, version: int | None) -> None:
    """Hold `user`'s snapshots of `version` and above (None: remove the hold). Never raises."""
    directory = ledger_dir(config)
    if directory is None:
        return
    path = os.path.join(directory, _hold_name(user))
    try:
        with _locked(directory, create=True) as fd:
            if version is None:
                with suppress(FileNotFoundError):
                    os.unlink(_hold_name(user), dir_fd=fd)
            else:
                temp = f".{_hold_name(user)}.{os.getpid()}.tmp"
                replace_file(fd, _hold_name(user), temp, f"{version}\n".encode())
            os.fsync(fd)
    except (OSError, LedgerRefused) as error:
        _warn("schema hold not written", path, user, error)


def names_from_version(entries: Entries, version: int) -> tuple[str, ...]:
    """The user's published snapshots (guards aside) of schema `version` and above."""
    return tuple(
        sorted(
            e.name
            for e in entries.values()
            if e.schema_version is not None
            and e.schema_version >= version
            and guard_version(e.label) is None
        )
    )
