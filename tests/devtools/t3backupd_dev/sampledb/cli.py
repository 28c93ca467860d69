"""``python -m t3backupd_dev.sampledb create|write|check`` (see the package docstring)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from t3backupd_dev.sampledb.check import check_consistent_prefix
from t3backupd_dev.sampledb.generator import populate
from t3backupd_dev.sampledb.schema import MIB
from t3backupd_dev.sampledb.writer import run_writer


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
        prog="python -m t3backupd_dev.sampledb",
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
