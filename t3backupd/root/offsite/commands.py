"""The offsite CLI commands: `offsite init|check|sync`, `list --offsite`, and the source
of `restore --from offsite`. One line per user; an engine failure is one line naming
the repository and what failed; exit 0 ok, 1 failed (2 for usage, from the caller)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from t3backupd.core.config import Config
from t3backupd.core.errors import SnapshotNotFound, T3BackupError
from t3backupd.core.protocol import Report, RestoreSpec
from t3backupd.core.retention import is_future_dated
from t3backupd.core.selection import parse_snapshot_request, pick_before_schema
from t3backupd.core.usermap import User
from t3backupd.root.log import get_logger
from t3backupd.root.offsite import checkrecord, make_engine
from t3backupd.root.offsite.checks import check_and_record
from t3backupd.root.offsite.download import choose_copy, stream_restore
from t3backupd.root.offsite.engine import OffsiteError, OffsiteSnapshot
from t3backupd.root.offsite.seal import judged, usable
from t3backupd.root.offsite.sync import run_offsite_pass
from t3backupd.root.output import Output, age_column, listed_time, schema_column
from t3backupd.root.restore import AtMoment, StreamedCopy, chosen_at
from t3backupd.root.spawn import ProcessTracker
from t3backupd.root.usage import human

EXIT_OK, EXIT_FAILED = 0, 1
# How `list --offsite` marks a copy that is not sealed (offsite/seal.py).
TRUST_NOTES = {
    "legacy": "  (no seal: uploaded before seals)",
    "forged": "  UNTRUSTED: its seal does not verify, never restored",
}


def _error(message: str) -> None:
    sys.stderr.write(f"t3backupd: offsite {message}\n")


def init(config: Config, out: Output) -> int:
    tracker = ProcessTracker()
    engine = make_engine(config, tracker)
    try:
        with tracker.stop_all_if_interrupted():
            created = engine.init()
    except OffsiteError as error:
        _error(str(error))
        return EXIT_FAILED
    if created:
        out.result(f"created {engine.name} repository {engine.location}")
    else:
        out.result(f"{engine.name} repository {engine.location} exists already; nothing changed")
    return EXIT_OK


def sync(config: Config, users: Sequence[User], out: Output) -> int:
    # One tracker for the workers and the engine processes alike: a Ctrl-C stops both.
    tracker = ProcessTracker()
    engine = make_engine(config, tracker)
    outcomes = run_offsite_pass(engine, config, users, tracker)
    if config.offsite is not None and any(o.uploaded or o.snapshots for o in outcomes):
        checkrecord.copies_seen(config.offsite.cache_dir, time.time())
    for outcome in outcomes:
        added = sum(item.bytes_added for item in outcome.uploaded)
        copies = "?" if outcome.snapshots is None else str(outcome.snapshots)
        summary = (
            f"{len(outcome.uploaded)} uploaded ({added} bytes added), "
            f"{len(outcome.forgotten)} forgotten, {copies} offsite"
        )
        if outcome.ok:
            out.result(f"{outcome.user.name}: ok {summary}")
        else:
            first = outcome.failures[0]
            out.problem(f"{outcome.user.name}: FAILED {first}; {summary}")
    return EXIT_OK if all(outcome.ok for outcome in outcomes) else EXIT_FAILED


def check(config: Config, users: Sequence[User], out: Output) -> int:
    # Ctrl-C: every engine process this thread started is stopped and reaped first.
    tracker = ProcessTracker()
    with tracker.stop_all_if_interrupted():
        return _check(config, users, tracker, out)


def _check(config: Config, users: Sequence[User], tracker: ProcessTracker, out: Output) -> int:
    engine = make_engine(config, tracker)
    result = check_and_record(engine, config, users)
    if result.error is None:
        out.result(f"{engine.location}: {engine.name} check ok (read data subset {result.subset})")
    else:
        _error(f"check failed: {result.error}")
    for drill in result.drills:
        word = "ok" if drill.ok else "FAILED"
        line = f"{drill.user}: drill {word} {drill.name or '-'}: {drill.message}"
        (out.result if drill.ok else out.problem)(line)
    get_logger().info("offsite check", ok=result.ok, users=len(users))
    return EXIT_OK if result.ok else EXIT_FAILED


def _copy_json(snapshot: OffsiteSnapshot) -> dict[str, object]:
    return {
        "name": snapshot.meta.name,
        "id": snapshot.id,
        "time": datetime.fromtimestamp(snapshot.meta.time, UTC).isoformat(),
        "timestamp": snapshot.meta.time,
        "bytes": snapshot.meta.size,
        "sha256": snapshot.meta.sha256,
        "label": snapshot.meta.label,
        "host": snapshot.host,
        "schema_version": snapshot.meta.schema_version,
        "trust": snapshot.trust,
    }


def list_offsite(config: Config, users: Sequence[User], as_json: bool, out: Output) -> int:
    tracker = ProcessTracker()
    engine = make_engine(config, tracker)
    try:
        with tracker.stop_all_if_interrupted():
            copies = judged(engine)
    except OffsiteError as error:
        _error(f"cannot list: {error}")
        return EXIT_FAILED
    by_user: dict[str, list[OffsiteSnapshot]] = {user.name: [] for user in users}
    for copy in copies:
        if copy.meta.user in by_user:
            by_user[copy.meta.user].append(copy)
    if as_json:
        payload = {
            "repository": engine.location,
            "users": [
                {
                    "user": user.name,
                    "snapshots": [_copy_json(copy) for copy in reversed(by_user[user.name])],
                }
                for user in users
            ],
        }
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    now = time.time()
    moment = datetime.fromtimestamp(now, UTC)
    for user in users:
        mine = by_user[user.name]
        if not mine:
            out.result(f"{user.name}: no offsite copies")
            continue
        plural = "y" if len(mine) == 1 else "ies"
        out.result(f"{user.name}: {len(mine)} offsite cop{plural}, newest first")
        for copy in reversed(mine):
            label = f"  [{copy.meta.label}]" if copy.meta.label else ""
            label += TRUST_NOTES.get(copy.trust, "")
            future = is_future_dated(datetime.fromtimestamp(copy.meta.time, UTC), moment)
            age = age_column(copy.meta.time, now, future)
            out.result(
                f"  {copy.meta.name:<52} {listed_time(copy.meta.time)}  {age:>10}  "
                f"{human(copy.meta.size):>10}{schema_column(copy.meta.schema_version)}  "
                f"{copy.listed_id}{label}"
            )
    return EXIT_OK


def streamed_copy(
    config: Config,
    user: User,
    request: str,
    moment: AtMoment | None = None,
    before_schema: int | None = None,
) -> StreamedCopy:
    """The offsite copy of `user` that `--snapshot request` (or `--at`, or
    `--before-schema`: by the schema version in the copy's sealed record) names, as the
    source of a restore (`root.restore.restore_to` / `restore_in_place`), whatever the
    engine. Raises SnapshotNotFound or T3BackupError (one line, exit 1)."""
    parse_snapshot_request(request)
    tracker = ProcessTracker()  # the engine processes and the restore worker
    engine = make_engine(config, tracker)
    try:
        with tracker.stop_all_if_interrupted():
            everything = judged(engine, user.name)
    except OffsiteError as error:
        raise T3BackupError(f"offsite: cannot list {user.name}'s copies: {error}") from None
    copies = usable(everything)
    try:
        if before_schema is not None:
            copy = _newest_before_schema(copies, before_schema)
        elif moment is not None:
            by_name = {copy.meta.name: copy for copy in copies}  # newest copy of a name
            copy = by_name[
                chosen_at(moment, [(c.meta.time, c.meta.name) for c in by_name.values()])
            ]
        else:
            copy = choose_copy(copies, request)
    except SnapshotNotFound as error:
        _refuse_untrusted(everything, request, user)
        raise SnapshotNotFound(f"offsite ({engine.location}): {error}") from None
    if copy.trust == "legacy":
        _error(f"{user.name}: {copy.meta.name} has no seal (uploaded before seals): restoring it")
    skipped = [
        c.meta.name for c in everything if c.trust == "forged" and c.meta.time > copy.meta.time
    ]
    if skipped:
        _error(
            f"{user.name}: skipped {len(skipped)} newer untrusted copies (seal does not "
            f"verify): {', '.join(skipped[:3])}"
        )

    def run(spec: RestoreSpec) -> Report:
        with tracker.stop_all_if_interrupted():
            return stream_restore(engine, config, user, copy, spec, tracker)

    return StreamedCopy(copy.meta.name, run)


def _newest_before_schema(copies: Sequence[OffsiteSnapshot], version: int) -> OffsiteSnapshot:
    """The newest usable copy whose sealed record's schema version is below `version`."""
    by_name = {copy.meta.name: copy for copy in copies}  # newest copy of a name
    found = [(c.meta.time, c.meta.name, c.meta.schema_version) for c in by_name.values()]
    return by_name[pick_before_schema(found, version, datetime.now(UTC))]


def _refuse_untrusted(copies: Sequence[OffsiteSnapshot], request: str, user: User) -> None:
    """One line when what `request` names exists only as copies that do not verify."""
    forged = [copy for copy in copies if copy.trust == "forged"]
    try:
        copy = choose_copy(forged, request)
    except SnapshotNotFound:
        return
    raise T3BackupError(
        f"offsite: {user.name}'s copy {copy.meta.name} ({copy.id[:8]}) does not verify: "
        "its seal does not match its record (changed in the repository, or not uploaded "
        "by this host's root); not restored"
    )
