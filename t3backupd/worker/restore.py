"""Worker job "restore", run as the user: to a new file (`--to`) or into the live database.

The root side (`t3backupd.root.restore`) runs this twice for `--in-place`: a check-only
run (choose, verify, look for processes holding the database), then, after a
`pre-restore` snapshot, the real one on the exact snapshot chosen.
"""

from __future__ import annotations

import errno
import os
import secrets
import sqlite3
import stat
from collections.abc import Sequence
from urllib.parse import quote

from t3backupd.core.errors import SnapshotNotFound, UsageError
from t3backupd.core.naming import TEMP_PREFIX, TEMP_SUFFIX, SnapshotName
from t3backupd.core.protocol import Report, RestoreSpec, SnapshotInfo, printable
from t3backupd.core.selection import (
    RESTORABLE_OUTCOMES,
    SnapshotRequest,
    choose_snapshot,
    describe_holders,
    parse_snapshot_request,
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


def _choose_and_verify(dest_dir: str, request: SnapshotRequest) -> tuple[SnapshotName, Checked]:
    """Raises StepFailed("not_found") or StepFailed("verify_failed")."""
    entries = [(parsed, stat.S_ISREG(info.st_mode)) for parsed, info in ops.scan(dest_dir)]
    try:
        parsed = choose_snapshot(entries, request)
    except SnapshotNotFound as error:
        raise ops.StepFailed("not_found", str(error)) from None
    checked = check_snapshot(dest_dir, parsed.filename, "quick")
    if checked is None:
        raise ops.StepFailed("not_found", f"{parsed.filename} disappeared")
    if checked.result.outcome not in RESTORABLE_OUTCOMES:
        raise ops.StepFailed(
            "verify_failed",
            f"{parsed.filename}: {checked.result.outcome.replace('_', ' ')}: "
            f"{checked.result.detail}; refusing to restore it",
        )
    return parsed, checked


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


def _restore_copy(job: Job, spec: RestoreSpec, parsed: SnapshotName, checked: Checked) -> Report:
    """Write the verified snapshot to `spec.target`, then verify the copy."""
    target = spec.target
    source = os.path.join(spec.dest_dir, parsed.filename)
    _refuse_existing(target)
    temp, target_fd = _create_temp_beside(target)
    job.temps.add(temp)
    try:
        try:
            source_fd, info = open_snapshot(source)
            try:
                if (info.st_dev, info.st_ino) != checked.identity:
                    raise ops.StepFailed("verify_failed", f"{parsed.filename} changed after check")
                written = _copy_fd(source_fd, target_fd)
            finally:
                os.close(source_fd)
            os.fsync(target_fd)
            target_info = os.fstat(target_fd)
        finally:
            os.close(target_fd)
        if not same_file(temp, (target_info.st_dev, target_info.st_ino)):
            raise ops.StepFailed("verify_failed", f"{temp} was replaced while being written")
        problems, digest = ops.verify_and_hash(temp, "quick")
        if digest != checked.digest or problems:
            why = "; ".join(problems[:3]) or "sha256 of the copy differs from the snapshot's"
            raise ops.StepFailed("verify_failed", f"restored copy failed verification: {why}")
        _publish_no_replace(temp, target)
        ops.fsync_path(os.path.dirname(target) or "/", directory=True)
    except BaseException:
        job.temps.remove_all()
        raise
    job.temps.discard(temp)
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


def _backup_into_live(job: Job, snapshot_path: str, live: str) -> tuple[str, list[str]]:
    """Copy `snapshot_path` into the live database with the backup API, as one write
    transaction (readers see the old state or the new, never a mix). Returns the
    journal mode afterwards and the problems quick_check found."""
    source = sqlite3.connect(
        f"file:{quote(snapshot_path)}?mode=ro&immutable=1", uri=True, isolation_level=None
    )
    job.connections.append(source)
    try:
        live_db = sqlite3.connect(live, timeout=APP_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        job.connections.append(live_db)
        try:
            live_db.execute(f"PRAGMA journal_size_limit={APP_JOURNAL_SIZE_LIMIT}")
            # pages=-1: every page in one step, so it is one transaction on the live file;
            # SQLite writes it through the live database's own WAL and locks.
            source.backup(live_db, pages=-1, sleep=0.1)
            # The snapshot is in rollback-journal mode; the app's database is WAL. A
            # backup into a WAL database keeps WAL; a database created here does not.
            mode = str(live_db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode != "wal":
                mode = str(live_db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            # Fold the restored pages back into the main file; with a reader still open
            # (--force) this does what it can and the app's next checkpoint does the rest.
            live_db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            rows = live_db.execute("PRAGMA quick_check(20)").fetchall()
            problems = [str(row[0]) for row in rows if row[0] != "ok"]
            return mode, problems
        finally:
            live_db.close()
    finally:
        source.close()


def _restore_in_place(
    job: Job, spec: RestoreSpec, parsed: SnapshotName, checked: Checked
) -> Report:
    live = spec.source
    holders = find_holders([live, live + "-wal"])
    if holders and not spec.force:
        raise ops.StepFailed(
            "in_use",
            f"{describe_holders(holders)}; stop the app first (or pass --force to restore "
            "under it)",
        )
    forced = f"; forced although {describe_holders(holders)}" if holders else ""
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
    snapshot_path = os.path.join(spec.dest_dir, parsed.filename)
    if not same_file(snapshot_path, checked.identity):
        raise ops.StepFailed("verify_failed", f"{parsed.filename} changed after check")
    mode, problems = _backup_into_live(job, snapshot_path, live)
    after = os.stat(live)
    if before is not None and stat.S_IMODE(after.st_mode) != stat.S_IMODE(before.st_mode):
        os.chmod(live, stat.S_IMODE(before.st_mode))  # SQLite writes in place; belt and braces
        after = os.stat(live)
    if problems:
        raise ops.StepFailed(
            "verify_failed", f"restored database fails quick_check: {'; '.join(problems[:3])}"
        )
    if mode != "wal":
        raise ops.StepFailed("sqlite_error", f"restored, but journal_mode is {mode}, not wal")
    kept = "kept" if before is not None else "new file"
    return Report(
        action="restore",
        status="ok",
        message=(
            f"restored {parsed.filename} into {live} (uid {after.st_uid}, gid {after.st_gid}, "
            f"mode {stat.S_IMODE(after.st_mode):04o} {kept}; journal_mode wal; "
            f"quick_check ok){forced}"
        ),
        snapshot=_info(parsed, checked),
        duration_s=round(job.elapsed(), 6),
        verified=(checked.result,),
        extra=extra,
    )


def restore_job(job: Job, spec: RestoreSpec) -> Report:
    """Worker job "restore": choose and verify the snapshot, then write it to
    `spec.target` or (`spec.in_place`) into the live database `spec.source`."""
    try:
        request = parse_snapshot_request(spec.snapshot)
    except UsageError as error:  # the parent validated it; kept for a clear report
        raise ops.StepFailed("not_found", str(error)) from None
    with ops.user_dir_lock(spec.dest_dir):
        parsed, checked = _choose_and_verify(spec.dest_dir, request)
        if spec.in_place:
            return _restore_in_place(job, spec, parsed, checked)
        return _restore_copy(job, spec, parsed, checked)
