"""Tests for t3backupd_dev.sampledb (the dev-only distribution in tests/devtools):
T3-shaped databases, the simulated live writer, the consistency checker."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from t3backupd_dev import sampledb
from t3backupd_dev.sampledb import schema

MIB = 1 << 20


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _header_journal_mode_is_wal(path: Path) -> bool:
    # Bytes 18 and 19 of the database header are 2 for WAL (1 for rollback journal).
    header = path.read_bytes()[:20]
    return header[18] == 2 and header[19] == 2


# --------------------------------------------------------------------------- schema


def test_open_app_db_creates_t3_schema_with_app_pragmas(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    conn = sampledb.open_app_db(db)
    try:
        assert set(sampledb.TABLES) <= _tables(conn)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == 32 * MIB
        columns = {r[1] for r in conn.execute("PRAGMA table_info(orchestration_events)")}
        assert {
            "sequence",
            "event_id",
            "stream_id",
            "stream_version",
            "event_type",
            "occurred_at",
            "payload_json",
            "metadata_json",
        } <= columns
        unique = [
            [c[2] for c in conn.execute(f"PRAGMA index_info('{idx[1]}')")]
            for idx in conn.execute("PRAGMA index_list(orchestration_events)")
            if idx[2]
        ]
        assert ["stream_id", "stream_version"] in unique
        assert ["event_id"] in unique
        assert conn.execute("SELECT count(*) FROM effect_sql_migrations").fetchone()[0] > 0
        sampledb.create_schema(conn)  # idempotent
    finally:
        conn.close()
    assert _header_journal_mode_is_wal(db)


def test_create_schema_on_plain_connection(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "plain.sqlite")
    try:
        sampledb.create_schema(conn)
        assert set(sampledb.TABLES) <= _tables(conn)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


# --------------------------------------------------------------------------- populate


def test_populate_is_deterministic_by_seed(tmp_path: Path) -> None:
    a = sampledb.populate(tmp_path / "a.sqlite", 2 * MIB, seed=7)
    b = sampledb.populate(tmp_path / "b.sqlite", 2 * MIB, seed=7)
    sampledb.populate(tmp_path / "c.sqlite", 2 * MIB, seed=8)
    assert (a.threads, a.messages, a.events, a.bytes) == (b.threads, b.messages, b.events, b.bytes)
    digest_a = sampledb.content_digest(tmp_path / "a.sqlite")
    assert digest_a == sampledb.content_digest(tmp_path / "b.sqlite")
    assert digest_a != sampledb.content_digest(tmp_path / "c.sqlite")
    # The copy is left alone: no -wal/-shm appear beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sqlite", "b.sqlite", "c.sqlite"]


def test_populate_reaches_size_in_wal_mode_with_realistic_rows(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    target = 8 * MIB
    stats = sampledb.populate(db, target, seed=1)
    assert abs(stats.bytes - target) <= 0.15 * target
    assert stats.bytes == db.stat().st_size
    assert _header_journal_mode_is_wal(db)
    assert not Path(f"{db}-wal").exists()
    assert sampledb.check_consistent_prefix(db) == stats.events

    conn = sqlite3.connect(db)
    try:
        counts = {
            t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]  # noqa: S608 - fixed names
            for t in sampledb.TABLES
        }
        assert counts["orchestration_events"] == stats.events
        assert counts["projection_thread_messages"] == stats.messages
        assert counts["projection_threads"] == stats.threads > 0
        assert counts["auth_sessions"] > 0 and counts["auth_pairing_links"] > 0
        # Most rows are events and messages.
        total = sum(counts.values())
        assert counts["orchestration_events"] + counts["projection_thread_messages"] > total / 2
        sizes = sorted(
            r[0]
            for r in conn.execute(
                "SELECT length(CAST(payload_json AS BLOB)) FROM orchestration_events"
                " WHERE event_type = 'thread.message-sent'"
            )
        )
        assert sizes[0] >= 200 and sizes[-1] <= 21_000
        assert sizes[len(sizes) // 2] < 2_000  # skewed toward small, like chat
        for (payload,) in conn.execute("SELECT payload_json FROM orchestration_events LIMIT 500"):
            json.loads(payload)
        mismatched = conn.execute(
            "SELECT count(*) FROM orchestration_events e JOIN projection_thread_messages m"
            " ON m.message_id = json_extract(e.payload_json, '$.messageId')"
            " WHERE json_extract(e.payload_json, '$.text') != m.text"
        ).fetchone()[0]
        assert mismatched == 0
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_populate_refuses_an_existing_database(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    db.write_bytes(b"not empty")
    with pytest.raises(FileExistsError):
        sampledb.populate(db, MIB)
    with pytest.raises(ValueError):
        sampledb.populate(tmp_path / "other.sqlite", 0)


# --------------------------------------------------------------------------- writer


def test_writer_subprocess_rate_sigterm_stats_and_consistent_backup(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    sampledb.populate(db, 2 * MIB, seed=3)
    stats_path = tmp_path / "stats.json"
    ready = tmp_path / "ready"
    rate = 50.0
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "t3backupd_dev.sampledb", "write", str(db),
         "--rate", str(rate), "--stats", str(stats_path), "--ready-file", str(ready)],
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "writer never made its first commit"
            time.sleep(0.02)
        time.sleep(1.0)
        # A copy taken with the online backup API while the writer runs.
        copy = tmp_path / "copy.sqlite"
        src = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err == ""
    assert "commits" in out

    stats = json.loads(stats_path.read_text())
    assert stats["errors"] == 0, stats["error_messages"]
    assert stats["error_messages"] == []
    duration = stats["stopped"] - stats["started"]
    assert duration >= 1.9
    # The pacing cap holds under any load; how close the writer gets to its rate depends on
    # the machine's load (a timing figure for bench/, not a test): it must only have committed.
    assert 0 < stats["commits"] <= rate * duration + 5
    assert set(stats["latency_ms"]) == {"p50", "p99", "max"}
    assert (
        0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p99"] <= stats["latency_ms"]["max"]
    )
    assert stats["last_sequence"] - stats["first_sequence"] + 1 == stats["commits"]

    last_in_copy = sampledb.check_consistent_prefix(copy)
    assert stats["first_sequence"] <= last_in_copy < stats["last_sequence"]
    assert sampledb.check_consistent_prefix(db) == stats["last_sequence"]


def test_writer_in_process_creates_db_and_stops_on_event(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite"
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    stats = sampledb.run_writer(db, stop_event=stop)
    timer.join()
    assert stats.commits > 0 and stats.errors == 0
    assert stats.first_sequence == 1
    assert sampledb.check_consistent_prefix(db) == stats.last_sequence == stats.commits
    # A second run appends to the same log and keeps it consistent.
    again = sampledb.run_writer(db, duration=0.2, stop_file=tmp_path / "never")
    assert again.first_sequence == stats.commits + 1
    assert sampledb.check_consistent_prefix(db) == again.last_sequence


def test_writer_counts_busy_instead_of_crashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "state.sqlite"
    sampledb.open_app_db(db).close()
    pragmas = tuple((k, 50 if k == "busy_timeout" else v) for k, v in sampledb.APP_PRAGMAS)
    monkeypatch.setattr(schema, "APP_PRAGMAS", pragmas)  # what open_app_db reads
    result: dict[str, Any] = {}

    ready = tmp_path / "ready"
    stop = threading.Event()

    def write() -> None:
        result["stats"] = sampledb.run_writer(db, rate=200, stop_event=stop, ready_file=ready)

    locker = sqlite3.connect(db, isolation_level=None)
    try:
        writer = threading.Thread(target=write)
        writer.start()
        # Lock only once the writer is committing (on a loaded machine it may take a
        # while to start), and long enough for several of its 50 ms busy timeouts.
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "writer never committed"
            time.sleep(0.02)
        locker.execute("BEGIN EXCLUSIVE")
        time.sleep(0.8)
        locker.execute("ROLLBACK")
        time.sleep(0.3)
        stop.set()
        writer.join(timeout=30)
    finally:
        stop.set()
        locker.close()
    stats = result["stats"]
    assert stats.errors > 0
    assert any("locked" in m for m in stats.error_messages)
    assert stats.commits > 0
    assert sampledb.check_consistent_prefix(db) == stats.last_sequence


# --------------------------------------------------------------------------- checks


def _writer_db(tmp_path: Path) -> tuple[Path, int, int]:
    """A populated DB with a short writer run: (path, first, last writer sequence)."""
    db = tmp_path / "state.sqlite"
    sampledb.populate(db, MIB // 2, seed=5)
    stats = sampledb.run_writer(db, duration=0.2)
    assert stats.commits >= 3
    assert stats.first_sequence is not None and stats.last_sequence is not None
    return db, stats.first_sequence, stats.last_sequence


def test_check_consistent_prefix_detects_torn_copies(tmp_path: Path) -> None:
    db, first, last = _writer_db(tmp_path)
    assert sampledb.check_consistent_prefix(db) == last

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        # A message missing for a committed event.
        conn.execute("BEGIN")
        conn.execute(
            "DELETE FROM projection_thread_messages WHERE message_id = ("
            " SELECT json_extract(payload_json, '$.messageId') FROM orchestration_events"
            " WHERE sequence = ?)",
            (last,),
        )
        conn.execute("COMMIT")
        with pytest.raises(ValueError, match="torn"):
            sampledb.check_consistent_prefix(db)
        # ... and an event missing from the middle of the writer's run.
        conn.execute(
            "DELETE FROM orchestration_events WHERE sequence IN (?, ?)",
            (last, first + 1),
        )
        conn.execute(
            "DELETE FROM projection_thread_messages WHERE message_id NOT IN ("
            " SELECT json_extract(payload_json, '$.messageId') FROM orchestration_events"
            " WHERE json_extract(payload_json, '$.messageId') IS NOT NULL)"
        )
        with pytest.raises(ValueError, match="contiguous"):
            sampledb.check_consistent_prefix(db)
    finally:
        conn.close()


def test_check_consistent_prefix_detects_stale_projection(tmp_path: Path) -> None:
    db, _, last = _writer_db(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(
            "UPDATE projection_state SET last_applied_sequence = ? WHERE projector = ?",
            (last - 1, sampledb.PROJECTORS[0]),
        )
    finally:
        conn.close()
    with pytest.raises(ValueError, match="projection_state"):
        sampledb.check_consistent_prefix(db)
    assert sampledb.main(["check", str(db)]) == 1


# --------------------------------------------------------------------------- CLI


def test_cli_create_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cli.sqlite"
    assert sampledb.main(["create", str(db), "--size-mb", "1", "--seed", "2"]) == 0
    assert "MiB" in capsys.readouterr().out
    assert sampledb.main(["check", str(db)]) == 0
    assert "consistent" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "{existing}", "--size-mb", "1"],
        ["create", "{tmp}/x.sqlite", "--size-mb", "-3"],
        ["create", "{tmp}/x.sqlite"],
        ["create", "{tmp}/no/such/dir/x.sqlite", "--size-mb", "1"],
        ["write", "{tmp}/no/such/dir/x.sqlite"],
        ["write", "{tmp}/x.sqlite", "--rate", "0"],
        ["frobnicate"],
        [],
    ],
)
def test_cli_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    existing = tmp_path / "existing.sqlite"
    existing.write_bytes(b"x")
    args = [a.format(existing=existing, tmp=tmp_path) for a in argv]
    assert sampledb.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sampledb: error: "), captured.err
    assert "Traceback" not in captured.err
