"""The offsite lane: upload, backfill, retention, restore and the restore drill.

The root side never opens a user's path. To upload, a worker running as the user
streams the snapshot down a pipe (a header line, then the bytes); this module pumps the
bytes into root's spool (`spool.py`), non-blocking with a deadline and a no-progress
limit, counting (more than the size recorded stops it) and hashing (a different sha256
is never uploaded). Only then does the engine start, reading the spool at root's pace:
no engine process, repository lock or lane slot waits on a user. Each user's uploads in
a pass are bounded by their turn (`turn_seconds`), and a timeout ends the turn.
To restore, the engine's stream is pumped, counted and hashed the same way into a
worker that writes and verifies it as a local `restore --to` does.

Only what root published goes offsite: the candidates and the size and sha256 they are
checked against come from root's ledger (`root.ledger`, written when root accepted the
worker's publish report), never from `NAME.sha256` or the worker's header (a header that
differs from the ledger is `corrupt`); the user's listing only takes candidates away.
Each user's copies are bounded (`offsite.max_copies_per_user`, `max_bytes_per_user`,
labelled copies included): past it nothing more is uploaded for them (reason `quota`).

What is offsite is always read from the repository (`Engine.snapshots`), never from a
local record. Retention is the local policy's code (`select_expired`) applied to each
user's own copies, so one user's forget can only name that user's copies.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace

from t3backupd.core.config import Config
from t3backupd.core.jobs import inventory_spec, user_dir
from t3backupd.core.naming import parse_name
from t3backupd.core.offsite_config import OffsiteConfig
from t3backupd.core.protocol import (
    JobSpec,
    Report,
    ReportError,
    RestoreSpec,
    SnapshotInfo,
    StreamSpec,
    UserResult,
    failed,
    parse_report,
)
from t3backupd.core.retention import RetentionPolicy, select_expired
from t3backupd.core.selection import choose_snapshot, parse_snapshot_request
from t3backupd.core.usermap import User
from t3backupd.root import ledger
from t3backupd.root.ledger import Entries, Entry
from t3backupd.root.log import get_logger
from t3backupd.root.offsite.engine import (
    SQLITE_HEADER_BYTES,
    Engine,
    OffsiteError,
    OffsiteSnapshot,
    SnapshotMeta,
    sqlite_page_size,
)
from t3backupd.root.offsite.seal import engine_key, judged, sealed, usable
from t3backupd.root.offsite.spool import open_spool
from t3backupd.root.runner import run_for_users, run_user_job
from t3backupd.root.spawn import (
    ABANDONED,
    DirectoryRefused,
    ProcessTracker,
    launch_worker,
    prepare_user_dir,
)

CHUNK_BYTES = 1 << 20
MAX_HEADER_BYTES = 1024
WORKER_REPORT_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 5.0


# --- pumping bytes with deadlines ---------------------------------------------------------


class _Stalled(Exception):
    pass


def _wait(fd: int, writable: bool, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Stalled()
    readers, writers, _ = select.select(
        [] if writable else [fd], [fd] if writable else [], [], min(left, 1.0)
    )
    if not readers and not writers and time.monotonic() >= deadline:
        raise _Stalled()


def _write_all(fd: int, data: memoryview, deadline: float) -> None:
    while data:
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            _wait(fd, True, deadline)
            continue
        data = data[written:]


def _read_some(fd: int, deadline: float) -> bytes:
    while True:
        try:
            return os.read(fd, CHUNK_BYTES)
        except BlockingIOError:
            _wait(fd, False, deadline)


@dataclass
class Pumped:
    total: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    over_limit: bool = False


def pump(
    source: int,
    sink: int | None,
    limit: int,
    deadline: float,
    first: bytes = b"",
    stall: float | None = None,
) -> Pumped:
    """Copy `source` to `sink` (None: only count and hash) until EOF, hashing and
    counting; stop as soon as more than `limit` bytes came (`over_limit`). Both
    descriptors are made non-blocking. Raises _Stalled past `deadline`, and (with
    `stall`) when no byte came for `stall` seconds."""
    os.set_blocking(source, False)
    if sink is not None:
        os.set_blocking(sink, False)
    result = Pumped()
    chunk = first
    while True:
        if chunk:
            result.total += len(chunk)
            if result.total > limit:
                result.over_limit = True
                return result
            result.digest.update(chunk)
            if sink is not None:
                _write_all(sink, memoryview(chunk), deadline)
        silence_ends = deadline if stall is None else min(deadline, time.monotonic() + stall)
        chunk = _read_some(source, silence_ends)
        if not chunk:
            return result


def _read_header(fd: int, deadline: float) -> tuple[dict[str, object], bytes]:
    """The worker's header line and whatever data bytes came with it."""
    os.set_blocking(fd, False)
    buffer = b""
    while b"\n" not in buffer:
        chunk = _read_some(fd, deadline)
        if not chunk:
            raise OffsiteError("worker", "the worker ended its stream before the header")
        buffer += chunk
        if len(buffer) > MAX_HEADER_BYTES and b"\n" not in buffer[:MAX_HEADER_BYTES]:
            raise OffsiteError("worker", "the worker's stream header is too long")
    line, _, rest = buffer.partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError:
        raise OffsiteError("worker", "the worker's stream header is not JSON") from None
    if not isinstance(header, dict):
        raise OffsiteError("worker", "the worker's stream header is not an object")
    return header, rest


