"""Restore a snapshot: to a new file (`--to PATH`) or into the live database (`--in-place`).

- pure: `parse_snapshot_request`, `choose_snapshot`, `describe_holders`, `undo_command`;
- user side (inside the worker, as the user): `find_holders`, `restore_job`;
- parent side (root): `restore_to`, `restore_in_place`.

In place is two workers around a snapshot: a check-only worker chooses the snapshot,
verifies it and looks for processes holding the database; the parent then takes a
`pre-restore` snapshot through the normal snapshot path; a second worker repeats the
checks and copies the snapshot into the live database with SQLite's backup API. The
root parent never opens a path of the user's.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

import structlog

from t3backupd import snapshot as ops
from t3backupd.backup_pass import run_user_job, snapshot_user
from t3backupd.config import DEFAULT_CONFIG_PATH, Config
from t3backupd.errors import SnapshotNotFound, UsageError
from t3backupd.log import get_logger
from t3backupd.naming import SnapshotName, is_valid_label, parse_name
from t3backupd.protocol import JobSpec, Report, SnapshotInfo, failed
from t3backupd.usermap import User
from t3backupd.verify import Checked, check_snapshot, open_snapshot, same_file

if TYPE_CHECKING:
    from t3backupd.worker import Job

LATEST = "latest"
PRE_RESTORE_LABEL = "pre-restore"
# The app's setting (DESIGN): the WAL is truncated back to this after our checkpoint.
APP_JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
APP_BUSY_TIMEOUT_SECONDS = 5.0
MAX_HOLDERS_NAMED = 5
MAX_COMMAND_CHARS = 80
# A snapshot without NAME.sha256 (the legacy script wrote none) is restorable when its
# integrity check passes; the restored copy is then checked against the digest we read.
RESTORABLE_OUTCOMES = ("ok", "missing_checksum")


# --- pure -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotRequest:
    """What `--snapshot` asked for: kind "name" (exact file name), "latest" or "label"."""

    kind: str
    value: str

    def describe(self) -> str:
        if self.kind == "latest":
            return "the newest snapshot"
        if self.kind == "label":
            return f"the newest snapshot labelled {self.value!r}"
        return f"snapshot {self.value!r}"


def parse_snapshot_request(text: str) -> SnapshotRequest:
    """Parse `--snapshot NAME|latest|LABEL`.

    Raises UsageError for anything that could name a path (a '/' or '..'), control
    characters, or text that is neither a snapshot file name nor a valid label.
    """
    if "/" in text or ".." in text:
        raise UsageError(f"invalid --snapshot {text!r}: a snapshot name never contains '/' or '..'")
    if parse_name(text) is not None:
        return SnapshotRequest("name", text)
    if text == LATEST:
        return SnapshotRequest("latest", text)
    if is_valid_label(text):
        return SnapshotRequest("label", text)
    raise UsageError(
        f"invalid --snapshot {text!r}: use a snapshot file name, 'latest' or a label "
        "(1-64 of A-Z a-z 0-9 . _ -)"
    )


def choose_snapshot(
    entries: Sequence[tuple[SnapshotName, bool]], request: SnapshotRequest
) -> SnapshotName:
    """The snapshot `request` names among `entries` ((parsed name, is a regular file)).

    "latest" and labels pick the newest regular file by the time in its name (what
    `list` shows); an exact name may be any entry, so that a planted link is reported by
    the verification rather than silently skipped. Raises SnapshotNotFound.
    """
    if request.kind == "name":
        for parsed, _ in entries:
            if parsed.filename == request.value:
                return parsed
        raise SnapshotNotFound(f"no {request.describe()}")
    candidates = [
        parsed
        for parsed, regular in entries
        if regular and (request.kind == "latest" or parsed.label == request.value)
    ]
    if not candidates:
        raise SnapshotNotFound(f"no snapshot found for {request.describe()}")
    return max(candidates, key=lambda parsed: (parsed.time, parsed.filename))


def describe_holders(holders: Sequence[tuple[int, str]]) -> str:
    """One line naming the processes that hold the database open."""
    named = ", ".join(
        f"pid {pid} ({command[:MAX_COMMAND_CHARS]})" for pid, command in holders[:MAX_HOLDERS_NAMED]
    )
    more = len(holders) - MAX_HOLDERS_NAMED
    if more > 0:
        named += f" and {more} more"
    return f"the database is open by {named}"


def undo_command(user: str, config_path: str | None = None) -> str:
    """The command that undoes an in-place restore."""
    config = f"-c {config_path} " if config_path else ""
    return f"t3backupd {config}restore --user {user} --snapshot {PRE_RESTORE_LABEL} --in-place"


# --- user side ------------------------------------------------------------------------


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
            return "".join(ch if ch.isprintable() else "?" for ch in text)
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


def _create_target(path: str) -> int:
    """Create `path` (O_EXCL, 0600, never through a link). Raises StepFailed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ops.StepFailed(
            "exists", f"{path} already exists; restore never overwrites, choose a new path"
        ) from None
    except FileNotFoundError:
        raise ops.StepFailed("not_found", f"directory of {path} does not exist") from None
    except OSError as error:
        raise ops.StepFailed(
            ops.classify_os_error(error), f"cannot create {path}: {error.strerror}"
        ) from None
    os.fchmod(fd, 0o600)
    return fd


