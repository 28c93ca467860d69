"""User-side snapshot operations. Runs only inside the worker, as the owning user.

Every path here is under the user's home or the user's backup directory, so the code
never runs as root. Each function does one step; the job modules sequence them.

The joins of helper threads here (hash, fsync, flusher) have no timeout on purpose: they
run in the job thread of the user's own process, whose deadline is kept by the worker's
main thread (`worker/main.py` leaves with `os._exit` at the deadline or on SIGTERM) and,
above it, by the root side (pidfd deadline, SIGKILL, then `worker_stuck`). A wait here can
only hold up this user's own worker.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from urllib.parse import quote

from t3backupd.core.naming import (
    CHECKSUM_SUFFIX,
    LOCK_NAME,
    SQLITE_SIDECARS,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    SnapshotName,
    format_name,
    is_temp_name,
    parse_name,
)
from t3backupd.core.protocol import (
    MAX_SCHEMA_VERSION,
    FailureReason,
    Reason,
    SchemaSource,
    SnapshotInfo,
)

# How far ahead of the clock an existing snapshot name may be and still push a new
# snapshot's name past it (see publish()).
NAME_SLACK_SECONDS = 300
# The source is mapped read-only: fewer syscalls and copies for the one-pass backup.
SOURCE_MMAP_BYTES = 1 << 34
# The copy is written with synchronous=OFF and written back by us in FLUSH_STEP_BYTES
# steps, at most two of them in flight: the app's own commit fsyncs share the disk's queue
# with us and wait behind whatever we have queued, so that is kept to ~512 KiB. (Starting
# writeback of all the copy made in each 20 ms poll queued 10-20 MiB at a time: a 200/s
# writer's p99 was 2-3x idle; bench/RESULTS.md, issue 23.) See DirtyFlusher.
FLUSH_STEP_BYTES = 256 << 10
FLUSH_POLL_SECONDS = 0.02
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
# The snapshot yields CPU and disk to the live app (bench/RESULTS.md has the numbers).
# Best-effort class at its lowest level, not the idle class: idle-class I/O waits behind
# every other request (journal commits included) and halved the fleet pass's gain from
# concurrency 2 in the benchmark.
WORKER_NICE = 10
IOPRIO_CLASS_BE = 2
IOPRIO_LOWEST_LEVEL = 7
IOPRIO_WHO_PROCESS = 1
IOPRIO_SET_SYSCALL = {"x86_64": 251, "aarch64": 30}


class StepFailed(Exception):
    """A snapshot step failed for a reason the report names (timeout, permission ...)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TempFiles:
    """Temp paths this process created, so a SIGTERM handler can remove them.

    Once `close`d (the worker is stopping) no temp can be added: `add` removes the path it
    is given and raises, so the job thread, which runs on until it notices, cannot leave a
    new temp behind. Paths stay listed after removal: a later `remove_all` also removes a
    file the job thread recreated under the same name (VACUUM INTO creates its target).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._closed = False

    def add(self, path: str) -> None:
        with self._lock:
            if not self._closed:
                self._paths.add(path)
                return
        _unlink_with_sidecars(path)
        raise StepFailed("timeout", "stopping: no new temp file")

    def discard(self, path: str) -> None:
        with self._lock:
            self._paths.discard(path)

    def close(self) -> None:
        """Refuse every later `add`, and remove every temp made so far."""
        with self._lock:
            self._closed = True
        self.remove_all()

    def remove_all(self) -> None:
        with self._lock:
            paths = list(self._paths)
        for path in paths:
            _unlink_with_sidecars(path)

    def remove(self, path: str) -> None:
        """Remove this one temp (and its sidecars), leaving the others."""
        _unlink_with_sidecars(path)
        self.discard(path)


def _unlink_with_sidecars(path: str) -> None:
    for suffix in SQLITE_SIDECARS:
        with suppress(FileNotFoundError):
            os.unlink(path + suffix)


def classify_sqlite_error(error: sqlite3.Error) -> FailureReason:
    """Map an SQLite error to a failure reason."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    # IOERR_SHMSIZE: growing a -shm file failed, which SQLite documents as most likely
    # ENOSPC (seen when the copy's switch out of WAL mode finds the disk full).
    if primary == sqlite3.SQLITE_FULL or code == sqlite3.SQLITE_IOERR_SHMSIZE:
        return "disk_space"
    if primary in (sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH, sqlite3.SQLITE_READONLY):
        return "permission"
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_INTERRUPT):
        return "timeout"
    return "sqlite_error"


