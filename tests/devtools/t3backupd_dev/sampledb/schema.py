"""T3's database shape: tables, indexes, migration ledger and the app's pragmas.

``open_app_db`` opens (creating if needed) a state database the way ``t3-serve`` does;
the live writer's rows are recognisable by ``LIVE_PREFIX``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

MIB = 1 << 20

#: The pragmas ``t3-serve`` sets on every connection (journal_size_limit = 32 MiB).
APP_PRAGMAS: tuple[tuple[str, str | int], ...] = (
    ("journal_mode", "WAL"),
    ("busy_timeout", 5000),
    ("foreign_keys", "ON"),
    ("journal_size_limit", 32 * MIB),
)

#: Thread ids and message ids written by :func:`run_writer` start with this.
LIVE_PREFIX = "live-"
# The smallest string greater than every string starting with LIVE_PREFIX
# ("." follows "-" in ASCII): lets range queries use the indexes.
LIVE_END = "live."

#: Projector names kept in ``projection_state`` (one row each).
PROJECTORS: tuple[str, ...] = (
    "projection.projects",
    "projection.threads",
    "projection.thread-messages",
    "projection.thread-activities",
    "projection.thread-sessions",
    "projection.thread-turns",
    "projection.pending-approvals",
    "projection.thread-proposed-plans",
    "projection.checkpoints",
)

_DDL: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS effect_sql_migrations (
      migration_id INTEGER PRIMARY KEY NOT NULL,
      created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
      name VARCHAR(255) NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS orchestration_events (
      sequence INTEGER PRIMARY KEY AUTOINCREMENT,
      event_id TEXT NOT NULL UNIQUE,
      aggregate_kind TEXT NOT NULL,
      stream_id TEXT NOT NULL,
      stream_version INTEGER NOT NULL,
      event_type TEXT NOT NULL,
      occurred_at TEXT NOT NULL,
      command_id TEXT,
      causation_event_id TEXT,
      correlation_id TEXT,
      actor_kind TEXT NOT NULL,
      payload_json TEXT NOT NULL,
      metadata_json TEXT NOT NULL,
      UNIQUE (stream_id, stream_version)
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_orch_events_stream_sequence
      ON orchestration_events(aggregate_kind, stream_id, sequence)
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_orch_events_command_id
      ON orchestration_events(command_id)
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_orch_events_correlation_id
      ON orchestration_events(correlation_id)
    """,
    """
    CREATE TABLE IF NOT EXISTS orchestration_command_receipts (
      command_id TEXT PRIMARY KEY,
      aggregate_kind TEXT NOT NULL,
      aggregate_id TEXT NOT NULL,
      accepted_at TEXT NOT NULL,
      result_sequence INTEGER NOT NULL,
      status TEXT NOT NULL,
      error TEXT
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_orch_command_receipts_aggregate
      ON orchestration_command_receipts(aggregate_kind, aggregate_id)
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_orch_command_receipts_sequence
      ON orchestration_command_receipts(result_sequence)
    """,
    """
    CREATE TABLE IF NOT EXISTS checkpoint_diff_blobs (
      thread_id TEXT NOT NULL,
      from_turn_count INTEGER NOT NULL,
      to_turn_count INTEGER NOT NULL,
      diff TEXT NOT NULL,
      created_at TEXT NOT NULL,
      UNIQUE (thread_id, from_turn_count, to_turn_count)
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_checkpoint_diff_blobs_thread_to_turn
      ON checkpoint_diff_blobs(thread_id, to_turn_count)
    """,
    """
    CREATE TABLE IF NOT EXISTS provider_session_runtime (
      thread_id TEXT PRIMARY KEY,
      provider_name TEXT NOT NULL,
      adapter_key TEXT NOT NULL,
      runtime_mode TEXT NOT NULL DEFAULT 'full-access',
      status TEXT NOT NULL,
      last_seen_at TEXT NOT NULL,
      resume_cursor_json TEXT,
      runtime_payload_json TEXT
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_provider_session_runtime_status
      ON provider_session_runtime(status)
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_projects (
      project_id TEXT PRIMARY KEY,
      title TEXT NOT NULL,
      workspace_root TEXT NOT NULL,
      default_model TEXT,
      scripts_json TEXT NOT NULL,
      created_at TEXT NOT NULL,
      updated_at TEXT NOT NULL,
      deleted_at TEXT
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_projection_projects_updated_at
      ON projection_projects(updated_at)
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_threads (
      thread_id TEXT PRIMARY KEY,
      project_id TEXT NOT NULL,
      title TEXT NOT NULL,
      model TEXT NOT NULL,
      runtime_mode TEXT NOT NULL DEFAULT 'full-access',
      interaction_mode TEXT NOT NULL DEFAULT 'default',
      branch TEXT,
      worktree_path TEXT,
      latest_turn_id TEXT,
      created_at TEXT NOT NULL,
      updated_at TEXT NOT NULL,
      archived_at TEXT,
      deleted_at TEXT
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_projection_threads_project_id
      ON projection_threads(project_id)
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_thread_messages (
      message_id TEXT PRIMARY KEY,
      thread_id TEXT NOT NULL,
      turn_id TEXT,
      role TEXT NOT NULL,
      text TEXT NOT NULL,
      attachments_json TEXT,
      is_streaming INTEGER NOT NULL,
      created_at TEXT NOT NULL,
      updated_at TEXT NOT NULL
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_projection_thread_messages_thread_created
      ON projection_thread_messages(thread_id, created_at)
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_thread_activities (
      activity_id TEXT PRIMARY KEY,
      thread_id TEXT NOT NULL,
      turn_id TEXT,
      tone TEXT NOT NULL,
      kind TEXT NOT NULL,
      summary TEXT NOT NULL,
      payload_json TEXT NOT NULL,
      sequence INTEGER,
      created_at TEXT NOT NULL
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_projection_thread_activities_thread_created
      ON projection_thread_activities(thread_id, created_at)
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_thread_sessions (
      thread_id TEXT PRIMARY KEY,
      status TEXT NOT NULL,
      provider_name TEXT,
      provider_session_id TEXT,
      provider_thread_id TEXT,
      runtime_mode TEXT NOT NULL DEFAULT 'full-access',
      active_turn_id TEXT,
      last_error TEXT,
      updated_at TEXT NOT NULL
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_projection_thread_sessions_provider_session
      ON projection_thread_sessions(provider_session_id)
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_turns (
      row_id INTEGER PRIMARY KEY AUTOINCREMENT,
      thread_id TEXT NOT NULL,
      turn_id TEXT,
      pending_message_id TEXT,
      assistant_message_id TEXT,
      state TEXT NOT NULL,
      requested_at TEXT NOT NULL,
      started_at TEXT,
      completed_at TEXT,
      checkpoint_turn_count INTEGER,
      checkpoint_ref TEXT,
      checkpoint_status TEXT,
      checkpoint_files_json TEXT NOT NULL,
      UNIQUE (thread_id, turn_id),
      UNIQUE (thread_id, checkpoint_turn_count)
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_projection_turns_thread_requested
      ON projection_turns(thread_id, requested_at)
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_pending_approvals (
      request_id TEXT PRIMARY KEY,
      thread_id TEXT NOT NULL,
      turn_id TEXT,
      status TEXT NOT NULL,
      decision TEXT,
      created_at TEXT NOT NULL,
      resolved_at TEXT
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_projection_pending_approvals_thread_status
      ON projection_pending_approvals(thread_id, status)
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_thread_proposed_plans (
      plan_id TEXT PRIMARY KEY,
      thread_id TEXT NOT NULL,
      turn_id TEXT,
      plan_markdown TEXT NOT NULL,
      implemented_at TEXT,
      created_at TEXT NOT NULL,
      updated_at TEXT NOT NULL
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_projection_thread_proposed_plans_thread_created
      ON projection_thread_proposed_plans(thread_id, created_at)
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_state (
      projector TEXT PRIMARY KEY,
      last_applied_sequence INTEGER NOT NULL,
      updated_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS auth_sessions (
      session_id TEXT PRIMARY KEY,
      subject TEXT NOT NULL,
      role TEXT NOT NULL,
      method TEXT NOT NULL,
      client_label TEXT,
      client_ip_address TEXT,
      client_user_agent TEXT,
      issued_at TEXT NOT NULL,
      expires_at TEXT NOT NULL,
      last_connected_at TEXT,
      revoked_at TEXT
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_auth_sessions_active
      ON auth_sessions(revoked_at, expires_at)
    """,
    """
    CREATE TABLE IF NOT EXISTS auth_pairing_links (
      id TEXT PRIMARY KEY,
      credential_hash TEXT NOT NULL UNIQUE,
      method TEXT NOT NULL,
      role TEXT NOT NULL,
      subject TEXT NOT NULL,
      label TEXT,
      created_at TEXT NOT NULL,
      expires_at TEXT NOT NULL,
      consumed_at TEXT,
      revoked_at TEXT
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS idx_auth_pairing_links_active
      ON auth_pairing_links(revoked_at, consumed_at, expires_at)
    """,
)

