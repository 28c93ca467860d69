"""The worker: `python -m t3backupd.worker`, run by the parent *as the owning user*.

Reads one JobSpec (JSON) on stdin, does the job in the user's files, and writes one
JSON Report line on stdout. On SIGTERM (the parent's stop or timeout) it removes its
temp files, reports `timeout` and exits at once. SIGHUP and SIGUSR1 (the daemon's reload
and pass signals, which `systemctl kill` sends to the whole unit) are ignored: see
`__main__`, which ignores them before anything else is imported.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
from contextlib import suppress
from dataclasses import replace
from types import FrameType

from t3backupd.core.protocol import (
    AdoptSpec,
    InventorySpec,
    JobSpec,
    Report,
    RestoreSpec,
    SnapshotSpec,
    StreamSpec,
    VerifySpec,
    failed,
)
from t3backupd.worker import files as ops
from t3backupd.worker.job import Job

MAX_SPEC_BYTES = 1 << 16
EXIT_STOPPED = 3
# How long a stopping worker waits for its job thread to end (the parent waits 5 s).
JOB_STOP_WAIT_SECONDS = 2.0


def dispatch(job: Job) -> Report:
    """Run the job its spec's type names. Each job's module is imported here, on use: a
    worker starts per user and pass, and a snapshot worker (the common case) starts
    faster without the others (bench/pass.py, fixed cost)."""
    match job.spec:
        case SnapshotSpec() as spec:
            from t3backupd.worker.snapshot import snapshot_job

            return snapshot_job(job, spec)
        case InventorySpec() as spec:
            from t3backupd.worker.inventory import inventory_job

            return inventory_job(job, spec)
        case VerifySpec() as spec:
            from t3backupd.worker.verify import verify_job

            return verify_job(job, spec)
        case RestoreSpec() as spec:
            from t3backupd.worker.restore import restore_job

            return restore_job(job, spec)
        case AdoptSpec() as spec:
            from t3backupd.worker.adopt import adopt_job

            return adopt_job(job, spec)
        case StreamSpec() as spec:
            from t3backupd.worker.stream import stream_job

            return stream_job(job, spec)
    raise ValueError(f"no job for action {job.spec.action!r}")  # from_json refuses these


def run_job(job: Job) -> Report:
    """Run the job, turning expected failures into a failure report; snapshot and
    inventory reports carry the user's directory usage (what fills the destination)."""
    report = _run_job(job)
    if job.spec.action in ("snapshot", "inventory"):
        report = replace(report, dir_bytes=ops.dir_usage(job.spec.dest_dir))
    return report


def _run_job(job: Job) -> Report:
    action = job.spec.action
    try:
        return dispatch(job)
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
            # worker_crashed and logs the stderr tail. (Imported only then: start-up.)
            import traceback

            traceback.print_exc()
            job.temps.remove_all()

    worker = threading.Thread(target=target, name="job", daemon=True)
    worker.start()
    deadline = job.started + spec.timeout_seconds
    while worker.is_alive():
        worker.join(0.1)
        if stop.is_set() or time.monotonic() > deadline:
            # Interrupt SQLite where it listens, drop our temp files (no new one can be
            # made from here on), give the job thread a moment to end (it may be between
            # two steps), drop what it left, and leave: the OS releases the source's read
            # lock and our flock on exit. Well inside the parent's SIGTERM grace.
            for connection in list(job.connections):
                with suppress(sqlite3.Error):
                    connection.interrupt()
            job.temps.close()
            worker.join(JOB_STOP_WAIT_SECONDS)
            job.temps.remove_all()
            why = "stopped by signal" if stop.is_set() else "timed out"
            _emit(failed(spec.action, "timeout", f"{why} after {job.elapsed():.1f}s"))
            os._exit(EXIT_STOPPED)
    if not result:
        return 1
    _emit(result[0])
    return 0