def classify_os_error(error: OSError) -> FailureReason:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_space"
    if error.errno in (errno.EACCES, errno.EPERM, errno.ELOOP, errno.EROFS):
        return "permission"
    return "sqlite_error"


@contextmanager
def user_dir_lock(dest_dir: str) -> Iterator[None]:
    """Hold the per-user lock (`<dest>/<user>/.lock`) for the duration.

    Raises StepFailed("busy") if another worker holds it.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(dest_dir, LOCK_NAME), flags, 0o600)
    except OSError as error:
        raise StepFailed(classify_os_error(error), f"cannot open lock: {error}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StepFailed("busy", "another worker holds this user's lock") from None
        yield
    finally:
        os.close(fd)


def secure_user_dir(dest_dir: str) -> None:
    """Keep the user's backup directory at 0700 (we own it; the root parent does not
    change the mode of a directory it does not own)."""
    if stat.S_IMODE(os.stat(dest_dir).st_mode) != 0o700:
        os.chmod(dest_dir, 0o700)


def remove_stale_temps(dest_dir: str) -> list[str]:
    """Remove in-progress files left by a crashed worker (caller holds the lock)."""
    removed = []
    with os.scandir(dest_dir) as entries:
        for entry in entries:
            # A directory with a temp-like name is not ours (we only make files): leave it.
            if is_temp_name(entry.name) and not entry.is_dir(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    removed.append(entry.name)
                except FileNotFoundError:
                    pass
    return removed


def source_size(source: str) -> int:
    """Bytes of the database and its WAL.

    Raises StepFailed for a source that is not a non-empty regular file, or FileNotFoundError.
    """
    try:
        info = os.stat(source)
    except PermissionError as error:
        raise StepFailed("permission", f"cannot read source: {error.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise StepFailed("sqlite_error", "source is a directory, not a database")
    if not stat.S_ISREG(info.st_mode):
        raise StepFailed("sqlite_error", "source is not a regular file")
    if info.st_size == 0:
        raise StepFailed("sqlite_error", "source is an empty (0-byte) file")
    # stat() works on files we may not read (a link to /etc/shadow); SQLite would then
    # say only "unable to open database file". Name the real reason. (Done before SQLite
    # opens the file: closing an fd drops every POSIX lock this process holds on it.)
    try:
        os.close(os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except PermissionError as error:
        raise StepFailed("permission", f"cannot read source: {error.strerror}") from None
    try:
        wal = os.stat(source + "-wal").st_size
    except OSError:
        wal = 0
    return info.st_size + wal


def check_free_space(dest_dir: str, needed: int, min_free_bytes: int) -> None:
    """Raises StepFailed("disk_space") if a copy of `needed` bytes would leave too little."""
    info = os.statvfs(dest_dir)
    free = info.f_bavail * info.f_frsize
    if free - needed < min_free_bytes:
        raise StepFailed(
            "disk_space",
            f"{free} bytes free; a {needed}-byte copy would leave less than "
            f"min_free_bytes={min_free_bytes}",
        )


def create_temp(dest_dir: str) -> str:
    """Create an empty, hidden, 0600 temp file (O_EXCL) in `dest_dir`; return its path."""
    path = os.path.join(dest_dir, f"{TEMP_PREFIX}{os.urandom(8).hex()}{TEMP_SUFFIX}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(fd)
    return path


def _source_uri(source: str) -> str:
    # Read-only: we never write, and a read-only connection never checkpoints on close.
    return f"file:{quote(source)}?mode=ro"


def open_source(source: str, timeout: float) -> sqlite3.Connection:
    connection = sqlite3.connect(
        _source_uri(source), uri=True, timeout=timeout, isolation_level=None
    )
    connection.execute(f"PRAGMA mmap_size={SOURCE_MMAP_BYTES}")
    return connection


def lower_priority() -> None:
    """Make the calling thread (and the threads it starts later) yield CPU and disk to the
    live app: nice +10 and the lowest best-effort I/O priority. Best effort: on a kernel
    or architecture without ioprio_set, only the nice value changes.
    """
    with suppress(OSError):
        os.nice(WORKER_NICE)
    number = IOPRIO_SET_SYSCALL.get(os.uname().machine)
    if number is None:
        return
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        # who=0: the calling thread; threads started afterwards inherit it.
        priority = (IOPRIO_CLASS_BE << 13) | IOPRIO_LOWEST_LEVEL
        libc.syscall(number, IOPRIO_WHO_PROCESS, 0, priority)


def _sync_file_range() -> Callable[[int, int, int, int], None] | None:
    """libc's sync_file_range(2) (Linux), or None. The callable raises OSError."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def call(fd: int, offset: int, count: int, flags: int) -> None:
        if function(fd, offset, count, flags) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))

    return call


