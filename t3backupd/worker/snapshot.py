"""Worker job "snapshot", run as the user: lock, clean up, copy, verify, publish, prune."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from t3backupd.core.naming import format_name, guard_label, guard_version, parse_name
from t3backupd.core.protocol import Report, SnapshotSpec
from t3backupd.core.retention import RetentionPolicy, select_expired, select_expired_guards
from t3backupd.worker import files as ops
from t3backupd.worker.job import Job, fault_point


def snapshot_job(job: Job, spec: SnapshotSpec) -> Report:
    """Lock, clean up, copy, verify, publish, prune — one user's snapshot."""
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
            fault_point(spec, "after_copy")
            problems, digest = ops.seal_and_verify(temp, spec.verify)
            fault_point(spec, "during_verify")
            if problems:
                raise ops.StepFailed("verify_failed", "; ".join(problems[:5]))
            schema = ops.schema_version(temp, spec.schema_version)
            name = ops.publish(spec.dest_dir, temp, when, spec.label, digest, job.temps)
            fault_point(spec, "after_publish")
        finally:
            job.temps.remove_all()
        guard = keep_guard(spec, schema, job)
        listing = [parsed for parsed, _ in ops.scan(spec.dest_dir)]
        expired = select_expired(
            listing,
            RetentionPolicy(
                spec.keep, spec.keep_hourly, spec.keep_daily, spec.keep_weekly, spec.keep_monthly
            ),
            protect={name, *spec.protect, *downgrade_hold(spec, schema)},
            now=when,
        )
        expired += select_expired_guards(listing, spec.keep_schema_guards)
        pruned = ops.prune(spec.dest_dir, expired)
        kept = ops.inventory(spec.dest_dir)
        listed = next(info for info in kept if info.name == name)
        # The digest hashed from the bytes just published, for root's ledger, and the
        # app's schema version read from them.
        published = replace(listed, sha256=digest, schema_version=schema)
    return Report(
        action="snapshot",
        status="ok",
        snapshot=published,
        source_bytes=source_bytes,
        duration_s=round(job.elapsed(), 6),
        snapshots=tuple(kept),
        pruned=tuple(pruned),
        extra={"schema_guard": guard} if guard is not None else {},
    )


def downgrade_hold(spec: SnapshotSpec, schema: int | None) -> tuple[str, ...]:
    """What a backwards schema step (the new snapshot's version below root's record of
    the previous one) keeps from retention in this very pass."""
    old = spec.previous_schema
    backwards = schema is not None and old is not None and schema < old
    return spec.protect_on_downgrade if backwards else ()


def keep_guard(spec: SnapshotSpec, schema: int | None, job: Job) -> str | None:
    """On a forward schema step (root's record of the previous snapshot has a lower
    version than the one just written), the previous snapshot linked to
    `<its time>--schema-<old>`: the last one that verified with the old version."""
    previous = parse_name(spec.previous) if spec.previous is not None else None
    old = spec.previous_schema
    if previous is None or old is None or schema is None or spec.previous_sha256 is None:
        return None
    if schema <= old or guard_version(previous.label) is not None:
        return None
    guard = format_name(previous.time, guard_label(old))
    if not ops.keep_as_guard(spec.dest_dir, previous.filename, guard, spec.previous_sha256,
                             job.temps):  # fmt: skip
        return None
    return guard
