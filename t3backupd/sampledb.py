"""Realistic T3 Code state databases and a live writer that behaves like ``t3-serve``.

Used by the demo, the integration tests and the benchmarks; standard library only, so
it also runs as an unprivileged user with ``python -I -m t3backupd.sampledb`` from
``cwd="/"``.

* :func:`create_schema` / :func:`open_app_db` give a database of T3's shape (event
  store, command receipts, checkpoint diffs, provider runtime, ``projection_*``
  read models, auth tables, migration ledger) opened with the app's pragmas.
* :func:`populate` fills a new database up to a target size, deterministically by
  seed: projects, threads, turns, chat messages whose event payloads are JSON of
  200 B to 20 KB (skewed toward small), tool activities, diffs, auth sessions.
* :func:`run_writer` appends to a database like the live app: one small transaction
  per commit (one event + its message projection + projector bookkeeping), paced at
  a rate, recording latency and counting (never dying on) ``SQLITE_BUSY``.
* :func:`check_consistent_prefix` proves a copy holds a prefix of the writer's
  commits (nothing torn, nothing missing in the middle); :func:`content_digest`
  compares two databases' logical content.

Writer rows are recognisable: the writer's thread ids (the event ``stream_id``) and
message ids start with ``live-``. Every commit writes exactly one ``live-`` event and
one ``live-`` message and moves every ``projection_state`` row to that event's
sequence, so in a consistent copy the counts match, the sequences of ``live-`` events
are contiguous (assuming nothing but writers appends events while they run) and the
projectors' ``last_applied_sequence`` equals the newest event's sequence.

Command line (sizes in MiB; usage errors: one line on stderr, exit 2)::

    python -m t3backupd.sampledb create PATH --size-mb N [--seed S] [--force]
    python -m t3backupd.sampledb write PATH [--rate R] [--duration S] [--stats FILE]
                                      [--ready-file FILE] [--stop-file FILE] [--seed S]
    python -m t3backupd.sampledb check PATH      # exit 1 if not a consistent prefix

``write`` runs until SIGTERM/SIGINT (or ``--duration``/``--stop-file``), then exits 0
after writing the stats JSON: ``commits``, ``errors``, ``error_messages`` (first
10), ``latency_ms`` {``p50``, ``p99``, ``max``} per commit, ``first_sequence``,
``last_sequence``, ``started``/``stopped`` (Unix time), ``rate``, ``commits_per_s``,
``pid``. The file is also refreshed every 2 s while running (atomic rename).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

__all__ = [
    "APP_PRAGMAS",
    "LIVE_PREFIX",
    "PROJECTORS",
    "TABLES",
    "PopulateStats",
    "WriterStats",
    "check_consistent_prefix",
    "content_digest",
    "create_schema",
    "main",
    "open_app_db",
    "populate",
    "run_writer",
]

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
_LIVE_END = "live."

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


# --------------------------------------------------------------------------- schema


def _apply_app_pragmas(conn: sqlite3.Connection) -> None:
    for name, value in APP_PRAGMAS:
        conn.execute(f"PRAGMA {name}={value}")


def _create_tables(conn: sqlite3.Connection) -> None:
    with _transaction(conn):
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
    _create_tables(conn)


def _connect(path: str | Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    # Autocommit at the Python level: transactions are explicit BEGIN ... COMMIT, as
    # the app's SQL layer does it.
    return sqlite3.connect(os.fspath(path), timeout=timeout, isolation_level=None)


def open_app_db(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) a state DB the way ``t3-serve`` does.

    The connection is in autocommit mode (``isolation_level=None``): use explicit
    ``BEGIN`` / ``COMMIT``. The schema is created when missing.
    """
    conn = _connect(path)
    try:
        _apply_app_pragmas(conn)
        row = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?",
            ("orchestration_events",),
        ).fetchone()
        if int(row[0]) == 0:
            _create_tables(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, mode: str = "") -> Iterator[None]:
    conn.execute(f"BEGIN {mode}")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # also after a failed COMMIT, so the next BEGIN works
            conn.execute("ROLLBACK")
        raise


# --------------------------------------------------------------------------- content


# fmt: off
_TECH_WORDS: tuple[str, ...] = (
    "function", "return", "const", "let", "await", "async", "import", "export", "=>",
    "{", "}", "(", ")", "[]", "null", "undefined", "true", "false", "src/", "apps/server",
    "packages/contracts", ".ts", ".tsx", "bun", "pnpm", "npm", "test", "error:", "warning:",
    "TypeError", "Effect.gen", "yield*", "Schema", "Layer", "SqlClient", "git", "diff",
    "commit", "branch", "worktree", "thread", "turn", "session", "provider", "codex",
    "approval", "checkpoint", "projection", "sqlite", "WAL", "✓", "→", "naïve", "café",
    "—", "…", "`", "```", "```ts", "\n", "\n", "\n", "\n\n", "- ", "* ", "1.", "##",
)
# fmt: on
_MODELS = ("gpt-5-codex", "gpt-5", "claude-sonnet-4-5", "claude-opus-4-1", "o3")
_ACTIVITY_KINDS = (
    ("tool", "tool.started", "Running command"),
    ("tool", "tool.completed", "Command finished"),
    ("info", "file.read", "Read file"),
    ("info", "file.edited", "Edited file"),
    ("info", "web.search", "Searched the web"),
    ("error", "tool.failed", "Command failed"),
    ("approval", "approval.requested", "Approval requested"),
    ("info", "reasoning", "Thinking"),
)