class DirtyFlusher:
    """While a copy writes `path`, push it to the disk in FLUSH_STEP_BYTES steps.

    Without this the whole copy sits dirty in the page cache (vm.dirty_ratio is a share
    of RAM) and the fsync before publishing sends it to the disk in one burst, during
    which the app's own commit fsyncs queue behind it. Each step starts writeback of one
    FLUSH_STEP_BYTES range (sync_file_range WRITE, no journal commit) and then waits for
    the step before it, so never more than two steps are in flight; the I/O is submitted
    by this thread, with the worker's (low) I/O priority. What the copy has not yet
    written back when it ends is written the same way by `write_back` (the seal). Where
    sync_file_range is missing, fdatasync does the job coarser. Only our own temp file
    is touched; the fsync before publishing is still what makes the copy durable.
    """

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flusher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        steps = _Steps(self._fd)
        try:
            while not self._stop.wait(FLUSH_POLL_SECONDS):
                steps.follow(os.fstat(self._fd).st_size, self._stop)
        except OSError:
            return  # e.g. ENOSPC: the copy itself reports it; the final fsync re-checks

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)


class _Steps:
    """Writeback of one file in FLUSH_STEP_BYTES steps, at most two in flight."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._range = _sync_file_range()
        self.started = 0  # writeback started up to here
        self._previous = 0  # ... and of the step before, which the next step waits for

    def follow(self, size: int, stop: threading.Event | None = None) -> None:
        """Start writeback of every whole step below `size` (all of it when `stop` is
        None: the end of the file), each after the step before it is written."""
        whole = size if stop is None else size - size % FLUSH_STEP_BYTES
        while self.started < whole and (stop is None or not stop.is_set()):
            if self._range is None:
                os.fdatasync(self._fd)
                self.started = whole
                return
            end = min(whole, self.started + FLUSH_STEP_BYTES)
            self._range(self._fd, self.started, end - self.started, SYNC_FILE_RANGE_WRITE)
            if self.started > self._previous:  # (a count of 0 would mean "to the end")
                wait = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE
                wait |= SYNC_FILE_RANGE_WAIT_AFTER
                self._range(self._fd, self._previous, self.started - self._previous, wait)
            self._previous, self.started = self.started, end


def write_back(path: str) -> None:
    """Make `path` durable: its dirty pages written in paced steps (see DirtyFlusher;
    pages already written cost nothing), then fsync, which also writes its metadata."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _Steps(fd).follow(os.fstat(fd).st_size)
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_database(
    source: str, target: str, method: str, timeout: float, connections: list[sqlite3.Connection]
) -> None:
    """Copy `source` into the empty file `target` in one consistent read transaction.

    The copy is not yet durable: the caller fsyncs `target` (`seal_and_verify`) before
    publishing it. `connections` receives the open connections so a signal handler can
    interrupt them. Raises sqlite3.Error on failure.
    """
    src = open_source(source, timeout)
    connections.append(src)
    flusher = DirtyFlusher(target)
    try:
        if method == "vacuum":
            src.execute("VACUUM INTO ?", (target,))
            return
        dst = sqlite3.connect(target, isolation_level=None)
        connections.append(dst)
        try:
            # A temp file nobody else sees: no journal, no syncs of SQLite's own (half a
            # copy is deleted, never published; durability is our fsync before publish).
            dst.execute("PRAGMA synchronous=OFF")
            # pages=-1: one step under one read lock, so it never restarts on app writes.
            src.backup(dst, pages=-1)
            # The copy keeps WAL mode in its header; a snapshot is a single self-contained
            # file, so switch it to rollback journal (no -wal/-shm beside snapshots).
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
        flusher.close()