#: Every table :func:`create_schema` makes (``sqlite_sequence`` comes with AUTOINCREMENT).
TABLES: tuple[str, ...] = (
    "effect_sql_migrations",
    "orchestration_events",
    "orchestration_command_receipts",
    "checkpoint_diff_blobs",
    "provider_session_runtime",
    "projection_projects",
    "projection_threads",
    "projection_thread_messages",
    "projection_thread_activities",
    "projection_thread_sessions",
    "projection_turns",
    "projection_pending_approvals",
    "projection_thread_proposed_plans",
    "projection_state",
    "auth_sessions",
    "auth_pairing_links",
)

_MIGRATIONS: tuple[str, ...] = (
    "OrchestrationEvents",
    "OrchestrationCommandReceipts",
    "CheckpointDiffBlobs",
    "ProviderSessionRuntime",
    "Projections",
    "ProjectionThreadSessionRuntimeModeColumns",
    "ProjectionThreadMessageAttachments",
    "ProjectionThreadActivitySequence",
    "ProviderSessionRuntimeMode",
    "ProjectionThreadsInteractionMode",
    "ProjectionThreadProposedPlans",
    "ProjectionThreadsArchivedAt",
    "AuthSessions",
    "AuthPairingLinks",
    "AuthSessionClientMetadata",
    "AuthSessionLastConnectedAt",
)
_SCHEMA_EPOCH = "2025-01-06 09:00:00"

