"""Worker job "restore", run as the user: to a new file (`--to`) or into the live database.

The root side (`t3backupd.root.restore`) runs this twice for `--in-place` from a local
snapshot: a check-only run (choose, verify, look for processes holding the database),
then, after a `pre-restore` snapshot, the real one on the exact snapshot chosen. From
offsite, one run receives the copy's bytes on a pipe, verifies them in a temp and takes
that same in-place path with the temp as its source.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import sqlite3
import stat
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import quote

from t3backupd.core.errors import SnapshotNotFound, UsageError
from t3backupd.core.naming import TEMP_PREFIX, TEMP_SUFFIX, SnapshotName, parse_name
from t3backupd.core.protocol import (
    Reason,
    Report,
    RestoreSpec,
    SnapshotInfo,
    VerifyResult,
    printable,
)
from t3backupd.core.selection import (
    PRE_RESTORE_LABEL,
    RESTORABLE_OUTCOMES,
    SnapshotRequest,
    describe_holders,
    parse_snapshot_request,
    pick_snapshot,
)
from t3backupd.worker import files as ops
from t3backupd.worker.job import Job
from t3backupd.worker.verify import Checked, check_snapshot, open_snapshot, same_file

# The app's setting: the WAL is truncated back to this after our checkpoint.
APP_JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
APP_BUSY_TIMEOUT_SECONDS = 5.0


def _read_command(pid: str) -> str:
    for name, separator in (("cmdline", b"\0"), ("comm", b"")):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as handle:
                raw = handle.read(4096)
        except OSError:
            continue
        text = raw.replace(separator, b" ").decode("utf-8", "replace").strip() if separator else ""
        text = text or raw.decode("utf-8", "replace").strip()
        if text:
            return printable(text)
    return "?"


def find_holders(paths: Sequence[str]) -> list[tuple[int, str]]:
    """(pid, command) of processes with any of `paths` open, found in /proc/*/fd.

    Run as the user, this sees exactly the user's own processes (the kernel hides other
    users' fd tables) -- which is the point: those are the ones that could write the
    database. Files are matched by (device, inode), so any path to them counts.
    """
    wanted = set()
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            continue
        wanted.add((info.st_dev, info.st_ino))
    if not wanted:
        return []
    own = os.getpid()
    holders = []
    for pid in sorted((name for name in os.listdir("/proc") if name.isdigit()), key=int):
        if int(pid) == own:
            continue
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # another user's process, or gone
            continue
        for descriptor in descriptors:
            try:
                info = os.stat(f"/proc/{pid}/fd/{descriptor}")
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in wanted:
                holders.append((int(pid), _read_command(pid)))
                break
    return holders


def _info(parsed: SnapshotName, checked: Checked) -> SnapshotInfo:
    return SnapshotInfo(
        name=parsed.filename,
        time=parsed.time.timestamp(),
        bytes=checked.size,
        label=parsed.label,
        has_checksum=checked.result.outcome != "missing_checksum",
    )


def _choose_and_verify(
    dest_dir: str, request: SnapshotRequest
) -> tuple[SnapshotName, Checked, SnapshotName | None]:
    """The snapshot chosen, its check, and the future-dated one skipped for it (if any).
    Raises StepFailed("not_found") or StepFailed("verify_failed")."""
    entries = [(parsed, stat.S_ISREG(info.st_mode)) for parsed, info in ops.scan(dest_dir)]
    try:
        choice = pick_snapshot(entries, request, datetime.now(UTC))
    except SnapshotNotFound as error:
        raise ops.StepFailed("not_found", str(error)) from None
    parsed = choice.snapshot
    checked = check_snapshot(dest_dir, parsed.filename, "quick")
    if checked is None:
        raise ops.StepFailed("not_found", f"{parsed.filename} disappeared")
    if checked.result.outcome not in RESTORABLE_OUTCOMES:
        raise ops.StepFailed(
            "verify_failed",
            f"{parsed.filename}: {checked.result.outcome.replace('_', ' ')}: "
            f"{checked.result.detail}; refusing to restore it",
        )
    return parsed, checked, choice.skipped


def _copy_fd(source: int, target: int) -> int:
    """Copy all of `source` to `target` in the kernel where possible; return bytes."""
    total = 0
    while True:
        try:
            sent = os.sendfile(target, source, total, 1 << 30)
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.ENOSYS) or total:
                raise
            break
        if sent == 0:
            return total
        total += sent
    while chunk := os.pread(source, 1 << 20, total):
        os.write(target, chunk)
        total += len(chunk)
    return total


def _refuse_existing(path: str) -> None:
    """Refuse early (before any copy) if `path` exists (never overwritten). StepFailed."""
    if os.path.lexists(path):
        raise ops.StepFailed(
            "exists", f"{path} already exists; restore never overwrites, choose a new path"
        )
    if not os.path.isdir(os.path.dirname(path) or "/"):
        raise ops.StepFailed("not_found", f"directory of {path} does not exist")


def _create_temp_beside(path: str) -> tuple[str, int]:
    """A hidden 0600 temp file (O_EXCL, never through a link) in `path`'s directory:
    the copy is written there and only renamed to `path` once verified, so a killed
    worker never leaves a truncated file at the final name. Raises StepFailed."""
    directory = os.path.dirname(path) or "/"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    temp = os.path.join(directory, f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}")
    try:
        fd = os.open(temp, flags, 0o600)
    except FileNotFoundError:
        raise ops.StepFailed("not_found", f"directory of {path} does not exist") from None
    except OSError as error:
        raise ops.StepFailed(
            ops.classify_os_error(error), f"cannot create a file in {directory}: {error.strerror}"
        ) from None
    os.fchmod(fd, 0o600)
    return temp, fd


def _publish_no_replace(temp: str, path: str) -> None:
    """Give the verified temp its final name, never replacing an existing `path`: a hard
    link (fails if `path` exists) then unlink of the temp; where the file system has no
    hard links, a rename after a last existence check. Raises StepFailed."""
    try:
        os.link(temp, path, follow_symlinks=False)
    except FileExistsError:
        raise ops.StepFailed(
            "exists", f"{path} appeared during the restore; restore never overwrites"
        ) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise ops.StepFailed(
                ops.classify_os_error(error), f"cannot create {path}: {error.strerror}"
            ) from None
        _refuse_existing(path)
        os.rename(temp, path)
        return
    os.unlink(temp)


def _write_verified(
    temp: str, target_fd: int, fill: Callable[[int], int], expected: str | None, differs: str
) -> int:
    """Write a copy into the temp `temp` (open as `target_fd`, closed here) with `fill`
    (returns the bytes written), fsync it, and verify it: still the file we created,
    quick_check ok, sha256 equal to `expected`. Returns the bytes. Raises StepFailed."""
    try:
        written = fill(target_fd)
        os.fsync(target_fd)
        target_info = os.fstat(target_fd)
    finally:
        os.close(target_fd)
    if not same_file(temp, (target_info.st_dev, target_info.st_ino)):
        raise ops.StepFailed("verify_failed", f"{temp} was replaced while being written")
    problems, digest = ops.verify_and_hash(temp, "quick")
    if digest != expected or problems:
        why = "; ".join(problems[:3]) or differs
        raise ops.StepFailed("verify_failed", f"restored copy failed verification: {why}")
    return written


def _copy_to_target(
    job: Job, target: str, fill: Callable[[int], int], expected: str | None, differs: str
) -> int:
    """`--to`: write and verify the copy in a hidden temp beside `target`, then give it
    that name (never replacing a file). Returns the bytes written. Raises StepFailed."""
    _refuse_existing(target)
    temp, target_fd = _create_temp_beside(target)
    job.temps.add(temp)
    try:
        written = _write_verified(temp, target_fd, fill, expected, differs)
        _publish_no_replace(temp, target)
        ops.fsync_path(os.path.dirname(target) or "/", directory=True)
    except BaseException:
        job.temps.remove_all()
        raise
    job.temps.discard(temp)
    return written


def _restore_copy(job: Job, spec: RestoreSpec, parsed: SnapshotName, checked: Checked) -> Report:
    """Write the verified snapshot to `spec.target`, then verify the copy."""
    target = spec.target

    def fill(target_fd: int) -> int:
        source_fd, info = open_snapshot(os.path.join(spec.dest_dir, parsed.filename))
        try:
            if (info.st_dev, info.st_ino) != checked.identity:
                raise ops.StepFailed("verify_failed", f"{parsed.filename} changed after check")
            return _copy_fd(source_fd, target_fd)
        finally:
            os.close(source_fd)

    written = _copy_to_target(
        job, target, fill, checked.digest, "sha256 of the copy differs from the snapshot's"
    )
    return Report(
        action="restore",
        status="ok",
        message=(
            f"wrote {written} bytes to {target} (mode 0600); sha256 matches the snapshot, "
            "quick_check ok"
        ),
        snapshot=_info(parsed, checked),
        duration_s=round(job.elapsed(), 6),
        verified=(checked.result,),
        extra={"restored_from": parsed.filename, "target": target},
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _insert_columns(db: sqlite3.Connection, table: str) -> str:
    """The column list to copy `table` with: ordinary columns (no generated or hidden
    ones), plus `rowid` when the table has one that no INTEGER PRIMARY KEY aliases."""
    info = db.execute(f"PRAGMA src.table_xinfo({_quoted(table)})").fetchall()
    columns = [_quoted(row[1]) for row in info if row[6] == 0]
    keys = [row for row in info if row[5] > 0]
    alias = len(keys) == 1 and str(keys[0][2]).upper() == "INTEGER"
    try:
        db.execute(f"SELECT rowid FROM src.{_quoted(table)} LIMIT 0")  # noqa: S608  # quoted identifier
        has_rowid = True
    except sqlite3.OperationalError:  # WITHOUT ROWID
        has_rowid = False
    return ", ".join((["rowid"] if has_rowid and not alias else []) + columns)


def _replace_contents(db: sqlite3.Connection) -> None:
    """Inside the caller's write transaction: make `main` hold exactly what the attached
    `src` (the snapshot) holds — schema, rows (rowids kept), AUTOINCREMENT counters,
    user_version and application_id. One transaction: readers see the old state or the
    new, never a mix; writers wait (busy) and then apply on top of the restored state."""
    src_objects = db.execute(
        "SELECT type, name, tbl_name, sql FROM src.sqlite_schema "
        "WHERE name NOT LIKE 'sqlite_%' ORDER BY rowid"
    ).fetchall()
    if any(str(sql or "").upper().startswith("CREATE VIRTUAL TABLE") for *_, sql in src_objects):
        raise ops.StepFailed(
            "sqlite_error", "the snapshot has virtual tables: restore it with --to instead"
        )
    main_objects = db.execute(
        "SELECT type, name FROM main.sqlite_schema WHERE name NOT LIKE 'sqlite_%'"
    ).fetchall()
    for kind in ("trigger", "view", "table"):
        for object_type, name in main_objects:
            if object_type == kind:
                db.execute(f"DROP {kind.upper()} IF EXISTS main.{_quoted(name)}")
    tables = [name for kind, name, _, _ in src_objects if kind == "table"]
    for kind, _, _, sql in src_objects:
        if kind == "table":
            db.execute(sql)  # CREATE TABLE: unqualified, so in main
    for table in tables:
        columns = _insert_columns(db, table)
        # Identifiers from the snapshot's own schema, each quoted by _quoted.
        copy = f"INSERT INTO main.{_quoted(table)} ({columns}) SELECT {columns} FROM src."  # noqa: S608
        db.execute(copy + _quoted(table))
    main_has_sequence = db.execute(
        "SELECT 1 FROM main.sqlite_schema WHERE name = 'sqlite_sequence'"
    ).fetchone()
    if main_has_sequence:
        db.execute("DELETE FROM main.sqlite_sequence")
        if db.execute("SELECT 1 FROM src.sqlite_schema WHERE name = 'sqlite_sequence'").fetchone():
            db.execute("INSERT INTO main.sqlite_sequence SELECT * FROM src.sqlite_sequence")
    for kind in ("index", "view", "trigger"):
        for object_kind, _, _, sql in src_objects:
            if object_kind == kind and sql:
                db.execute(sql)
    for pragma in ("user_version", "application_id"):
        value = int(db.execute(f"PRAGMA src.{pragma}").fetchone()[0])
        db.execute(f"PRAGMA main.{pragma} = {value}")


def _restore_holding_the_write_lock(
    job: Job, spec: RestoreSpec, snapshot_path: str, exists: bool
) -> tuple[PreRestore | None, str, list[str]]:
    """The in-place restore, under one write lock of the live database from before the
    pre-restore snapshot until the restored state is committed: no commit of the app can
    land in between (it is in the safety snapshot, or it waits and applies on top).

    Returns (pre-restore snapshot or None, journal mode, quick_check problems).
    """
    live = spec.source
    source_uri = f"file:{quote(snapshot_path)}?mode=ro&immutable=1"
    db = sqlite3.connect(
        f"file:{quote(live)}", uri=True, timeout=APP_BUSY_TIMEOUT_SECONDS, isolation_level=None
    )
    job.connections.append(db)
    pre: PreRestore | None = None
    try:
        db.execute(f"PRAGMA journal_size_limit={APP_JOURNAL_SIZE_LIMIT}")
        if not exists:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("ATTACH DATABASE ? AS src", (source_uri,))
        # The app's busy handler waits (and retries) while we hold this.
        db.execute("BEGIN IMMEDIATE")
        try:
            if exists and spec.safety_snapshot:
                pre = _safety_snapshot(job, spec)
            _replace_contents(db)
            db.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("DETACH DATABASE src")
        mode = str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if mode != "wal":
            mode = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        # Fold the restored pages back into the main file; with a reader still open
        # (--force) this does what it can and the app's next checkpoint does the rest.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        rows = db.execute("PRAGMA quick_check(20)").fetchall()
        return pre, mode, [str(row[0]) for row in rows if row[0] != "ok"]
    except ops.StepFailed as error:
        raise _Failed(error.reason, error.message, pre) from None
    except sqlite3.Error as error:
        raise _Failed(ops.classify_sqlite_error(error), f"sqlite: {error}", pre) from None
    finally:
        db.close()


@dataclass(frozen=True)
class PreRestore:
    """The pre-restore snapshot published, as root records it in its ledger."""

    name: str
    size: int
    sha256: str

    def extra(self) -> dict[str, str]:
        return {
            "pre_restore": self.name,
            "pre_restore_bytes": str(self.size),
            "pre_restore_sha256": self.sha256,
        }


class _Failed(Exception):
    """A failure after the pre-restore snapshot was (maybe) taken: it travels on."""

    def __init__(self, reason: Reason, message: str, pre: PreRestore | None) -> None:
        super().__init__(message)
        self.reason, self.message, self.pre = reason, message, pre


def _safety_snapshot(job: Job, spec: RestoreSpec) -> PreRestore:
    """The `pre-restore` snapshot of the live database's committed state (the caller holds
    its write lock, so this is the state the restore replaces). Published like any
    snapshot (verified, checksummed); labelled, so never pruned. Returns its name, size
    and sha256."""
    source_bytes = ops.source_size(spec.source)
    ops.check_free_space(spec.dest_dir, source_bytes, spec.min_free_bytes)
    temp = ops.create_temp(spec.dest_dir)
    job.temps.add(temp)
    try:
        ops.copy_database(spec.source, temp, spec.method, spec.timeout_seconds, job.connections)
        problems, digest = ops.seal_and_verify(temp, spec.verify)
        if problems:
            raise ops.StepFailed(
                "verify_failed", "the pre-restore snapshot failed: " + "; ".join(problems[:3])
            )
        size = os.stat(temp).st_size
        name = ops.publish(
            spec.dest_dir, temp, datetime.now(UTC), PRE_RESTORE_LABEL, digest, job.temps
        )
        return PreRestore(name, size, digest)
    finally:
        job.temps.remove(temp)  # only its own: an offsite restore's source is a temp too


def _refuse_if_held(spec: RestoreSpec) -> str:
    """Refuse (StepFailed "in_use") while a process of the user has the live database
    open, unless `spec.force`; returns the note for a forced restore ("" if none)."""
    live = spec.source
    holders = find_holders([live, live + "-wal"])
    if holders and not spec.force:
        raise ops.StepFailed(
            "in_use",
            f"{describe_holders(holders)}; stop the app first (or pass --force to restore "
            "under it)",
        )
    return f"; forced although {describe_holders(holders)}" if holders else ""


def _restore_in_place(
    job: Job,
    spec: RestoreSpec,
    parsed: SnapshotName,
    checked: Checked,
    snapshot_path: str | None = None,
) -> Report:
    """The one in-place restore, from `snapshot_path`: the local snapshot (default,
    `<dest_dir>/<name>`) or a verified temp holding an offsite copy's bytes."""
    live = spec.source
    forced = _refuse_if_held(spec)
    extra = {"restored_from": parsed.filename, "target": live}
    if spec.check_only:
        return Report(
            action="restore",
            status="ok",
            message=f"{parsed.filename} verified ({checked.result.outcome}){forced}",
            snapshot=_info(parsed, checked),
            verified=(checked.result,),
            extra=extra,
        )
    try:
        before: os.stat_result | None = os.stat(live)
    except FileNotFoundError:
        before = None
    if snapshot_path is None:
        snapshot_path = os.path.join(spec.dest_dir, parsed.filename)
    if not same_file(snapshot_path, checked.identity):
        raise ops.StepFailed("verify_failed", f"{parsed.filename} changed after check")
    try:
        pre, mode, problems = _restore_holding_the_write_lock(
            job, spec, snapshot_path, before is not None
        )
    except _Failed as failure:
        undo = failure.pre.extra() if failure.pre else {}
        return Report(
            action="restore",
            status="failed",
            reason=failure.reason,
            message=failure.message,
            duration_s=round(job.elapsed(), 6),
            verified=(checked.result,),
            extra={**extra, **undo},
        )
    if pre is not None:
        extra.update(pre.extra())
    after = _keep_mode(live, before)
    unsound = _restored_problem(problems, mode)
    if unsound is not None:
        return Report(
            action="restore",
            status="failed",
            reason=unsound[0],
            message=unsound[1],
            duration_s=round(job.elapsed(), 6),
            verified=(checked.result,),
            extra=extra,
        )
    return Report(
        action="restore",
        status="ok",
        message=_restored_message(parsed, live, after, before is not None, pre is not None)
        + forced,
        snapshot=_info(parsed, checked),
        duration_s=round(job.elapsed(), 6),
        verified=(checked.result,),
        extra=extra,
    )


def _keep_mode(live: str, before: os.stat_result | None) -> os.stat_result:
    """The restored database's stat, with the mode it had before (if it existed)."""
    after = os.stat(live)
    if before is not None and stat.S_IMODE(after.st_mode) != stat.S_IMODE(before.st_mode):
        os.chmod(live, stat.S_IMODE(before.st_mode))  # SQLite writes in place; belt and braces
        after = os.stat(live)
    return after


def _restored_problem(problems: list[str], mode: str) -> tuple[Reason, str] | None:
    """(reason, message) if the restored database is not sound and in WAL mode."""
    if problems:
        return "verify_failed", f"restored database fails quick_check: {'; '.join(problems[:3])}"
    if mode != "wal":
        return "sqlite_error", f"restored, but journal_mode is {mode}, not wal"
    return None


def _restored_message(
    parsed: SnapshotName, live: str, after: os.stat_result, existed: bool, pre_taken: bool
) -> str:
    kept = "kept" if existed else "new file"
    # Only a database that existed has a pre-restore snapshot to speak of.
    safety = (
        "the database's write lock was held from before the pre-restore snapshot to the end"
        if pre_taken
        else "no database existed, so no pre-restore snapshot was taken"
    )
    return (
        f"restored {parsed.filename} into {live} (uid {after.st_uid}, gid {after.st_gid}, "
        f"mode {stat.S_IMODE(after.st_mode):04o} {kept}; journal_mode wal; "
        f"quick_check ok; {safety})"
    )


def _receive_stream(spec: RestoreSpec, name: str) -> Callable[[int], int]:
    """A `fill` that copies the offsite stream (`spec.stream_fd`) to a file: stops at
    once past `spec.expected_bytes`, then size and sha256 must equal the recorded ones.
    Raises StepFailed."""

    def fill(target_fd: int) -> int:
        digest = hashlib.sha256()
        written = 0
        while chunk := os.read(spec.stream_fd, 1 << 20):
            written += len(chunk)
            if written > spec.expected_bytes:
                raise ops.StepFailed(
                    "verify_failed",
                    f"the offsite copy of {name} is longer than its recorded "
                    f"{spec.expected_bytes} bytes",
                )
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(target_fd, view) :]
        if written != spec.expected_bytes or digest.hexdigest() != spec.expected_sha256:
            raise ops.StepFailed(
                "verify_failed",
                f"the offsite copy of {name} differs from the recorded one ({written} of "
                f"{spec.expected_bytes} bytes, sha256 "
                f"{'matches' if digest.hexdigest() == spec.expected_sha256 else 'differs'})",
            )
        return written

    return fill


def _restore_from_stream(job: Job, spec: RestoreSpec) -> Report:
    """Restore from offsite: the snapshot's bytes arrive on `spec.stream_fd` (the root
    side pumps them from the engine) and are verified (size and sha256 must equal the
    recorded ones, then quick_check) in a hidden temp before anything else happens.
    `--to`: the temp is beside the target and renamed to it, as a local `--to` restore.
    In place: the temp is in the user's backup directory and is the source of the one
    in-place restore (pre-restore snapshot, write lock, swap, verification)."""
    name = spec.snapshot
    parsed = parse_name(name)
    try:
        if parsed is None:
            raise ops.StepFailed("not_found", f"{name!r} is not a snapshot name")
        if spec.in_place:
            with ops.user_dir_lock(spec.dest_dir):
                return _restore_stream_in_place(job, spec, parsed)
        written = _copy_to_target(
            job,
            spec.target,
            _receive_stream(spec, name),
            spec.expected_sha256,
            "sha256 of the written file differs",
        )
    finally:
        os.close(spec.stream_fd)  # the one close: a refusal or failure stops the pump
    return Report(
        action="restore",
        status="ok",
        message=(
            f"wrote {written} bytes to {spec.target} (mode 0600); sha256 matches the recorded "
            "digest, quick_check ok"
        ),
        snapshot=SnapshotInfo(
            name=name, time=parsed.time.timestamp(), bytes=written, label=parsed.label
        ),
        duration_s=round(job.elapsed(), 6),
        extra={"restored_from": name, "target": spec.target, "sha256": spec.expected_sha256},
    )


def _restore_stream_in_place(job: Job, spec: RestoreSpec, parsed: SnapshotName) -> Report:
    # Refuse before the download when the app has the database open (checked again
    # right before the swap, as for a local snapshot).
    _refuse_if_held(spec)
    temp, temp_fd = _create_temp_beside(os.path.join(spec.dest_dir, parsed.filename))
    job.temps.add(temp)
    try:
        written = _write_verified(
            temp,
            temp_fd,
            _receive_stream(spec, parsed.filename),
            spec.expected_sha256,
            "sha256 of the received copy differs from the recorded one",
        )
        info = os.lstat(temp)
        checked = Checked(
            result=VerifyResult(parsed.filename, "ok", "offsite copy: size and sha256 as recorded"),
            digest=spec.expected_sha256,
            identity=(info.st_dev, info.st_ino),
            size=written,
        )
        return _restore_in_place(job, spec, parsed, checked, snapshot_path=temp)
    finally:
        job.temps.remove(temp)


def restore_job(job: Job, spec: RestoreSpec) -> Report:
    """Worker job "restore": choose and verify the snapshot, then write it to
    `spec.target` or (`spec.in_place`) into the live database `spec.source`."""
    if spec.stream_fd >= 0:
        return _restore_from_stream(job, spec)
    try:
        request = parse_snapshot_request(spec.snapshot)
    except UsageError as error:  # the parent validated it; kept for a clear report
        raise ops.StepFailed("not_found", str(error)) from None
    with ops.user_dir_lock(spec.dest_dir):
        parsed, checked, skipped = _choose_and_verify(spec.dest_dir, request)
        if spec.in_place:
            report = _restore_in_place(job, spec, parsed, checked)
        else:
            report = _restore_copy(job, spec, parsed, checked)
        if skipped is None:
            return report
        return replace(report, extra={**report.extra, "skipped_future": skipped.filename})