class _Corpus:
    """Pseudo-prose that message bodies are cut from.

    Its only character that JSON escapes is the newline (the vocabulary has no
    quotes, backslashes or other control characters), so a cut's JSON string body
    is ``raw.replace("\\n", "\\\\n")``: payloads are assembled without re-encoding
    the text, which is most of their bytes (and otherwise most of populate's time).
    """

    def __init__(self, rng: random.Random, tokens: int) -> None:
        letters = "abcdefghijklmnopqrstuvwxyz"
        vocab = ["".join(rng.choices(letters, k=rng.randint(1, 10))) for _ in range(3000)]
        vocab.extend(_TECH_WORDS * 8)
        self.raw = " ".join(rng.choices(vocab, k=tokens))
        if _dumps(self.raw)[1:-1] != _escape(self.raw):  # a vocabulary edit broke the trick
            raise RuntimeError("sample corpus has characters that need JSON escaping")

    def cut(self, rng: random.Random, length: int) -> tuple[str, str]:
        """``length`` characters of text: ``(raw, JSON-escaped raw)``."""
        length = min(length, len(self.raw) // 2)
        start = int(rng.random() * (len(self.raw) - length))
        raw = self.raw[start : start + length]
        return raw, _escape(raw)

    def words(self, rng: random.Random, length: int) -> str:
        """A short raw snippet (titles, file names)."""
        return self.cut(rng, length)[0].replace("\n", " ").strip()


def _escape(corpus_text: str) -> str:
    return corpus_text.replace("\n", "\\n")


def _with_json(obj_json: str, key: str, value_json: str) -> str:
    """Append ``"key": value`` (value already JSON) to a non-empty JSON object's text."""
    return f'{obj_json[:-1]},"{key}":{value_json}}}'


def _skewed_size(rng: random.Random, lo: int, hi: int) -> int:
    """Sizes from lo to hi, log-scaled and squeezed toward lo (like chat messages).

    The median is lo * (hi / lo) ** 0.25: about 3.2 x lo when hi = 100 x lo.
    """
    u = rng.random()
    return int(lo * (hi / lo) ** (u * u))


def _uid(rng: random.Random) -> str:
    """A random (version 4 shaped) UUID string drawn from ``rng``."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _iso(ms: int) -> str:
    secs, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------- populate


@dataclasses.dataclass(frozen=True)
class PopulateStats:
    """What :func:`populate` wrote. ``bytes`` is the database file's final size."""

    threads: int
    messages: int
    events: int
    bytes: int
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MIB / self.seconds if self.seconds > 0 else 0.0


_INSERT_MESSAGE = (
    "INSERT INTO projection_thread_messages (message_id, thread_id, turn_id, role, text,"
    " attachments_json, is_streaming, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Projections that the app upserts: a later row for the same key replaces the earlier.
_UPSERTED = frozenset({"projection_threads", "projection_thread_sessions"})


# Buffered rows per table: (column names, rows as tuples in that order).
_Rows = dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]


@dataclasses.dataclass
class _ThreadState:
    thread_id: str
    project_id: str
    worktree: str
    title: str
    model: str
    branch: str
    created_at: str
    turns_planned: int
    provider_session_id: str
    turns_done: int = 0
    version: int = 0
    latest_turn_id: str | None = None


class _Generator:
    """Emits rows turn by turn, buffered per table; :meth:`take_rows` hands them over.

    Rows are given as ``column=value`` keywords, so every value is visibly tied to its
    column, and kept as tuples (binding by position is much faster than by name).
    ``bytes`` estimates the buffered rows' size.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
        self.corpus = _Corpus(self.rng, 300_000)
        self.clock_ms = 1_736_154_000_000 + self.rng.randrange(86_400_000)  # 2025-01-06
        self.sequence = 0
        self.threads = 0
        self.messages = 0
        self.bytes = 0
        self.rows: _Rows = {}
        self.columns: dict[str, tuple[str, ...]] = {}
        self.projects: list[tuple[str, str]] = []
        self.thread: _ThreadState | None = None

    # --- helpers

    def add(self, table: str, size: int, **row: Any) -> None:
        columns = self.columns.setdefault(table, tuple(row))
        if tuple(row) != columns:  # every table's rows come from one call site
            raise RuntimeError(f"{table}: columns {tuple(row)} differ from {columns}")
        self.rows.setdefault(table, (columns, []))[1].append(tuple(row.values()))
        self.bytes += size

    def tick(self, lo_ms: int = 200, hi_ms: int = 30_000) -> str:
        self.clock_ms += lo_ms + int(self.rng.random() * (hi_ms - lo_ms))
        return _iso(self.clock_ms)

    def text(self, lo: int, hi: int) -> tuple[str, str]:
        """Text of a chat-like size between lo and hi: ``(raw, JSON-escaped)``."""
        return self.corpus.cut(self.rng, _skewed_size(self.rng, lo, hi))

    def event(
        self,
        stream_id: str,
        version: int,
        event_type: str,
        at: str,
        payload: dict[str, Any] | str,
        *,
        aggregate_kind: str = "thread",
        command_id: str | None = None,
        actor: str = "server",
    ) -> int:
        self.sequence += 1
        payload_json = payload if isinstance(payload, str) else _dumps(payload)
        request = f'"{command_id}"' if command_id is not None else "null"
        metadata_json = f'{{"adapterKey":"codex","requestId":{request}}}'
        self.add(
            "orchestration_events",
            len(payload_json) + len(metadata_json) + 200,
            sequence=self.sequence,
            event_id=_uid(self.rng),
            aggregate_kind=aggregate_kind,
            stream_id=stream_id,
            stream_version=version,
            event_type=event_type,
            occurred_at=at,
            command_id=command_id,
            causation_event_id=None,
            correlation_id=command_id,
            actor_kind=actor,
            payload_json=payload_json,
            metadata_json=metadata_json,
        )
        return self.sequence

    def receipt(self, command_id: str, kind: str, aggregate_id: str, at: str) -> None:
        self.add(
            "orchestration_command_receipts",
            160,
            command_id=command_id,
            aggregate_kind=kind,
            aggregate_id=aggregate_id,
            accepted_at=at,
            result_sequence=self.sequence,
            status="accepted",
            error=None,
        )

    # --- entities

    def new_project(self) -> None:
        rng = self.rng
        project_id = _uid(rng)
        name = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz-", k=rng.randint(4, 12)))
        at = self.tick()
        root = f"/home/dev/src/{name}"
        scripts = _dumps(
            [
                {"id": "test", "name": "Test", "command": "bun run test", "icon": "test"},
                {"id": "lint", "name": "Lint", "command": "bun run lint", "icon": "lint"},
            ]
        )
        model = rng.choice(_MODELS)
        command_id = _uid(rng)
        payload = {
            "projectId": project_id,
            "title": name,
            "workspaceRoot": root,
            "defaultModel": model,
            "scripts": json.loads(scripts),
            "createdAt": at,
            "updatedAt": at,
        }
        self.event(
            project_id,
            1,
            "project.created",
            at,
            payload,
            aggregate_kind="project",
            command_id=command_id,
            actor="client",
        )
        self.receipt(command_id, "project", project_id, at)
        self.add(
            "projection_projects",
            400,
            project_id=project_id,
            title=name,
            workspace_root=root,
            default_model=model,
            scripts_json=scripts,
            created_at=at,
            updated_at=at,
            deleted_at=None,
        )
        self.projects.append((project_id, root))

    def new_thread(self) -> _ThreadState:
        rng = self.rng
        if not self.projects or rng.random() < 0.05:
            self.new_project()
        project_id, root = rng.choice(self.projects)
        thread_id = _uid(rng)
        at = self.tick()
        t = _ThreadState(
            thread_id=thread_id,
            project_id=project_id,
            worktree=f"{root}/.t3/worktrees/{thread_id[:8]}",
            title=self.corpus.words(rng, rng.randint(12, 60)) or "New thread",
            model=rng.choice(_MODELS),
            branch=f"t3code/{thread_id[:8]}",
            created_at=at,
            # Chat-like: most threads are short, a few run for hundreds of turns.
            turns_planned=_skewed_size(rng, 2, 300),
            provider_session_id=_uid(rng),
        )
        command_id = _uid(rng)
        t.version += 1
        payload = {
            "threadId": thread_id,
            "projectId": project_id,
            "title": t.title,
            "model": t.model,
            "runtimeMode": "full-access",
            "interactionMode": "default",
            "branch": t.branch,
            "worktreePath": t.worktree,
            "createdAt": at,
            "updatedAt": at,
        }
        self.event(
            thread_id,
            t.version,
            "thread.created",
            at,
            payload,
            command_id=command_id,
            actor="client",
        )
        self.receipt(command_id, "thread", thread_id, at)
        self.add(
            "provider_session_runtime",
            400,
            thread_id=thread_id,
            provider_name="codex",
            adapter_key="codex",
            runtime_mode="full-access",
            status="running",
            last_seen_at=at,
            resume_cursor_json=_dumps({"threadId": t.provider_session_id, "turn": 0}),
            runtime_payload_json=_dumps(
                {"cwd": t.worktree, "model": t.model, "approvalPolicy": "on-request"}
            ),
        )
        self.threads += 1
        self.thread_rows(t, at, "running")
        return t

    def thread_rows(self, t: _ThreadState, updated_at: str, status: str) -> None:
        """The thread's projection and session rows (upserted at start and at finish)."""
        self.add(
            "projection_threads",
            350,
            thread_id=t.thread_id,
            project_id=t.project_id,
            title=t.title,
            model=t.model,
            runtime_mode="full-access",
            interaction_mode="default",
            branch=t.branch,
            worktree_path=t.worktree,
            latest_turn_id=t.latest_turn_id,
            created_at=t.created_at,
            updated_at=updated_at,
            archived_at=None,
            deleted_at=None,
        )
        self.add(
            "projection_thread_sessions",
            250,
            thread_id=t.thread_id,
            status=status,
            provider_name="codex",
            provider_session_id=t.provider_session_id,
            provider_thread_id=t.provider_session_id,
            runtime_mode="full-access",
            active_turn_id=None,
            last_error=None,
            updated_at=updated_at,
        )

    def message(
        self,
        t: _ThreadState,
        turn_id: str,
        role: str,
        text: tuple[str, str],
        at: str,
        command_id: str | None,
    ) -> str:
        raw, escaped = text
        message_id = _uid(self.rng)
        t.version += 1
        # Ids and timestamps need no JSON escaping: format the hot path directly.
        payload = (
            f'{{"threadId":"{t.thread_id}","messageId":"{message_id}","role":"{role}",'
            f'"turnId":"{turn_id}","streaming":false,"createdAt":"{at}","updatedAt":"{at}",'
            f'"text":"{escaped}"}}'
        )
        actor = "client" if role == "user" else "provider"
        self.event(
            t.thread_id,
            t.version,
            "thread.message-sent",
            at,
            payload,
            command_id=command_id,
            actor=actor,
        )
        self.add(
            "projection_thread_messages",
            len(raw) + 150,
            message_id=message_id,
            thread_id=t.thread_id,
            turn_id=turn_id,
            role=role,
            text=raw,
            attachments_json=None,
            is_streaming=0,
            created_at=at,
            updated_at=at,
        )
        self.messages += 1
        return message_id

    def activity(self, t: _ThreadState, turn_id: str) -> None:
        rng = self.rng
        tone, kind, summary = rng.choice(_ACTIVITY_KINDS)
        activity_id = _uid(rng)
        at = self.tick(100, 20_000)
        command = self.text(10, 300)[1]
        output = self.text(20, 8_000)[1]
        exit_code = rng.randint(1, 2) if tone == "error" else 0
        detail_json = f'{{"command":"{command}","output":"{output}","exitCode":{exit_code}}}'
        t.version += 1
        payload = (
            f'{{"threadId":"{t.thread_id}","activity":{{"id":"{activity_id}","tone":"{tone}",'
            f'"kind":"{kind}","summary":"{summary}","turnId":"{turn_id}","createdAt":"{at}",'
            f'"payload":{detail_json}}}}}'
        )
        seq = self.event(
            t.thread_id, t.version, "thread.activity-appended", at, payload, actor="provider"
        )
        self.add(
            "projection_thread_activities",
            len(detail_json) + 150,
            activity_id=activity_id,
            thread_id=t.thread_id,
            turn_id=turn_id,
            tone=tone,
            kind=kind,
            summary=summary,
            payload_json=detail_json,
            sequence=seq,
            created_at=at,
        )
        if kind == "approval.requested":
            self.add(
                "projection_pending_approvals",
                200,
                request_id=_uid(rng),
                thread_id=t.thread_id,
                turn_id=turn_id,
                status="resolved",
                decision=rng.choice(("accept", "accept", "decline")),
                created_at=at,
                resolved_at=self.tick(1_000, 60_000),
            )

    def turn(self, t: _ThreadState) -> None:
        """One turn: prompt, tool activity, answer, maybe a plan, the checkpoint diff."""
        rng = self.rng
        turn_id = _uid(rng)
        command_id = _uid(rng)
        requested = self.tick(5_000, 600_000)
        # A user's prompt: mostly a line or two, sometimes a pasted log.
        user_id = self.message(t, turn_id, "user", self.text(40, 4_000), requested, command_id)
        self.receipt(command_id, "thread", t.thread_id, requested)
        started = self.tick(100, 2_000)
        for _ in range(_skewed_size(rng, 1, 12)):
            self.activity(t, turn_id)
        completed = self.tick(500, 30_000)
        # The assistant's answer: longer than the prompt, up to 20 KB of payload.
        answer = self.text(150, 19_800)
        assistant_id = self.message(t, turn_id, "assistant", answer, completed, None)
        if rng.random() < 0.04:
            self.plan(t, turn_id, completed)
        t.turns_done += 1
        files = [
            {
                "path": f"src/{self.corpus.words(rng, 8) or 'index'}.ts",
                "kind": rng.choice(("modified", "added", "deleted")),
                "additions": rng.randint(0, 200),
                "deletions": rng.randint(0, 120),
            }
            for _ in range(rng.randint(0, 6))
        ]
        checkpoint_ref = f"refs/t3/checkpoints/{t.thread_id[:8]}/turn/{t.turns_done}"
        t.version += 1
        payload = {
            "threadId": t.thread_id,
            "turnId": turn_id,
            "checkpointTurnCount": t.turns_done,
            "checkpointRef": checkpoint_ref,
            "status": "ready",
            "files": files,
            "assistantMessageId": assistant_id,
            "completedAt": completed,
        }
        self.event(t.thread_id, t.version, "thread.turn-diff-completed", completed, payload)
        files_json = _dumps(files)
        self.add(
            "projection_turns",
            len(files_json) + 300,
            thread_id=t.thread_id,
            turn_id=turn_id,
            pending_message_id=user_id,
            assistant_message_id=assistant_id,
            state="completed",
            requested_at=requested,
            started_at=started,
            completed_at=completed,
            checkpoint_turn_count=t.turns_done,
            checkpoint_ref=checkpoint_ref,
            checkpoint_status="ready",
            checkpoint_files_json=files_json,
        )
        if files:
            diff = self.text(100, 16_000)[0]
            self.add(
                "checkpoint_diff_blobs",
                len(diff) + 100,
                thread_id=t.thread_id,
                from_turn_count=t.turns_done - 1,
                to_turn_count=t.turns_done,
                diff=diff,
                created_at=completed,
            )
        t.latest_turn_id = turn_id

    def plan(self, t: _ThreadState, turn_id: str, at: str) -> None:
        plan_id = _uid(self.rng)
        markdown, escaped = self.text(200, 8_000)
        t.version += 1
        head = {"threadId": t.thread_id, "planId": plan_id, "turnId": turn_id, "createdAt": at}
        payload = _with_json(_dumps(head), "planMarkdown", f'"{escaped}"')
        self.event(
            t.thread_id, t.version, "thread.proposed-plan-upserted", at, payload, actor="provider"
        )
        self.add(
            "projection_thread_proposed_plans",
            len(markdown) + 150,
            plan_id=plan_id,
            thread_id=t.thread_id,
            turn_id=turn_id,
            plan_markdown=markdown,
            implemented_at=None,
            created_at=at,
            updated_at=at,
        )

    def step(self) -> None:
        """One turn of the current thread (starting a new thread when it is done)."""
        if self.thread is None or self.thread.turns_done >= self.thread.turns_planned:
            self.finish_thread()
            self.thread = self.new_thread()
        self.turn(self.thread)

    def finish_thread(self) -> None:
        if self.thread is not None:
            self.thread_rows(self.thread, _iso(self.clock_ms), "stopped")

    def auth(self) -> None:
        rng = self.rng
        for i in range(rng.randint(8, 40)):
            issued = self.clock_ms - rng.randrange(90 * 86_400_000)
            self.add(
                "auth_sessions",
                300,
                session_id=_uid(rng),
                subject="owner" if i == 0 else f"device-{i}",
                role="owner" if i == 0 else "client",
                method=rng.choice(("pairing-link", "bootstrap", "desktop")),
                client_label=rng.choice(("Firefox on Linux", "Safari on iPhone", None)),
                client_ip_address=f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                client_user_agent="Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
                issued_at=_iso(issued),
                expires_at=_iso(issued + 30 * 86_400_000),
                last_connected_at=_iso(issued + rng.randrange(86_400_000)),
                revoked_at=_iso(issued + 3_600_000) if rng.random() < 0.2 else None,
            )
        for _ in range(rng.randint(2, 12)):
            created = self.clock_ms - rng.randrange(90 * 86_400_000)
            consumed = _iso(created + rng.randrange(600_000)) if rng.random() < 0.7 else None
            self.add(
                "auth_pairing_links",
                250,
                id=_uid(rng),
                credential_hash=hashlib.sha256(_uid(rng).encode()).hexdigest(),
                method="one-time-token",
                role="client",
                subject="owner",
                label=None,
                created_at=_iso(created),
                expires_at=_iso(created + 600_000),
                consumed_at=consumed,
                revoked_at=None,
            )

    def fill(self, batch_bytes: int) -> None:
        """Generate turns until about ``batch_bytes`` of rows are buffered."""
        while self.bytes < batch_bytes:
            self.step()

    def take_rows(self) -> _Rows:
        """Hand over the buffered rows."""
        rows, self.rows, self.bytes = self.rows, {}, 0
        return rows


def _insert_rows(conn: sqlite3.Connection, rows_by_table: _Rows) -> None:
    for table, (columns, rows) in rows_by_table.items():
        if rows:
            verb = "INSERT OR REPLACE" if table in _UPSERTED else "INSERT"
            sql = (
                f"{verb} INTO {table} ({', '.join(columns)})"
                f" VALUES ({', '.join('?' * len(columns))})"
            )
            conn.executemany(sql, rows)


def _db_bytes(conn: sqlite3.Connection) -> int:
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    return pages * size


def populate(path: str | Path, target_bytes: int, seed: int = 0) -> PopulateStats:
    """Create a new T3-shaped database at ``path`` of about ``target_bytes`` bytes.

    Deterministic: the same seed and target give the same rows (and, with the same
    SQLite, the same file). The path must not exist yet (an empty file is accepted).
    Rows are written in large transactions with the journal off (a half-written file
    is useless anyway); the database is left in WAL mode, as the app keeps it.
    """
    if target_bytes <= 0:
        raise ValueError(f"target size must be positive, got {target_bytes}")
    db = Path(path)
    if db.exists() and db.stat().st_size > 0:
        raise FileExistsError(f"{db} already exists; populate only creates new databases")
    for suffix in ("-wal", "-shm", "-journal"):
        stale = Path(f"{db}{suffix}")
        if stale.exists():
            raise FileExistsError(f"{stale} exists; remove it first")
    started = time.monotonic()
    # Flush often enough that the size check overshoots by at most ~3 % (small
    # targets), and in big batches for speed (large ones).
    batch_bytes = min(8 * MIB, max(64 * 1024, target_bytes // 32))
    conn = _connect(db)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-131072")  # 128 MiB: keeps the index pages hot
        conn.execute("PRAGMA temp_store=MEMORY")
        _create_tables(conn)
        gen = _Generator(seed)
        gen.auth()
        while True:
            with _transaction(conn):
                _insert_rows(conn, gen.take_rows())
            if _db_bytes(conn) >= target_bytes:
                break
            gen.fill(batch_bytes)
        gen.finish_thread()
        with _transaction(conn):
            _insert_rows(conn, gen.take_rows())
            conn.executemany(
                "INSERT OR REPLACE INTO projection_state VALUES (?, ?, ?)",
                [(name, gen.sequence, _iso(gen.clock_ms)) for name in PROJECTORS],
            )
        conn.execute("PRAGMA journal_mode=WAL")
    except BaseException:
        conn.close()
        for leftover in (db, *(Path(f"{db}{s}") for s in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)  # ours: populate only makes new files
        raise
    conn.close()
    return PopulateStats(
        threads=gen.threads,
        messages=gen.messages,
        events=gen.sequence,
        bytes=db.stat().st_size,
        seconds=time.monotonic() - started,
    )


# --------------------------------------------------------------------------- checks


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
        bounds = (LIVE_PREFIX, _LIVE_END)
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


# --------------------------------------------------------------------------- writer


@dataclasses.dataclass
class WriterStats:
    """What :func:`run_writer` did; :meth:`to_json` is the stats file's content.

    ``started`` / ``stopped`` are Unix times. Latencies are kept exactly for the first
    500 000 commits, then as a uniform reservoir sample of that size.
    """

    MAX_SAMPLES: ClassVar[int] = 500_000
    MAX_MESSAGES: ClassVar[int] = 10

    commits: int = 0
    errors: int = 0
    error_messages: list[str] = dataclasses.field(default_factory=list)
    first_sequence: int | None = None
    last_sequence: int | None = None
    started: float = 0.0
    stopped: float | None = None
    rate: float | None = None
    max_latency_ms: float = 0.0
    latencies_ms: array.array[float] = dataclasses.field(default_factory=lambda: array.array("d"))

    def record_latency(self, ms: float, rng: random.Random) -> None:
        self.max_latency_ms = max(self.max_latency_ms, ms)
        if len(self.latencies_ms) < self.MAX_SAMPLES:
            self.latencies_ms.append(ms)
        else:  # reservoir sampling keeps memory bounded on long runs
            slot = rng.randrange(self.commits + 1)
            if slot < self.MAX_SAMPLES:
                self.latencies_ms[slot] = ms

    def record_error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_messages) < self.MAX_MESSAGES:
            self.error_messages.append(f"{type(exc).__name__}: {exc}")

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)  # nearest-rank percentile
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return round(ordered[index], 3)

    def to_json(self) -> dict[str, Any]:
        end = self.stopped if self.stopped is not None else time.time()
        elapsed = max(end - self.started, 1e-9)
        return {
            "commits": self.commits,
            "errors": self.errors,
            "error_messages": list(self.error_messages),
            "latency_ms": {
                "p50": self.percentile(0.50),
                "p99": self.percentile(0.99),
                "max": round(self.max_latency_ms, 3) if self.latencies_ms else None,
            },
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "started": self.started,
            "stopped": self.stopped,
            "rate": self.rate,
            "commits_per_s": round(self.commits / elapsed, 2),
            "pid": os.getpid(),
        }


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class _LiveWriter:
    def __init__(self, path: str | Path, seed: int | None) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - simulated chat traffic, not secrets
        self.corpus = _Corpus(self.rng, 60_000)
        self.conn = open_app_db(path)
        self.thread_id = f"{LIVE_PREFIX}{uuid.uuid4()}"
        self.version = 0
        now = _iso(int(time.time() * 1000))
        with _transaction(self.conn, "IMMEDIATE"):
            row = self.conn.execute(
                "SELECT project_id FROM projection_projects ORDER BY rowid LIMIT 1"
            ).fetchone()
            if row is None:
                project_id = f"{LIVE_PREFIX}project"
                self.conn.execute(
                    "INSERT OR IGNORE INTO projection_projects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (project_id, "live", "/home/dev/src/live", "gpt-5-codex", "[]", now, now, None),
                )
            else:
                project_id = str(row[0])
            self.conn.execute(
                "INSERT INTO projection_threads (thread_id, project_id, title, model,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (self.thread_id, project_id, "live writer", "gpt-5-codex", now, now),
            )
            last = int(
                self.conn.execute(
                    "SELECT coalesce(max(sequence), 0) FROM orchestration_events"
                ).fetchone()[0]
            )
            self.conn.executemany(
                "INSERT OR IGNORE INTO projection_state VALUES (?, ?, ?)",
                [(name, last, now) for name in PROJECTORS],
            )

    def commit_one(self) -> int:
        """One app-like commit: event + message + projector bookkeeping. Returns its sequence."""
        rng = self.rng
        version = self.version + 1
        role = "user" if version % 2 else "assistant"
        # Payloads of 200 B to 20 KB, skewed toward small (the envelope is ~250 B).
        text, escaped = self.corpus.cut(rng, max(20, _skewed_size(rng, 200, 20_000) - 250))
        now = _iso(int(time.time() * 1000))
        message_id = f"{LIVE_PREFIX}{uuid.uuid4()}"
        turn_id = f"turn-{(version + 1) // 2}"
        head = {
            "threadId": self.thread_id,
            "messageId": message_id,
            "role": role,
            "turnId": turn_id,
            "streaming": False,
            "createdAt": now,
            "updatedAt": now,
        }
        payload = _with_json(_dumps(head), "text", f'"{escaped}"')
        command_id = str(uuid.uuid4())
        conn = self.conn
        with _transaction(conn, "IMMEDIATE"):
            cur = conn.execute(
                "INSERT INTO orchestration_events (event_id, aggregate_kind, stream_id,"
                " stream_version, event_type, occurred_at, command_id, causation_event_id,"
                " correlation_id, actor_kind, payload_json, metadata_json)"
                " VALUES (?, 'thread', ?, ?, 'thread.message-sent', ?, ?, NULL, ?, ?, ?, ?)",
                (
                    str(uuid.uuid4()),
                    self.thread_id,
                    version,
                    now,
                    command_id,
                    command_id,
                    "client" if role == "user" else "provider",
                    payload,
                    _dumps({"requestId": command_id}),
                ),
            )
            sequence = int(cur.lastrowid or 0)
            conn.execute(
                _INSERT_MESSAGE,
                (message_id, self.thread_id, turn_id, role, text, None, 0, now, now),
            )
            conn.execute(
                "UPDATE projection_threads SET updated_at = ?, latest_turn_id = ?"
                " WHERE thread_id = ?",
                (now, turn_id, self.thread_id),
            )
            conn.execute(
                "UPDATE projection_state SET last_applied_sequence = ?, updated_at = ?",
                (sequence, now),
            )
        self.version = version
        return sequence

    def close(self) -> None:
        self.conn.close()


def run_writer(
    path: str | Path,
    *,
    rate: float | None = None,
    duration: float | None = None,
    stop_event: threading.Event | None = None,
    stop_file: str | Path | None = None,
    stats_path: str | Path | None = None,
    ready_file: str | Path | None = None,
    seed: int | None = None,
    handle_signals: bool = False,
    stats_interval: float = 2.0,
) -> WriterStats:
    """Append to ``path`` like ``t3-serve``: one small transaction per commit.

    ``rate`` is commits per second (``None``: as fast as possible). Stops after
    ``duration`` seconds, when ``stop_event`` is set, when ``stop_file`` exists, or
    (with ``handle_signals``, main thread only) on SIGTERM/SIGINT. ``SQLITE_BUSY`` and
    other SQLite errors are counted, never fatal. ``ready_file`` is created after the
    first commit. ``stats_path`` gets the JSON stats every ``stats_interval`` seconds
    and at the end. Errors opening the database propagate.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if duration is not None and duration < 0:
        raise ValueError(f"duration must not be negative, got {duration}")
    stop = stop_event if stop_event is not None else threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if handle_signals:

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()  # no work in the handler: the loop notices within 50 ms

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _on_signal)
    stats = WriterStats(started=time.time(), rate=rate)
    stats_file = Path(stats_path) if stats_path is not None else None
    stop_path = Path(stop_file) if stop_file is not None else None
    ready = Path(ready_file) if ready_file is not None else None
    writer: _LiveWriter | None = None
    try:
        writer = _LiveWriter(path, seed)
        t0 = time.monotonic()
        interval = 1.0 / rate if rate else 0.0
        next_due = t0
        next_stats = t0 + stats_interval
        next_stop_check = t0
        while not stop.is_set():
            now = time.monotonic()
            if duration is not None and now - t0 >= duration:
                break
            if stop_path is not None and now >= next_stop_check:
                next_stop_check = now + 0.05
                if stop_path.exists():
                    break
            if stats_file is not None and now >= next_stats:
                next_stats = now + stats_interval
                _write_json_atomic(stats_file, stats.to_json())
            if rate:
                if now < next_due:
                    time.sleep(min(next_due - now, 0.05))
                    continue
                # Keep the pace, but never burst to catch up more than a second's backlog.
                next_due = max(next_due + interval, now - 1.0)
            begin = time.perf_counter()
            try:
                sequence = writer.commit_one()
            except sqlite3.Error as exc:
                stats.record_error(exc)
                if not rate:
                    time.sleep(0.01)  # do not spin on a persistent error
                continue
            stats.record_latency((time.perf_counter() - begin) * 1000.0, writer.rng)
            stats.commits += 1
            stats.last_sequence = sequence
            if stats.first_sequence is None:
                stats.first_sequence = sequence
                if ready is not None:
                    ready.write_text(f"{os.getpid()}\n", encoding="utf-8")
    finally:
        stats.stopped = time.time()
        if writer is not None:
            writer.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if stats_file is not None:
            _write_json_atomic(stats_file, stats.to_json())
    return stats


# --------------------------------------------------------------------------- CLI


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage dump
        raise _UsageError(message)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m t3backupd.sampledb",
        description="Make T3 Code-shaped state databases and simulate the live app.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    create = sub.add_parser("create", help="create a populated database")
    create.add_argument("path")
    create.add_argument("--size-mb", type=_positive_float, required=True, help="target size in MiB")
    create.add_argument("--seed", type=int, default=0)
    create.add_argument(
        "--force", action="store_true", help="replace an existing database (and its -wal/-shm)"
    )
    write = sub.add_parser("write", help="append like t3-serve until stopped")
    write.add_argument("path")
    write.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        help="commits per second (default: as fast as possible)",
    )
    write.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        help="stop after this many seconds (default: until SIGTERM/SIGINT)",
    )
    write.add_argument("--stats", default=None, help="write stats JSON here")
    write.add_argument("--ready-file", default=None, help="create after the first commit")
    write.add_argument("--stop-file", default=None, help="stop once this file exists")
    write.add_argument("--seed", type=int, default=None)
    check = sub.add_parser("check", help="verify a copy is a consistent prefix")
    check.add_argument("path")
    return parser


def _cmd_create(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if args.force:
        for p in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))):
            p.unlink(missing_ok=True)
    elif path.exists() and path.stat().st_size > 0:
        raise _UsageError(f"{path} already exists (use --force to replace it)")
    if not path.parent.is_dir():
        raise _UsageError(f"directory {path.parent} does not exist")
    stats = populate(path, int(args.size_mb * MIB), seed=args.seed)
    print(
        f"{path}: {stats.bytes / MIB:.1f} MiB, {stats.threads} threads, {stats.messages}"
        f" messages, {stats.events} events in {stats.seconds:.1f} s"
        f" ({stats.mb_per_s:.0f} MiB/s)"
    )
    return 0


def _cmd_write(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.parent.is_dir():
        raise _UsageError(f"directory {path.parent} does not exist")
    stats = run_writer(
        path,
        rate=args.rate,
        duration=args.duration,
        stop_file=args.stop_file,
        stats_path=args.stats,
        ready_file=args.ready_file,
        seed=args.seed,
        handle_signals=True,
    )
    summary = stats.to_json()
    print(
        f"{path}: {stats.commits} commits, {stats.errors} errors,"
        f" p50 {summary['latency_ms']['p50']} ms, p99 {summary['latency_ms']['p99']} ms,"
        f" last sequence {stats.last_sequence}"
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        last = check_consistent_prefix(args.path)
    except ValueError as exc:  # the copy is inconsistent: a finding, not a usage error
        print(f"sampledb: inconsistent: {exc}", file=sys.stderr)
        return 1
    print(f"{args.path}: consistent, last sequence {last}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    prog = "sampledb"
    try:
        args = _build_parser().parse_args(argv)
        if args.command == "create":
            return _cmd_create(args)
        if args.command == "write":
            return _cmd_write(args)
        return _cmd_check(args)
    except (_UsageError, OSError, sqlite3.Error, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
