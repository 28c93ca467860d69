"""Worker job "stream", run as the user: send one published snapshot down a pipe.

The root side hands the worker the write end of a pipe (`spec.stream_fd`) and the
snapshot's file name. The worker opens it without following links (a regular file
only), writes one header line -- `{"name", "size", "sha256"}`, the digest recorded in
`NAME.sha256` at publish time -- then exactly the file's bytes, and reports the size and
sha256 of what it streamed. The root side trusts none of it beyond this user: it counts
and hashes the bytes itself.
"""

from __future__ import annotations

import hashlib
import json
import os

from t3backupd.core.naming import parse_name
from t3backupd.core.protocol import Report, SnapshotInfo, StreamSpec
from t3backupd.worker import files as ops
from t3backupd.worker.job import Job
from t3backupd.worker.verify import open_snapshot, read_recorded_digest

CHUNK_BYTES = 1 << 20


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def stream_job(job: Job, spec: StreamSpec) -> Report:
    """Worker job "stream": header line, then the snapshot's bytes, on `spec.stream_fd`."""
    name = spec.snapshot
    parsed = parse_name(name)
    if parsed is None or spec.stream_fd < 0:
        raise ops.StepFailed("not_found", f"{name!r} is not a snapshot name")
    out = spec.stream_fd
    ops.lower_priority()  # as a snapshot does: reading the whole file yields to the app
    try:
        try:
            fd, info = open_snapshot(os.path.join(spec.dest_dir, name))
        except FileNotFoundError:
            raise ops.StepFailed("not_found", f"{name} does not exist (pruned?)") from None
        try:
            recorded = read_recorded_digest(spec.dest_dir, name)
            if recorded is None:
                raise ops.StepFailed(
                    "verify_failed", f"{name} has no valid {name}.sha256; not uploaded"
                )
            header = {"name": name, "size": info.st_size, "sha256": recorded}
            _write_all(out, json.dumps(header).encode() + b"\n")
            digest = hashlib.sha256()
            total = 0
            while chunk := os.read(fd, CHUNK_BYTES):
                digest.update(chunk)
                _write_all(out, chunk)
                total += len(chunk)
        finally:
            os.close(fd)
    finally:
        os.close(out)
    return Report(
        action="stream",
        status="ok",
        message=f"streamed {total} bytes of {name}",
        snapshot=SnapshotInfo(
            name=name, time=parsed.time.timestamp(), bytes=total, label=parsed.label
        ),
        duration_s=round(job.elapsed(), 6),
        extra={"sha256": digest.hexdigest()},
    )
