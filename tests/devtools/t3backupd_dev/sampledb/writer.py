"""``run_writer``: appends like the live app, one small transaction per commit, paced."""

from __future__ import annotations

import array
import dataclasses
import json
import math
import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from t3backupd_dev.sampledb.content import Corpus, dumps, iso_time, skewed_size, with_json
from t3backupd_dev.sampledb.schema import (
    INSERT_MESSAGE,
    LIVE_PREFIX,
    PROJECTORS,
    open_app_db,
    transaction,
)


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
        self.rng = random.Random(seed)
        self.corpus = Corpus(self.rng, 60_000)
        self.conn = open_app_db(path)
        self.thread_id = f"{LIVE_PREFIX}{uuid.uuid4()}"
        self.version = 0
        now = iso_time(int(time.time() * 1000))
        with transaction(self.conn, "IMMEDIATE"):
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
        text, escaped = self.corpus.cut(rng, max(20, skewed_size(rng, 200, 20_000) - 250))
        now = iso_time(int(time.time() * 1000))
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
        payload = with_json(dumps(head), "text", f'"{escaped}"')
        command_id = str(uuid.uuid4())
        conn = self.conn
        with transaction(conn, "IMMEDIATE"):
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
                    dumps({"requestId": command_id}),
                ),
            )
            sequence = int(cur.lastrowid or 0)
            conn.execute(
                INSERT_MESSAGE,
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
