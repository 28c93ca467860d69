"""Worker job "inventory", run as the user: the snapshots in their directory."""

from __future__ import annotations

from t3backupd.core.protocol import InventorySpec, Report
from t3backupd.worker import files as ops
from t3backupd.worker.job import Job


def inventory_job(job: Job, spec: InventorySpec) -> Report:
    return Report(action="inventory", status="ok", snapshots=tuple(ops.inventory(spec.dest_dir)))
