"""One snapshot into the repository: received from a worker as the user into root's
spool, verified against what root published, only then sent to the engine.

The two halves run at two paces on purpose: receiving is at the user's pace (bounded
by `offsite.timeout_seconds`, `offsite.stall_seconds` and the end of the user's turn),
sending at root's, so no engine process or repository lock ever waits on a user. The
size and sha256 the bytes are checked against come from root's ledger (`Entry`), never
from `NAME.sha256` or the worker's header (a header that differs is `corrupt`); the page
size comes from the bytes in the spool.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, replace

from t3backupd.core.config import Config
from t3backupd.core.jobs import user_dir
from t3backupd.core.naming import parse_name
from t3backupd.core.offsite_config import OffsiteConfig
from t3backupd.core.protocol import StreamSpec
from t3backupd.core.usermap import User
from t3backupd.root.ledger import Entry
from t3backupd.root.offsite.engine import (
    SQLITE_HEADER_BYTES,
    Engine,
    OffsiteError,
    SnapshotMeta,
    sqlite_page_size,
)
from t3backupd.root.offsite.pump import Pumped, Stalled, pump, read_header
from t3backupd.root.offsite.seal import engine_key, sealed
from t3backupd.root.offsite.spool import open_spool
from t3backupd.root.offsite.streamworker import WORKER_REPORT_TIMEOUT_SECONDS, StreamWorker
from t3backupd.root.spawn import ProcessTracker


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
    tracker: ProcessTracker | None,
    until: float,
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
    until: float,
) -> tuple[SnapshotMeta, int]:
    """The snapshot streamed by a worker as the user, counted, hashed and verified into
    a spool file (returned, at its end): (its meta with the page size, the spool fd).
    The worker has ended (or been stopped) before this returns or raises."""
    name = expected.name
    timeout, stall = float(offsite.timeout_seconds), float(offsite.stall_seconds)
    clock = time.monotonic()
    deadline = min(clock + timeout, until)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        worker = StreamWorker(
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
            header, first = read_header(read_end, min(deadline, clock + stall))
        except Stalled:
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
        except Stalled:
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
        except Stalled:
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
