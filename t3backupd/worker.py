"""The worker: `python -m t3backupd.worker`, run by the parent *as the owning user*.

Reads one JobSpec (JSON) on stdin, does the job in the user's files, and writes one
JSON Report line on stdout. On SIGTERM (the parent's stop or timeout) it removes its
temp files, reports `timeout` and exits at once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from types import FrameType

from t3backupd import snapshot as ops
from t3backupd.protocol import JobSpec, Report, failed
from t3backupd.retention import RetentionPolicy, select_expired

MAX_SPEC_BYTES = 1 << 16
EXIT_STOPPED = 3


class Job:
    """One job's state shared between the job thread and the main (signal) thread."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.temps = ops.TempFiles()
        self.connections: list[sqlite3.Connection] = []
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _fault_point(spec: JobSpec, point: str) -> None:
    """Die here, as a crash would, if the (test-only) spec asks for it: no cleanup, no
    report. See JobSpec.fault."""
    if spec.fault == point:
        os.kill(os.getpid(), signal.SIGKILL)


def snapshot_job(job: Job) -> Report:
    """Lock, clean up, copy, verify, publish, prune — one user's snapshot."""
    spec = job.spec
    when = datetime.now(UTC)
    ops.lower_priority()
    with ops.user_dir_lock(spec.dest_dir):
        ops.secure_user_dir(spec.dest_dir)
        ops.remove_stale_temps(spec.dest_dir)
        try:
            source_bytes = ops.source_size(spec.source)
        except FileNotFoundError:
            return Report(
                action="snapshot",
                status="skipped",
                reason="no_source",
                message=f"no database at {spec.source}",
                snapshots=tuple(ops.inventory(spec.dest_dir)),
            )
        ops.check_free_space(spec.dest_dir, source_bytes, spec.min_free_bytes)
        temp = ops.create_temp(spec.dest_dir)
        job.temps.add(temp)
        try:
            ops.copy_database(spec.source, temp, spec.method, spec.timeout_seconds, job.connections)
            _fault_point(spec, "after_copy")
            problems, digest = ops.seal_and_verify(temp, spec.verify)
            _fault_point(spec, "during_verify")
            if problems:
                raise ops.StepFailed("verify_failed", "; ".join(problems[:5]))
            name = ops.publish(spec.dest_dir, temp, when, spec.label, digest, job.temps)
            _fault_point(spec, "after_publish")
        finally:
            job.temps.remove_all()
        expired = select_expired(
            [parsed for parsed, _ in ops.scan(spec.dest_dir)],
            RetentionPolicy(spec.keep, spec.keep_daily, spec.keep_weekly, spec.keep_monthly),
            protect={name},
        )
        pruned = ops.prune(spec.dest_dir, expired)
        kept = ops.inventory(spec.dest_dir)
        published = next(info for info in kept if info.name == name)
    return Report(
        action="snapshot",
        status="ok",
        snapshot=published,
        source_bytes=source_bytes,
        duration_s=round(job.elapsed(), 6),
        snapshots=tuple(kept),
        pruned=tuple(pruned),
    )


def inventory_job(job: Job) -> Report:
    return Report(
        action="inventory", status="ok", snapshots=tuple(ops.inventory(job.spec.dest_dir))
    )


def verify_action(job: Job) -> Report:
    # Imported on use: a snapshot worker (the common case) starts faster without them.
    from t3backupd.verify import verify_job

    return verify_job(job)


def restore_action(job: Job) -> Report:
    from t3backupd.restore import restore_job

    return restore_job(job)


JOBS: dict[str, Callable[[Job], Report]] = {
    "snapshot": snapshot_job,
    "inventory": inventory_job,
    "verify": verify_action,
    "restore": restore_action,
}


def run_job(job: Job) -> Report:
    """Run the job, turning expected failures into a failure report."""
    action = job.spec.action
    try:
        return JOBS[action](job)
    except ops.StepFailed as error:
        return failed(action, error.reason, error.message, duration_s=job.elapsed())
    except sqlite3.Error as error:
        reason = ops.classify_sqlite_error(error)
        return failed(action, reason, f"sqlite: {error}", duration_s=job.elapsed())
    except OSError as error:
        reason = ops.classify_os_error(error)
        return failed(
            action, reason, f"{error.strerror}: {error.filename}", duration_s=job.elapsed()
        )


def _emit(report: Report) -> None:
    sys.stdout.write(report.to_json() + "\n")
    sys.stdout.flush()


def main() -> int:
    """Entry point. Exit 0 when a report was written (even a failure), 3 when stopped."""
    spec = JobSpec.from_json(sys.stdin.buffer.read(MAX_SPEC_BYTES))
    job = Job(spec)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    result: list[Report] = []

    def target() -> None:
        try:
            result.append(run_job(job))
        except Exception:
            # A bug: leave the traceback on stderr and no report, so the parent counts
            # worker_crashed and logs the stderr tail.
            traceback.print_exc()
            job.temps.remove_all()

    worker = threading.Thread(target=target, name="job", daemon=True)
    worker.start()
    deadline = job.started + spec.timeout_seconds
    while worker.is_alive():
        worker.join(0.1)
        if stop.is_set() or time.monotonic() > deadline:
            # Interrupt SQLite where it listens, drop our temp files, and leave at once:
            # the OS releases the source's read lock and our flock on exit.
            for connection in list(job.connections):
                with suppress(sqlite3.Error):
                    connection.interrupt()
            job.temps.remove_all()
            why = "stopped by signal" if stop.is_set() else "timed out"
            _emit(failed(spec.action, "timeout", f"{why} after {job.elapsed():.1f}s"))
            os._exit(EXIT_STOPPED)
    if not result:
        return 1
    _emit(result[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
