"""Copies back out of the repository: `restore --from offsite` and the restore drill.

Both read the engine's stream through the deadline-bound pump, counted and hashed. A
restore pumps it into a worker as the user, which writes and verifies it as a local
`restore --to` does (root never opens the user's path); the drill pumps it nowhere and
only compares the digest, so a check can prove each user's newest copy restorable
without writing anything. A copy whose seal does not verify is never restored and
fails the drill by itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, replace

from t3backupd.core.config import Config
from t3backupd.core.naming import parse_name
from t3backupd.core.protocol import Report, RestoreSpec, failed
from t3backupd.core.selection import choose_snapshot, parse_snapshot_request
from t3backupd.core.usermap import User
from t3backupd.root.offsite.engine import Engine, OffsiteError, OffsiteSnapshot
from t3backupd.root.offsite.pump import Stalled, pump
from t3backupd.root.offsite.seal import judged, usable
from t3backupd.root.offsite.streamworker import WORKER_REPORT_TIMEOUT_SECONDS, StreamWorker
from t3backupd.root.spawn import DirectoryRefused, ProcessTracker, prepare_user_dir


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
        worker = StreamWorker(spec, user, read_end, tracker)
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
        except Stalled:
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
    except Stalled:
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
