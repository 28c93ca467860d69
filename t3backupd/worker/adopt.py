"""Worker job "adopt", run as the user: give the legacy script's snapshots a checksum.

For each regular snapshot in the user's directory that has no `NAME.sha256` at all: a
full `integrity_check` and its sha256 (the verify job's own check); only if the check
passes is `NAME.sha256` written, to a temp file first and then linked to its name, so an
existing checksum file (valid or not, even one that appears meanwhile) is never
replaced. Takes the user's lock, so no snapshot pass prunes underneath it.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress

from t3backupd.core.naming import CHECKSUM_SUFFIX
from t3backupd.core.protocol import AdoptSpec, Report, VerifyResult
from t3backupd.worker import files as ops
from t3backupd.worker.job import Job
from t3backupd.worker.verify import check_snapshot

ADOPTED = "checksum written"


def write_checksum(dest_dir: str, name: str, digest: str, job: Job) -> bool:
    """Create `dest_dir/NAME.sha256` holding `digest`; False if one exists already."""
    temp = ops.create_temp(dest_dir)
    job.temps.add(temp)
    try:
        with open(temp, "w", encoding="ascii") as handle:
            handle.write(f"{digest}  {name}\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, os.path.join(dest_dir, name + CHECKSUM_SUFFIX))
        except FileExistsError:
            return False
        return True
    finally:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        job.temps.discard(temp)


def adopt_job(job: Job, spec: AdoptSpec) -> Report:
    """Worker job "adopt": checksum every snapshot that lacks one and passes the check.

    `verified` lists each snapshot that had no checksum: outcome `ok` (detail
    "checksum written") when adopted, else what the check found (nothing written).
    """
    results: list[VerifyResult] = []
    with ops.user_dir_lock(spec.dest_dir):
        names = set(os.listdir(spec.dest_dir))
        for parsed, info in ops.scan(spec.dest_dir):
            if parsed.checksum_filename in names:
                continue  # has one (valid or not): verify's business, never replaced
            name = parsed.filename
            if not stat.S_ISREG(info.st_mode):
                results.append(VerifyResult(name, "unreadable", "not a regular file"))
                continue
            checked = check_snapshot(spec.dest_dir, name, "full")
            if checked is None:
                continue  # vanished meanwhile
            if checked.result.outcome != "missing_checksum" or checked.digest is None:
                # integrity errors, unreadable, or a checksum that appeared meanwhile
                results.append(checked.result)
                continue
            if write_checksum(spec.dest_dir, name, checked.digest, job):
                results.append(VerifyResult(name, "ok", ADOPTED))
        if any(result.detail == ADOPTED for result in results):
            ops.fsync_path(spec.dest_dir, directory=True)
    adopted = sum(1 for result in results if result.outcome == "ok")
    return Report(
        action="adopt",
        status="ok",
        message=f"{adopted} snapshot(s) adopted, {len(results) - adopted} refused",
        duration_s=round(job.elapsed(), 6),
        snapshots=tuple(ops.inventory(spec.dest_dir)),
        verified=tuple(results),
    )