INSERT_MESSAGE = (
    "INSERT INTO projection_thread_messages (message_id, thread_id, turn_id, role, text,"
    " attachments_json, is_streaming, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _apply_app_pragmas(conn: sqlite3.Connection) -> None:
    for name, value in APP_PRAGMAS:
        conn.execute(f"PRAGMA {name}={value}")


def create_tables(conn: sqlite3.Connection) -> None:
    with transaction(conn):
        for statement in _DDL:
            conn.execute(statement)
        conn.executemany(
            "INSERT OR IGNORE INTO effect_sql_migrations (migration_id, created_at, name)"
            " VALUES (?, ?, ?)",
            [(i, _SCHEMA_EPOCH, name) for i, name in enumerate(_MIGRATIONS, start=1)],
        )


def create_schema(conn: sqlite3.Connection) -> None:
    """Create T3's tables and indexes (idempotent) after setting the app's pragmas."""
    _apply_app_pragmas(conn)
    create_tables(conn)


def connect(path: str | Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    # Autocommit at the Python level: transactions are explicit BEGIN ... COMMIT, as
    # the app's SQL layer does it.
    return sqlite3.connect(os.fspath(path), timeout=timeout, isolation_level=None)


def open_app_db(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) a state DB the way ``t3-serve`` does.

    The connection is in autocommit mode (``isolation_level=None``): use explicit
    ``BEGIN`` / ``COMMIT``. The schema is created when missing.
    """
    conn = connect(path)
    try:
        _apply_app_pragmas(conn)
        row = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?",
            ("orchestration_events",),
        ).fetchone()
        if int(row[0]) == 0:
            create_tables(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "") -> Iterator[None]:
    conn.execute(f"BEGIN {mode}")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # also after a failed COMMIT, so the next BEGIN works
            conn.execute("ROLLBACK")
        raise