def _restore_copy(job: Job, parsed: SnapshotName, checked: Checked) -> Report:
    """Write the verified snapshot to `spec.target`, then verify the copy."""
    spec = job.spec
    target = spec.target
    source = os.path.join(spec.dest_dir, parsed.filename)
    target_fd = _create_target(target)
    job.temps.add(target)
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
        ops.fsync_path(os.path.dirname(target) or "/", directory=True)
        if not same_file(target, (target_info.st_dev, target_info.st_ino)):
            raise ops.StepFailed("verify_failed", f"{target} was replaced while being written")
        problems, digest = ops.verify_and_hash(target, "quick")
        if digest != checked.digest or problems:
            why = "; ".join(problems[:3]) or "sha256 of the copy differs from the snapshot's"
            raise ops.StepFailed("verify_failed", f"restored copy failed verification: {why}")
    except BaseException:
        job.temps.remove_all()
        raise
    job.temps.discard(target)
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


def _restore_in_place(job: Job, parsed: SnapshotName, checked: Checked) -> Report:
    spec = job.spec
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


def restore_job(job: Job) -> Report:
    """Worker job "restore": choose and verify the snapshot, then write it to
    `spec.target` or (`spec.in_place`) into the live database `spec.source`."""
    spec = job.spec
    try:
        request = parse_snapshot_request(spec.snapshot or LATEST)
    except UsageError as error:  # the parent validated it; kept for a clear report
        raise ops.StepFailed("not_found", str(error)) from None
    with ops.user_dir_lock(spec.dest_dir):
        parsed, checked = _choose_and_verify(spec.dest_dir, request)
        if spec.in_place:
            return _restore_in_place(job, parsed, checked)
        return _restore_copy(job, parsed, checked)


# --- parent side ----------------------------------------------------------------------


def restore_spec(
    config: Config,
    user: User,
    dest_dir: str,
    request: str,
    target: str = "",
    in_place: bool = False,
    check_only: bool = False,
    force: bool = False,
) -> JobSpec:
    """The job spec of a restore of `user` under `config`."""
    return JobSpec(
        action="restore",
        user=user.name,
        dest_dir=dest_dir,
        source=config.source_for(user.name, user.home),
        snapshot=request,
        timeout_seconds=float(config.snapshot.timeout_seconds),
        target=target,
        in_place=in_place,
        check_only=check_only,
        force=force,
    )


def _log(report: Report, **fields: object) -> None:
    log = get_logger()
    (log.info if report.ok else log.error)(
        "restore",
        status=report.status,
        reason=report.reason,
        message=report.message,
        snapshot=report.extra.get("restored_from"),
        **fields,
    )


def restore_to(config: Config, user: User, request: str, target: str) -> Report:
    """Restore `user`'s snapshot `request` to the new file `target` (absolute).

    Raises UsageError if `request` is not a valid --snapshot value or `target` is
    relative; everything else is in the report.
    """
    parse_snapshot_request(request)
    if not os.path.isabs(target):
        raise UsageError(f"--to {target!r}: give an absolute path")
    with structlog.contextvars.bound_contextvars(user=user.name):
        report = run_user_job(
            config,
            user,
            lambda dest_dir: restore_spec(config, user, dest_dir, request, target=target),
            None,
        )
        _log(report, mode="to", target=target)
    return report


@dataclass(frozen=True)
class InPlaceResult:
    """An in-place restore: the final report, and the pre-restore snapshot taken (if any)."""

    report: Report
    pre_restore: str | None
    undo: str | None


def restore_in_place(
    config: Config, user: User, request: str, force: bool = False
) -> InPlaceResult:
    """Restore `user`'s snapshot `request` into their live database.

    1. check (worker): choose + verify the snapshot; refuse if a process of the user has
       the database open (unless `force`);
    2. take a `pre-restore` snapshot of the current database (the normal snapshot path);
    3. restore (worker): repeat the checks on the exact snapshot chosen in 1, back it up
       into the live database, verify the result.
    Nothing is written when 1 or 2 fails. Raises UsageError for an invalid `request`.
    """
    parse_snapshot_request(request)
    clock = time.monotonic()
    with structlog.contextvars.bound_contextvars(user=user.name):
        check = run_user_job(
            config,
            user,
            lambda dest_dir: restore_spec(
                config, user, dest_dir, request, in_place=True, check_only=True, force=force
            ),
            None,
        )
        if not check.ok:
            _log(check, mode="in-place", phase="check")
            return InPlaceResult(check, None, None)
        chosen = check.extra["restored_from"]  # a snapshot name: the parser checked it
        pre = snapshot_user(config, user, label=PRE_RESTORE_LABEL)
        if pre.report.status == "failed":
            report = failed(
                "restore",
                pre.report.reason or "sqlite_error",
                f"the pre-restore snapshot failed ({pre.report.message}); nothing was "
                "restored. To recover anyway, stop the app and use `restore --to` on a new "
                "path",
                verified=check.verified,
            )
            _log(report, mode="in-place", phase="pre-restore")
            return InPlaceResult(report, None, None)
        pre_name = pre.report.snapshot.name if pre.report.snapshot is not None else None
        report = run_user_job(
            config,
            user,
            lambda dest_dir: restore_spec(
                config, user, dest_dir, chosen, in_place=True, force=force
            ),
            None,
        )
        config_path = None if config.path == str(DEFAULT_CONFIG_PATH) else config.path
        undo = undo_command(user.name, config_path) if pre_name is not None else None
        _log(
            report,
            mode="in-place",
            pre_restore=pre_name,
            duration_s=round(time.monotonic() - clock, 3),
        )
    return InPlaceResult(report, pre_name, undo)
