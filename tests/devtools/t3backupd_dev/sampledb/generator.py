"""``populate``: a new T3-shaped database of a target size, deterministic by seed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from t3backupd_dev.sampledb.content import (
    ACTIVITY_KINDS,
    MODELS,
    Corpus,
    dumps,
    iso_time,
    random_uuid,
    skewed_size,
    with_json,
)
from t3backupd_dev.sampledb.schema import MIB, PROJECTORS, connect, create_tables, transaction


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
        self.rng = random.Random(seed)
        self.corpus = Corpus(self.rng, 300_000)
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
        return iso_time(self.clock_ms)

    def text(self, lo: int, hi: int) -> tuple[str, str]:
        """Text of a chat-like size between lo and hi: ``(raw, JSON-escaped)``."""
        return self.corpus.cut(self.rng, skewed_size(self.rng, lo, hi))

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
        payload_json = payload if isinstance(payload, str) else dumps(payload)
        request = f'"{command_id}"' if command_id is not None else "null"
        metadata_json = f'{{"adapterKey":"codex","requestId":{request}}}'
        self.add(
            "orchestration_events",
            len(payload_json) + len(metadata_json) + 200,
            sequence=self.sequence,
            event_id=random_uuid(self.rng),
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
        project_id = random_uuid(rng)
        name = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz-", k=rng.randint(4, 12)))
        at = self.tick()
        root = f"/home/dev/src/{name}"
        scripts = dumps(
            [
                {"id": "test", "name": "Test", "command": "bun run test", "icon": "test"},
                {"id": "lint", "name": "Lint", "command": "bun run lint", "icon": "lint"},
            ]
        )
        model = rng.choice(MODELS)
        command_id = random_uuid(rng)
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
        thread_id = random_uuid(rng)
        at = self.tick()
        t = _ThreadState(
            thread_id=thread_id,
            project_id=project_id,
            worktree=f"{root}/.t3/worktrees/{thread_id[:8]}",
            title=self.corpus.words(rng, rng.randint(12, 60)) or "New thread",
            model=rng.choice(MODELS),
            branch=f"t3code/{thread_id[:8]}",
            created_at=at,
            # Chat-like: most threads are short, a few run for hundreds of turns.
            turns_planned=skewed_size(rng, 2, 300),
            provider_session_id=random_uuid(rng),
        )
        command_id = random_uuid(rng)
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
            resume_cursor_json=dumps({"threadId": t.provider_session_id, "turn": 0}),
            runtime_payload_json=dumps(
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
        message_id = random_uuid(self.rng)
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
        tone, kind, summary = rng.choice(ACTIVITY_KINDS)
        activity_id = random_uuid(rng)
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
                request_id=random_uuid(rng),
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
        turn_id = random_uuid(rng)
        command_id = random_uuid(rng)
        requested = self.tick(5_000, 600_000)
        # A user's prompt: mostly a line or two, sometimes a pasted log.
        user_id = self.message(t, turn_id, "user", self.text(40, 4_000), requested, command_id)
        self.receipt(command_id, "thread", t.thread_id, requested)
        started = self.tick(100, 2_000)
        for _ in range(skewed_size(rng, 1, 12)):
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
        files_json = dumps(files)
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
        plan_id = random_uuid(self.rng)
        markdown, escaped = self.text(200, 8_000)
        t.version += 1
        head = {"threadId": t.thread_id, "planId": plan_id, "turnId": turn_id, "createdAt": at}
        payload = with_json(dumps(head), "planMarkdown", f'"{escaped}"')
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
            self.thread_rows(self.thread, iso_time(self.clock_ms), "stopped")

    def auth(self) -> None:
        rng = self.rng
        for i in range(rng.randint(8, 40)):
            issued = self.clock_ms - rng.randrange(90 * 86_400_000)
            self.add(
                "auth_sessions",
                300,
                session_id=random_uuid(rng),
                subject="owner" if i == 0 else f"device-{i}",
                role="owner" if i == 0 else "client",
                method=rng.choice(("pairing-link", "bootstrap", "desktop")),
                client_label=rng.choice(("Firefox on Linux", "Safari on iPhone", None)),
                client_ip_address=f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                client_user_agent="Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
                issued_at=iso_time(issued),
                expires_at=iso_time(issued + 30 * 86_400_000),
                last_connected_at=iso_time(issued + rng.randrange(86_400_000)),
                revoked_at=iso_time(issued + 3_600_000) if rng.random() < 0.2 else None,
            )
        for _ in range(rng.randint(2, 12)):
            created = self.clock_ms - rng.randrange(90 * 86_400_000)
            consumed = iso_time(created + rng.randrange(600_000)) if rng.random() < 0.7 else None
            self.add(
                "auth_pairing_links",
                250,
                id=random_uuid(rng),
                credential_hash=hashlib.sha256(random_uuid(rng).encode()).hexdigest(),
                method="one-time-token",
                role="client",
                subject="owner",
                label=None,
                created_at=iso_time(created),
                expires_at=iso_time(created + 600_000),
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
    conn = connect(db)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-131072")  # 128 MiB: keeps the index pages hot
        conn.execute("PRAGMA temp_store=MEMORY")
        create_tables(conn)
        gen = _Generator(seed)
        gen.auth()
        while True:
            with transaction(conn):
                _insert_rows(conn, gen.take_rows())
            if _db_bytes(conn) >= target_bytes:
                break
            gen.fill(batch_bytes)
        gen.finish_thread()
        with transaction(conn):
            _insert_rows(conn, gen.take_rows())
            conn.executemany(
                "INSERT OR REPLACE INTO projection_state VALUES (?, ?, ?)",
                [(name, gen.sequence, iso_time(gen.clock_ms)) for name in PROJECTORS],
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
