"""Realistic T3 Code state databases and a live writer that behaves like ``t3-serve``.

Used by the demo, the integration tests and the benchmarks; standard library only, so
it also runs as an unprivileged user with ``python -I -m t3backupd_dev.sampledb`` from
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

    python -m t3backupd_dev.sampledb create PATH --size-mb N [--seed S] [--force]
    python -m t3backupd_dev.sampledb write PATH [--rate R] [--duration S] [--stats FILE]
                                      [--ready-file FILE] [--stop-file FILE] [--seed S]
    python -m t3backupd_dev.sampledb check PATH      # exit 1 if not a consistent prefix

``write`` runs until SIGTERM/SIGINT (or ``--duration``/``--stop-file``), then exits 0
after writing the stats JSON: ``commits``, ``errors``, ``error_messages`` (first
10), ``latency_ms`` {``p50``, ``p99``, ``max``} per commit, ``first_sequence``,
``last_sequence``, ``started``/``stopped`` (Unix time), ``rate``, ``commits_per_s``,
``pid``. The file is also refreshed every 2 s while running (atomic rename).
"""

from __future__ import annotations

from t3backupd_dev.sampledb.check import check_consistent_prefix, content_digest
from t3backupd_dev.sampledb.cli import main
from t3backupd_dev.sampledb.generator import PopulateStats, populate
from t3backupd_dev.sampledb.schema import (
    APP_PRAGMAS,
    LIVE_PREFIX,
    MIB,
    PROJECTORS,
    TABLES,
    create_schema,
    open_app_db,
)
from t3backupd_dev.sampledb.writer import WriterStats, run_writer

__all__ = [
    "APP_PRAGMAS",
    "LIVE_PREFIX",
    "MIB",
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
