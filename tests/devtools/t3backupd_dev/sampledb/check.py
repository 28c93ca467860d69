"""Consistency of a copy: ``check_consistent_prefix`` (a prefix of the writers' commits,
nothing torn) and ``content_digest`` (equal logical content).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from t3backupd_dev.sampledb.schema import LIVE_END, LIVE_PREFIX


def _open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open a copy for reading without creating anything beside it.

    With no ``-wal`` file there is no WAL content to miss, so ``immutable=1`` is exact
    and, unlike a plain read-only open of a WAL-mode file, leaves no ``-wal``/``-shm``
    behind (nor needs a writable directory). With a ``-wal`` present (a live database)
    it opens read-only the normal way.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such database file")
    uri = p.resolve().as_uri()
    flags = "mode=ro" if Path(f"{p}-wal").exists() else "mode=ro&immutable=1"
    conn = sqlite3.connect(f"{uri}?{flags}", uri=True, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def check_consistent_prefix(path: str | Path, *, integrity: bool = True) -> int:
    """Verify a copy holds a consistent prefix of the writers' commits.

    Checks (read-only): ``PRAGMA quick_check`` (unless ``integrity=False``); every
    ``live-`` event has its message and vice versa; each writer stream's versions run
    1..n without gaps; the ``live-`` events' sequences are contiguous; and every
    projector's ``last_applied_sequence`` equals the newest event's sequence.
    Returns that newest sequence (0 for an empty event log). Raises ``ValueError``
    describing the first violation.
    """
    conn = _open_readonly(path)
    try:
        conn.execute("BEGIN")  # one read transaction: all checks see one state
        if integrity:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if [r[0] for r in rows] != ["ok"]:
                raise ValueError(f"{path}: quick_check failed: {[r[0] for r in rows][:5]}")
        last = int(
            conn.execute("SELECT coalesce(max(sequence), 0) FROM orchestration_events").fetchone()[
                0
            ]
        )
        bounds = (LIVE_PREFIX, LIVE_END)
        n_events, lo, hi = conn.execute(
            "SELECT count(*), min(sequence), max(sequence) FROM orchestration_events"
            " WHERE stream_id >= ? AND stream_id < ?",
            bounds,
        ).fetchone()
        n_messages = int(
            conn.execute(
                "SELECT count(*) FROM projection_thread_messages"
                " WHERE message_id >= ? AND message_id < ?",
                bounds,
            ).fetchone()[0]
        )
        if n_events != n_messages:
            raise ValueError(
                f"{path}: torn snapshot: {n_events} writer events but {n_messages} writer messages"
            )
        orphans = conn.execute(
            "SELECT e.sequence FROM orchestration_events e"
            " LEFT JOIN projection_thread_messages m"
            " ON m.message_id = json_extract(e.payload_json, '$.messageId')"
            " WHERE e.stream_id >= ? AND e.stream_id < ? AND m.message_id IS NULL LIMIT 5",
            bounds,
        ).fetchall()
        if orphans:
            raise ValueError(
                f"{path}: writer events without their message: sequences {[r[0] for r in orphans]}"
            )
        if n_events:
            if hi - lo + 1 != n_events:
                raise ValueError(
                    f"{path}: writer sequences not contiguous: {n_events} events"
                    f" between {lo} and {hi}"
                )
            gaps = conn.execute(
                "SELECT stream_id, count(*), max(stream_version), min(stream_version)"
                " FROM orchestration_events WHERE stream_id >= ? AND stream_id < ?"
                " GROUP BY stream_id"
                " HAVING count(*) != max(stream_version) OR min(stream_version) != 1 LIMIT 5",
                bounds,
            ).fetchall()
            if gaps:
                raise ValueError(f"{path}: writer stream versions have gaps: {gaps}")
        stale = conn.execute(
            "SELECT projector, last_applied_sequence FROM projection_state"
            " WHERE last_applied_sequence != ? ORDER BY projector LIMIT 5",
            (last,),
        ).fetchall()
        if stale:
            raise ValueError(
                f"{path}: projection_state disagrees with the event log (last sequence"
                f" {last}): {stale}"
            )
        return last
    finally:
        conn.close()


def content_digest(path: str | Path) -> str:
    """SHA-256 over the schema and every row of every table, in rowid order.

    Equal digests mean equal logical content, whatever the file layout or journal mode.
    """
    conn = _open_readonly(path)
    try:
        conn.execute("BEGIN")
        h = hashlib.sha256()
        tables = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index')"
            " AND sql IS NOT NULL ORDER BY type, name"
        ).fetchall()
        for name, sql in tables:
            h.update(f"{name}\0{sql}\0".encode())
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
        ).fetchall():
            quoted = '"' + str(name).replace('"', '""') + '"'
            for row in conn.execute(f"SELECT * FROM {quoted} ORDER BY rowid"):  # noqa: S608 - name from sqlite_master
                h.update(repr(row).encode())
                h.update(b"\n")
        return h.hexdigest()
    finally:
        conn.close()