def fsync_path(path: str, directory: bool = False) -> None:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_fd(fd: int) -> str:
    """sha256 (hex) of the open file `fd`, read from its current offset; `fd` stays open."""
    with os.fdopen(fd, "rb", closefd=False) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_file(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def integrity_problems(path: str, mode: str) -> list[str]:
    """Run quick_check ("quick") or integrity_check ("full") on a snapshot file, plus a
    schema sanity check. Returns the problems found (empty = good).

    Opened read-only and immutable: the file is ours and not being written.
    """
    uri = f"file:{quote(path)}?mode=ro&immutable=1"
    try:
        connection = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            # Mapped: the check reads every page once, straight from the page cache.
            connection.execute(f"PRAGMA mmap_size={SOURCE_MMAP_BYTES}")
            tables = connection.execute(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"
            ).fetchone()[0]
            problems = [] if tables else ["database has no tables"]
            if mode != "none":
                pragma = "quick_check" if mode == "quick" else "integrity_check"
                rows = connection.execute(f"PRAGMA {pragma}(20)").fetchall()
                problems += [str(row[0]) for row in rows if row[0] != "ok"]
            return problems
        finally:
            connection.close()
    except sqlite3.Error as error:
        return [str(error)]


def schema_version(path: str, source: SchemaSource) -> int | None:
    """The app's schema version in a snapshot file we just wrote (never the live
    database: the snapshot is what a restore brings back). "migrations": the highest
    `effect_sql_migrations.migration_id` (T3 Code's migration table); "user_version":
    SQLite's PRAGMA user_version; "auto": the first when the table has rows, else the
    second. None when unknown or out of range."""
    uri = f"file:{quote(path)}?mode=ro&immutable=1"
    try:
        connection = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            version: object = None
            if source != "user_version":
                with suppress(sqlite3.OperationalError):  # no such table
                    version = connection.execute(
                        "SELECT max(migration_id) FROM effect_sql_migrations"
                    ).fetchone()[0]
            if version is None and source != "migrations":
                version = connection.execute("PRAGMA user_version").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error:
        return None
    if type(version) is not int or not 0 <= version <= MAX_SCHEMA_VERSION:
        return None
    return version


def seal_and_verify(path: str, mode: str) -> tuple[list[str], str]:
    """fsync, integrity check and sha256 of a fresh copy, all three at once.

    They are independent (the check and the hash read the page cache, the fsync writes
    it out), so the pipeline costs the slowest of them, not their sum. Returns what
    `verify_and_hash` returns once the file is also durable. Raises OSError if the
    fsync fails (then nothing may be published).
    """
    errors: list[OSError] = []

    def sync_it() -> None:
        try:
            write_back(path)
        except OSError as error:
            errors.append(error)

    syncer = threading.Thread(target=sync_it, name="fsync")
    syncer.start()
    try:
        problems, digest = verify_and_hash(path, mode)
    finally:
        syncer.join()
    if errors:
        raise errors[0]
    return problems, digest


def verify_and_hash(path: str, mode: str) -> tuple[list[str], str]:
    """Integrity check and sha256 of `path`, run in parallel (both release the GIL)."""
    result: dict[str, str] = {}

    def hash_it() -> None:
        result["digest"] = sha256_file(path)

    hasher = threading.Thread(target=hash_it, name="sha256")
    hasher.start()
    problems = integrity_problems(path, mode)
    hasher.join()
    return problems, result["digest"]


def publish(
    dest_dir: str,
    temp: str,
    when: datetime,
    label: str | None,
    digest: str,
    temps: TempFiles | None = None,
) -> str:
    """Give the verified `temp` its snapshot name, with `NAME.sha256` beside it.

    The checksum is written (and fsynced) to a temp file and renamed into place just
    before the snapshot is linked to its name, so a full disk fails the publish with
    no snapshot visible, and a published snapshot always has its checksum. Never
    replaces an existing snapshot: `link()` fails on an existing name, and two passes
    within one second take the next free second. Returns the published name. The caller
    holds the user's lock.
    """
    # A new snapshot must also sort as the newest: when passes come faster than one a
    # second, a name freed by pruning could otherwise be reused for newer content. Only a
    # nearby newest name moves us on (a far-future name from a wrong clock must not drag
    # every later snapshot's time along with it).
    newest = max((parsed.time for parsed, _ in scan(dest_dir)), default=None)
    if newest is not None and when <= newest < when + timedelta(seconds=NAME_SLACK_SECONDS):
        when = newest + timedelta(seconds=1)
    for offset in range(3600):
        name = format_name(when + timedelta(seconds=offset), label)
        final = os.path.join(dest_dir, name)
        if os.path.lexists(final):
            continue
        # The checksum takes its name first: a stop between the two renames leaves at
        # worst a checksum without a snapshot (harmless), never a snapshot without one.
        write_checksum(dest_dir, name, digest, temps)
        try:
            os.link(temp, final)
        except FileExistsError:
            continue  # only the user could have raced us; their file and ours stay
        os.unlink(temp)
        fsync_path(dest_dir, directory=True)
        return name
    raise StepFailed("sqlite_error", "no free snapshot name within an hour of now")


def write_checksum(dest_dir: str, name: str, digest: str, temps: TempFiles | None) -> None:
    """`NAME.sha256` for snapshot `name`: written and fsynced to a temp file, then renamed."""
    checksum_temp = create_temp(dest_dir)
    if temps is not None:
        temps.add(checksum_temp)
    try:
        # Opened without O_CREAT: a temp removed by a stop is not made again.
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        with open(os.open(checksum_temp, flags), "w", encoding="ascii") as handle:
            handle.write(f"{digest}  {name}\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        with suppress(FileNotFoundError):
            os.unlink(checksum_temp)
        raise
    os.rename(checksum_temp, os.path.join(dest_dir, name + CHECKSUM_SUFFIX))
    if temps is not None:
        temps.discard(checksum_temp)


def keep_as_guard(
    dest_dir: str, name: str, guard: str, digest: str, temps: TempFiles | None
) -> bool:
    """Hard-link snapshot `name` to `guard` with its own checksum (root's `digest`).
    False when `name` is no longer a regular file or `guard` already exists (kept)."""
    source = os.path.join(dest_dir, name)
    try:
        if not stat.S_ISREG(os.lstat(source).st_mode):
            return False
    except FileNotFoundError:
        return False
    if os.path.lexists(os.path.join(dest_dir, guard)):
        return False
    write_checksum(dest_dir, guard, digest, temps)
    try:
        os.link(source, os.path.join(dest_dir, guard), follow_symlinks=False)
    except FileExistsError:
        return False
    fsync_path(dest_dir, directory=True)
    return True


def scan(dest_dir: str) -> list[tuple[SnapshotName, os.stat_result]]:
    """Snapshot-named entries of `dest_dir` with their lstat (links are never followed)."""
    found = []
    with os.scandir(dest_dir) as entries:
        for entry in entries:
            parsed = parse_name(entry.name)
            if parsed is not None:
                found.append((parsed, entry.stat(follow_symlinks=False)))
    found.sort(key=lambda item: (item[0].time, item[0].filename))
    return found


def inventory(dest_dir: str) -> list[SnapshotInfo]:
    """Regular snapshot files in `dest_dir`, oldest first."""
    names = set(os.listdir(dest_dir))
    return [
        SnapshotInfo(
            name=parsed.filename,
            time=parsed.time.timestamp(),
            bytes=info.st_size,
            label=parsed.label,
            has_checksum=parsed.checksum_filename in names,
        )
        for parsed, info in scan(dest_dir)
        if stat.S_ISREG(info.st_mode)
    ]


def prune(dest_dir: str, expired: list[SnapshotName]) -> list[str]:
    """Delete expired snapshots and their checksums. unlink() never follows a link."""
    removed = []
    for snapshot in expired:
        for name in (snapshot.filename, snapshot.checksum_filename):
            try:
                os.unlink(os.path.join(dest_dir, name))
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                break  # a directory named like a snapshot is not ours to delete
        removed.append(snapshot.filename)
    if removed:
        fsync_path(dest_dir, directory=True)
    return removed


# Bounds of one directory-usage walk: a user may fill their directory with anything.
USAGE_MAX_ENTRIES = 100_000
USAGE_MAX_SECONDS = 2.0


def dir_usage(dest_dir: str) -> int:
    """Bytes on disk (st_blocks) of `dest_dir` and everything under it, never following a
    link or leaving its file system; at most USAGE_MAX_ENTRIES entries and
    USAGE_MAX_SECONDS (then what was counted: a lower bound). 0 if it cannot be read."""
    deadline = time.monotonic() + USAGE_MAX_SECONDS
    try:
        top = os.lstat(dest_dir)
    except OSError:
        return 0
    total = top.st_blocks * 512
    pending = [dest_dir]
    entries = 0
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    entries += 1
                    if entries > USAGE_MAX_ENTRIES or time.monotonic() > deadline:
                        return total
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode) and info.st_dev == top.st_dev:
                        pending.append(entry.path)
        except OSError:
            continue
    return total
