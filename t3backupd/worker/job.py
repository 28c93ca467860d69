"""One job's state inside the worker, shared by the job thread and the signal thread."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

from t3backupd.core.protocol import FaultPoint, JobSpec, SnapshotSpec
from t3backupd.worker.files import TempFiles


class Job:
    """One job's state shared between the job thread and the main (signal) thread."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.temps = TempFiles()
        self.connections: list[sqlite3.Connection] = []
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def fault_point(spec: SnapshotSpec, point: FaultPoint) -> None:
    """Die here, as a crash would, if the (test-only) spec asks for it: no cleanup, no
    report. See SnapshotSpec.fault."""
    if spec.fault == point:
        os.kill(os.getpid(), signal.SIGKILL)