# --- a worker with a stream -------------------------------------------------------------


class _StreamWorker:
    """A worker as the user with one pipe end inherited, started through the one
    launcher (`spawn.launch_worker`: tracked, its own group, signals masked); its report
    read with deadlines. Raises OffsiteError if it cannot start (or a stop has begun)."""

    def __init__(self, spec: JobSpec, user: User, child_fd: int, tracker: ProcessTracker | None):
        self.spec = spec
        self.user = user
        self.out: list[bytes] = []
        try:
            child = launch_worker(user, tracker, pass_fds=(child_fd,))
        except OSError as error:
            raise OffsiteError("worker", f"cannot start worker: {error}") from None
        finally:
            os.close(child_fd)
        if child is None:
            raise OffsiteError("failed", "worker not started: stopping")
        self.child = child
        self.process = child.popen
        self._done = False
        self._readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._drain, args=(self.process.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        stdin = self.process.stdin
        if stdin is not None:
            with suppress(BrokenPipeError):
                stdin.write(spec.to_json())
                stdin.close()

    def _drain(self, stream: object, keep: bool) -> None:
        read = getattr(stream, "read", None)
        if read is None:
            return
        total = 0
        while chunk := read(1 << 16):
            if keep and total <= (1 << 20):
                self.out.append(chunk)
            total += len(chunk)

    def stop(self) -> None:
        """SIGTERM (+SIGCONT) its group, a grace, SIGKILL, a grace; reaped (or, past all
        of it, abandoned: its user is skipped until it is reaped)."""
        if not self._done:
            self._end(stop=True)

    def _end(self, stop: bool) -> None:
        self._done = True
        if not stop and self.child.exited_now():
            self.child.finish()  # what is left of its group goes with it
        elif not self.child.stop(STOP_GRACE_SECONDS, STOP_GRACE_SECONDS):
            ABANDONED.add(self.user, self.spec.action, self.child)
        for reader in self._readers:
            reader.join(STOP_GRACE_SECONDS)
        self.child.release()

    def report(self, timeout: float) -> Report:
        """Its report once it exits within `timeout` (stopped past it: `timeout`)."""
        if not self._done:
            if not self.child.exited(timeout):
                self._end(stop=True)
                return failed(self.spec.action, "timeout", f"no report after {timeout:.0f}s")
            self._end(stop=False)
        try:
            return parse_report(b"".join(self.out), self.spec.action)
        except ReportError as error:
            return failed(self.spec.action, "worker_crashed", f"invalid report ({error})")


# --- upload -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Uploaded:
    meta: SnapshotMeta
    id: str
    bytes_added: int
    duration_s: float


def stream_spec(config: Config, user: User, name: str, fd: int, timeout: float) -> StreamSpec:
    return StreamSpec(
        user=user.name,
        dest_dir=user_dir(config, user),
        snapshot=name,
        stream_fd=fd,
        timeout_seconds=timeout,
    )


def upload_snapshot(
    engine: Engine,
    config: Config,
    user: User,
    expected: Entry,
    tracker: ProcessTracker | None = None,
    until: float | None = None,
) -> Uploaded:
    """Upload one of `user`'s snapshots, which must be the bytes root published
    (`expected`, from root's ledger: never the user's `NAME.sha256` or the worker's
    word): received whole into root's spool first (at the user's pace, bounded by
    `offsite.timeout_seconds`, `offsite.stall_seconds` and `until`, the end of the
    user's turn), only then handed to the engine (at root's pace), so no engine process
    or repository lock ever waits on a user. Raises OffsiteError (nothing is recorded
    then)."""
    offsite = config.offsite
    if offsite is None:
        raise OffsiteError("failed", "no [offsite] in the config")
    clock = time.monotonic()
    meta, spooled = _receive(config, offsite, user, expected, tracker, until)
    try:
        return _send(engine, meta, spooled, float(offsite.timeout_seconds), clock)
    finally:
        os.close(spooled)


def _receive(
    config: Config,
    offsite: OffsiteConfig,
    user: User,
    expected: Entry,
    tracker: ProcessTracker | None,
    until: float | None,
) -> tuple[SnapshotMeta, int]:
    """The snapshot streamed by a worker as the user, counted, hashed and verified into
    a spool file (returned, at its end): (its meta with the page size, the spool fd).
    The worker has ended (or been stopped) before this returns or raises."""
    name = expected.name
    timeout, stall = float(offsite.timeout_seconds), float(offsite.stall_seconds)
    clock = time.monotonic()
    deadline = clock + timeout if until is None else min(clock + timeout, until)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        worker = _StreamWorker(
            stream_spec(config, user, name, write_end, timeout), user, write_end, tracker
        )
    except BaseException:
        os.close(read_end)
        raise
    spooled = -1
    received = False
    try:
        try:
            # The worker's start counts as silence too: a frozen one costs `stall`.
            header, first = _read_header(read_end, min(deadline, clock + stall))
        except _Stalled:
            raise OffsiteError("timeout", f"{name}: no stream header from the worker") from None
        except OffsiteError:
            report = worker.report(min(WORKER_REPORT_TIMEOUT_SECONDS, stall))
            if not report.ok:
                raise OffsiteError("worker", f"{name}: {report.reason}: {report.message}") from None
            raise
        meta = _meta_from_header(user, name, header)
        if (meta.size, meta.sha256) != (expected.size, expected.sha256):
            raise OffsiteError(
                "corrupt",
                f"{name}: the worker says {meta.size} bytes, sha256 {meta.sha256[:16]}; root "
                f"published {expected.size} bytes, sha256 {expected.sha256[:16]}; not uploaded",
            )
        # What root recorded of the snapshot goes with the copy (and under its seal).
        meta = replace(meta, schema_version=expected.schema_version)
        spooled = open_spool(offsite.cache_dir, meta.size)
        try:
            pumped = pump(read_end, spooled, meta.size, deadline, first, stall)
        except _Stalled:
            silent = time.monotonic() < deadline
            raise OffsiteError(
                "timeout",
                f"{name}: no bytes from the worker for {stall:.0f}s"
                if silent
                else f"{name}: stream not finished after {time.monotonic() - clock:.0f}s",
            ) from None
        except OSError as error:
            reason = "no_space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "failed"
            raise OffsiteError(reason, f"{name}: spool: {error.strerror}") from None
        meta = _with_page_size(meta, spooled)  # first: the more telling "corrupt"
        _check_pumped(meta, pumped, "the worker streamed")
        received = True
    except BaseException:
        if spooled >= 0:
            os.close(spooled)
        raise
    finally:
        os.close(read_end)
        if not received:
            worker.stop()  # whatever it is doing, this upload is over
        # Its bytes are verified by now; its report is not waited on for long.
        worker.report(min(WORKER_REPORT_TIMEOUT_SECONDS, stall))
    return meta, spooled


def _send(engine: Engine, meta: SnapshotMeta, spooled: int, timeout: float,
          clock: float) -> Uploaded:  # fmt: skip
    """The spool's bytes into the engine (counted and hashed again: what is committed is
    exactly what was verified), committed. Raises OffsiteError (the engine is stopped
    before it sees the end of the stream then: nothing is recorded)."""
    deadline = time.monotonic() + timeout
    os.lseek(spooled, 0, os.SEEK_SET)
    upload = engine.start_upload(sealed(engine_key(engine), engine.host, meta))
    committed = False
    try:
        try:
            pumped = pump(spooled, upload.fd, meta.size, deadline)
        except _Stalled:
            raise OffsiteError(
                "timeout", f"{meta.name}: {engine.name} took no end of it after {timeout:.0f}s"
            ) from None
        except BrokenPipeError:
            # The engine's own reason (no_space, unreachable...), not a guess.
            raise upload.stopped_reading() from None
        _check_pumped(meta, pumped, "the spool held")
        result = upload.commit(max(1.0, deadline - time.monotonic()))
        committed = True
    finally:
        if not committed:
            upload.abort()  # before EOF: the engine records nothing
    return Uploaded(meta, result.id, result.bytes_added, time.monotonic() - clock)


def _check_pumped(meta: SnapshotMeta, pumped: Pumped, what: str) -> None:
    """Raises OffsiteError `corrupt` unless exactly the recorded size and sha256 came."""
    if pumped.over_limit:
        raise OffsiteError(
            "corrupt", f"{meta.name}: {what} more than the {meta.size} bytes recorded"
        )
    digest = pumped.digest.hexdigest()
    if pumped.total != meta.size or digest != meta.sha256:
        raise OffsiteError(
            "corrupt",
            f"{meta.name}: streamed {pumped.total} of {meta.size} bytes, sha256 "
            f"{'matches' if digest == meta.sha256 else 'differs'}; not kept",
        )


def _with_page_size(meta: SnapshotMeta, spooled: int) -> SnapshotMeta:
    """`meta` with the page size from the SQLite header at the start of the spool.

    Read from the bytes themselves rather than reported by the worker: the root side
    never opens the user's file, a worker's claim would be one more thing to distrust,
    and the header in the spool is exactly what the engine stores, so the chunking
    always matches the bytes uploaded (an engine that chunks at page boundaries needs
    the size before its first byte). Bytes that do not start with a SQLite header are
    `corrupt` (nothing is uploaded)."""
    page_size = sqlite_page_size(os.pread(spooled, SQLITE_HEADER_BYTES, 0))
    if page_size is None:
        raise OffsiteError(
            "corrupt", f"{meta.name}: the stream does not start with a SQLite header; not kept"
        )
    return replace(meta, page_size=page_size)


def _meta_from_header(user: User, name: str, header: dict[str, object]) -> SnapshotMeta:
    parsed = parse_name(name)
    size, digest = header.get("size"), header.get("sha256")
    if (
        parsed is None
        or header.get("name") != name
        or not isinstance(size, int)
        or isinstance(size, bool)
        or not isinstance(digest, str)
    ):
        raise OffsiteError("worker", f"{name}: invalid stream header from the worker")
    meta = SnapshotMeta(user.name, name, parsed.time.timestamp(), size, digest, parsed.label)
    if not meta.valid():
        raise OffsiteError("worker", f"{name}: invalid stream header from the worker")
    return meta


# --- one user's offsite state: backfill + retention ------------------------------------


def offsite_policy(config: Config) -> RetentionPolicy:
    offsite = config.offsite
    if offsite is None:
        return RetentionPolicy()
    return RetentionPolicy(
        keep=offsite.keep_last,
        keep_hourly=offsite.keep_hourly,
        keep_daily=offsite.keep_daily,
        keep_weekly=offsite.keep_weekly,
        keep_monthly=offsite.keep_monthly,
    )


def expired_copies(snapshots: Sequence[OffsiteSnapshot], policy: RetentionPolicy) -> list[str]:
    """Ids of one user's copies the policy lets go (labelled ones never); a name stored
    twice keeps its newest copy."""
    by_name: dict[str, OffsiteSnapshot] = {}
    extra: list[str] = []
    for snapshot in snapshots:
        previous = by_name.get(snapshot.meta.name)
        if previous is not None:
            extra.append(previous.id)
        by_name[snapshot.meta.name] = snapshot
    parsed = [p for p in (parse_name(name) for name in by_name) if p is not None]
    expired = select_expired(parsed, policy)
    return extra + [by_name[p.filename].id for p in expired]


def to_upload(
    published: Iterable[Entry], offsite: Sequence[OffsiteSnapshot], policy: RetentionPolicy
) -> list[Entry]:
    """Snapshots root published (still present locally) not offsite yet that the offsite
    policy would keep, newest first."""
    present = {snapshot.meta.name for snapshot in offsite}
    by_name = {entry.name: entry for entry in published}
    parsed = [p for p in (parse_name(name) for name in set(by_name) | present) if p is not None]
    expired = {p.filename for p in select_expired(parsed, policy)}
    skip = present | expired
    missing = [p for p in parsed if p.filename in by_name and p.filename not in skip]
    missing.sort(key=lambda p: (p.time, p.filename), reverse=True)
    return [by_name[p.filename] for p in missing]


def quota_problem(copies: int, used: int, entry: Entry, offsite: OffsiteConfig) -> str | None:
    """Why uploading `entry` would pass the user's bound (`copies` copies of `used` bytes
    kept offsite so far, labelled ones included), or None."""
    limit, limit_bytes = offsite.max_copies_per_user, offsite.max_bytes_per_user
    if limit and copies + 1 > limit:
        return (
            f"{entry.name}: not uploaded, {copies} copies offsite already "
            f"(offsite.max_copies_per_user = {limit}; labelled copies count and are never "
            "forgotten: forget some by hand or raise the bound)"
        )
    if limit_bytes and used + entry.size > limit_bytes:
        return (
            f"{entry.name}: not uploaded, {used} + {entry.size} bytes would pass "
            f"offsite.max_bytes_per_user = {limit_bytes} (labelled copies count and are never "
            "forgotten: forget some by hand or raise the bound)"
        )
    return None


# Upload failures after which the user's turn in the pass is over.
ENDS_TURN = ("timeout", "unreachable", "auth", "no_repository", "no_space", "read_only")


def turn_seconds(config: Config) -> int:
    """How long one user's uploads may take in a pass (`offsite.user_turn_seconds`, 0 =
    `offsite.timeout_seconds`)."""
    offsite = config.offsite
    if offsite is None:
        return 0
    return offsite.user_turn_seconds or offsite.timeout_seconds


@dataclass
class UserOffsite:
    """One user's offsite outcome in a pass."""

    user: User
    uploaded: list[Uploaded] = field(default_factory=list)
    failures: list[OffsiteError] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    snapshots: int | None = None  # copies in the repository afterwards (None: unknown)
    newest: float | None = None  # time of the newest copy
    quota_reached: bool = False  # an upload was refused for the per-user bound

    @property
    def ok(self) -> bool:
        return not self.failures


def sync_user(
    engine: Engine,
    config: Config,
    user: User,
    local: Sequence[SnapshotInfo],
    tracker: ProcessTracker | None = None,
    forget: bool = True,
    *,
    listed_at: float,
) -> UserOffsite:
    """Upload what root published (its ledger) that `local`, the listing started at
    `listed_at`, still shows and is missing offsite (newest first, within the user's
    bound and turn), then apply retention to this user's copies. Never raises for an
    offsite problem: it is in `failures`."""
    outcome = UserOffsite(user)
    log = get_logger()
    policy = offsite_policy(config)
    published = ledger.still_present(config, user.name, (i.name for i in local), listed_at)
    _note_unpublished(user, local, published)
    try:
        # A copy whose seal does not verify is not ours: it neither stands in for an
        # upload nor counts for retention (`offsite check` reports it).
        present = usable(judged(engine, user.name))
    except OffsiteError as error:
        outcome.failures.append(error)
        log.error("offsite list", user=user.name, reason=error.reason, message=error.message)
        return outcome
    _upload_pending(engine, config, outcome, to_upload(published.values(), present, policy),
                    present, tracker)  # fmt: skip
    if tracker is not None and tracker.stopping.is_set():
        return outcome
    try:
        copies = usable(judged(engine, user.name))
        if forget:
            expired = expired_copies(copies, policy)
            if expired:
                engine.forget(expired)
                outcome.forgotten = expired
                copies = [copy for copy in copies if copy.id not in set(expired)]
        outcome.snapshots = len(copies)
        outcome.newest = max((copy.meta.time for copy in copies), default=None)
    except OffsiteError as error:
        outcome.failures.append(error)
        log.error("offsite retention", user=user.name, reason=error.reason, message=error.message)
    return outcome


def _upload_pending(
    engine: Engine,
    config: Config,
    outcome: UserOffsite,
    pending: Sequence[Entry],
    present: Sequence[OffsiteSnapshot],
    tracker: ProcessTracker | None,
) -> None:
    """Upload `pending` (newest first) within the user's bound and turn (`turn_seconds`;
    a timeout ends it too, the rest waits for the next pass), into `outcome`."""
    user, log = outcome.user, get_logger()
    turn = turn_seconds(config)
    until = time.monotonic() + turn
    # The bound counts what retention keeps (labelled copies always), plus this pass's.
    leaving = set(expired_copies(present, offsite_policy(config)))
    held = [copy for copy in present if copy.id not in leaving]
    count, used = len(held), sum(copy.meta.size for copy in held)
    for index, info in enumerate(pending):
        if tracker is not None and tracker.stopping.is_set():
            break
        if time.monotonic() >= until:
            log.warning("offsite turn over", user=user.name, turn_seconds=turn,
                        left=len(pending) - index)  # fmt: skip
            break
        problem = quota_problem(count, used, info, config.offsite or OffsiteConfig())
        if problem is not None:
            outcome.quota_reached = True
            outcome.failures.append(OffsiteError("quota", problem))
            log.error("offsite upload", user=user.name, snapshot=info.name, reason="quota",
                      message=problem)  # fmt: skip
            break
        try:
            uploaded = upload_snapshot(engine, config, user, info, tracker, until)
        except OffsiteError as error:
            outcome.failures.append(error)
            log.error("offsite upload", user=user.name, snapshot=info.name,
                      reason=error.reason, message=error.message)  # fmt: skip
            # A timeout ends the user's turn: a stalled stream (the user's own pace)
            # costs the lane once a pass, not once per pending copy. The others: the
            # next one would fail the same way.
            if error.reason in ENDS_TURN:
                break
            continue
        outcome.uploaded.append(uploaded)
        count, used = count + 1, used + uploaded.meta.size
        log.info("offsite upload", user=user.name, snapshot=info.name,
                 bytes=uploaded.meta.size, bytes_added=uploaded.bytes_added, id=uploaded.id,
                 duration_s=round(uploaded.duration_s, 3))  # fmt: skip


def _note_unpublished(user: User, local: Sequence[SnapshotInfo], published: Entries) -> None:
    """One line for the user's snapshots root has no record of publishing (made before
    the ledger, adopted, or planted): they are never uploaded."""
    unknown = sorted(info.name for info in local if info.name not in published)
    if unknown:
        get_logger().info(
            "offsite not uploaded",
            user=user.name,
            count=len(unknown),
            names=unknown[:5],
            message="not published by root (before the ledger, adopted, or not root's): "
            "never uploaded; the next snapshot root publishes is",
        )


def local_snapshots(config: Config, user: User, tracker: ProcessTracker | None) -> Report:
    """The user's local snapshots, listed by a worker as the user."""
    if not os.path.lexists(user_dir(config, user)):
        return Report(action="inventory", status="ok")
    return run_user_job(config, user, inventory_spec(config, user), tracker).report


def run_offsite_pass(
    engine: Engine,
    config: Config,
    users: Sequence[User],
    tracker: ProcessTracker | None = None,
    on_result: Callable[[UserOffsite], None] | None = None,
) -> list[UserOffsite]:
    """Every user's backfill + retention, `offsite.concurrency` users at a time, through
    the one per-user runner."""
    tracker = tracker if tracker is not None else ProcessTracker()
    outcomes: dict[str, UserOffsite] = {}
    concurrency = config.offsite.concurrency if config.offsite is not None else 1

    def job(user: User) -> UserResult:
        started, clock = time.time(), time.monotonic()
        inventory = local_snapshots(config, user, tracker)
        if not inventory.ok:
            outcome = UserOffsite(user)
            outcome.failures.append(
                OffsiteError("worker", f"cannot list local snapshots: {inventory.message}")
            )
        else:
            outcome = sync_user(
                engine, config, user, inventory.snapshots, tracker, listed_at=started
            )
        outcomes[user.name] = outcome
        if on_result is not None:
            on_result(outcome)
        report = Report(action="stream", status="ok" if outcome.ok else "failed")
        return UserResult(user, report, started, time.monotonic() - clock)

    with suppress(OffsiteError):
        engine.unlock_stale()
    run_for_users(users, job, concurrency=concurrency, tracker=tracker, action="stream")
    return [outcomes[user.name] for user in users if user.name in outcomes]


# --- restore and drill --------------------------------------------------------------------


def choose_copy(snapshots: Sequence[OffsiteSnapshot], request: str) -> OffsiteSnapshot:
    """The copy `request` (name, "latest" or a label) names. Raises SnapshotNotFound."""
    by_name = {snapshot.meta.name: snapshot for snapshot in snapshots}  # newest copy wins
    entries = [(p, True) for p in (parse_name(name) for name in by_name) if p is not None]
    chosen = choose_snapshot(entries, parse_snapshot_request(request))
    return by_name[chosen.filename]


def stream_restore(
    engine: Engine,
    config: Config,
    user: User,
    copy: OffsiteSnapshot,
    spec: RestoreSpec,
    tracker: ProcessTracker | None = None,
) -> Report:
    """Run the restore worker `spec` (`--to` or in place) with `copy`'s bytes pumped into
    its stream (counted and hashed here too; the worker verifies size, sha256 and
    quick_check before it writes anything final). Failures are in the report."""
    timeout = float(config.offsite.timeout_seconds if config.offsite else 3600)
    if spec.in_place:
        # The pre-restore snapshot goes to <dest>/<user>: made here on a rebuilt machine.
        try:
            prepare_user_dir(config.dest, user)
        except (DirectoryRefused, OSError) as error:
            return failed("restore", "permission", f"{config.dest}: {error}")
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    spec = replace(
        spec,
        snapshot=copy.meta.name,
        stream_fd=read_end,
        expected_bytes=copy.meta.size,
        expected_sha256=copy.meta.sha256,
        # In place, the worker also takes the pre-restore snapshot and swaps.
        timeout_seconds=timeout + (spec.timeout_seconds if spec.in_place else 0.0),
    )
    try:
        worker = _StreamWorker(spec, user, read_end, tracker)
    except BaseException:
        os.close(write_end)
        raise
    try:
        problem = _pump_download(engine, copy, write_end, timeout)
    except BaseException:
        # Ctrl-C in the CLI's main thread (or a bug): the worker goes too, and its temp
        # file with it, before this propagates.
        worker.stop()
        raise
    report = worker.report(
        spec.timeout_seconds if problem is None else WORKER_REPORT_TIMEOUT_SECONDS
    )
    if problem is not None and report.ok:
        return failed("restore", "verify_failed", f"offsite: {problem}")
    return report


def _pump_download(
    engine: Engine, copy: OffsiteSnapshot, write_end: int, timeout: float
) -> str | None:
    """`copy`'s bytes from the engine into `write_end` (closed here). The problem, if
    any: the engine is stopped then, before this returns or raises."""
    problem: str | None = None
    download = None
    try:
        download = engine.start_download(copy)
        try:
            pumped = pump(download.fd, write_end, copy.meta.size, time.monotonic() + timeout)
        except _Stalled:
            problem = f"timeout: no end of the stream after {timeout:.0f}s"
        except BrokenPipeError:
            # The worker stopped reading (its report says why): stop the engine too.
            download.abort()
            download = None
            problem = "the worker stopped reading the stream"
        else:
            if pumped.over_limit:
                problem = f"corrupt: the offsite copy is longer than {copy.meta.size} bytes"
        if problem is None and download is not None:
            with suppress(OSError):
                os.close(write_end)
            write_end = -1
            try:
                download.finish(timeout)
            except OffsiteError as error:
                problem = str(error)
            download = None
    except OffsiteError as error:
        problem = str(error)
    finally:
        if download is not None:
            download.abort()
        if write_end >= 0:
            with suppress(OSError):
                os.close(write_end)
    return problem


@dataclass(frozen=True)
class Drill:
    user: str
    name: str | None
    ok: bool
    message: str
    untrusted: tuple[str, ...] = ()  # copies whose seal does not verify (offsite/seal.py)


def drill_user(engine: Engine, config: Config, user: User) -> Drill:
    """Stream the user's newest trusted copy through sha256 (nothing is written
    anywhere). A copy whose seal does not verify fails the drill by itself."""
    timeout = float(config.offsite.timeout_seconds if config.offsite else 3600)
    try:
        everything = judged(engine, user.name)
    except OffsiteError as error:
        return Drill(user.name, None, False, str(error))
    forged = tuple(copy.meta.name for copy in everything if copy.trust == "forged")
    if forged:
        copies_word = "copy" if len(forged) == 1 else "copies"
        message = (
            f"untrusted: {len(forged)} {copies_word} whose seal does not verify "
            f"(never restored): {', '.join(forged[:5])}"
        )
        return Drill(user.name, forged[0], False, message, forged)
    copies = usable(everything)
    if not copies:
        return Drill(user.name, None, True, "no offsite copies")
    copy = max(copies, key=lambda c: (c.meta.time, c.meta.name))
    try:
        download = engine.start_download(copy)
    except OffsiteError as error:
        return Drill(user.name, copy.meta.name, False, str(error))
    try:
        try:
            pumped = pump(download.fd, None, copy.meta.size, time.monotonic() + timeout)
        except BaseException:
            # Stalled, or Ctrl-C in the CLI's main thread: the engine is stopped first.
            download.abort()
            raise
        if pumped.over_limit:
            download.abort()
        else:
            download.finish(timeout)
    except _Stalled:
        return Drill(user.name, copy.meta.name, False, f"timeout after {timeout:.0f}s")
    except OffsiteError as error:
        return Drill(user.name, copy.meta.name, False, str(error))
    if (
        pumped.over_limit
        or pumped.total != copy.meta.size
        or pumped.digest.hexdigest() != copy.meta.sha256
    ):
        return Drill(
            user.name,
            copy.meta.name,
            False,
            f"corrupt: {pumped.total} bytes read, recorded {copy.meta.size}; sha256 "
            f"{'matches' if pumped.digest.hexdigest() == copy.meta.sha256 else 'differs'}",
        )
    return Drill(user.name, copy.meta.name, True, f"{pumped.total} bytes, sha256 ok")
