"""Command line: `t3backupd [-c CONFIG] COMMAND ...` (also `python -m t3backupd`).

Every error a user can cause is one line on stderr and an exit code; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from t3backupd import __version__
from t3backupd.core.checks import verify_failures
from t3backupd.core.config import Config, resolve_config_path
from t3backupd.core.cron import CronError
from t3backupd.core.errors import ConfigError, T3BackupError, UsageError
from t3backupd.core.naming import is_valid_label
from t3backupd.core.protocol import SnapshotInfo
from t3backupd.core.selection import parse_snapshot_request
from t3backupd.core.usermap import Problem, User
from t3backupd.root.log import configure_logging
from t3backupd.root.passes import inventory_user, run_pass, run_verify_pass
from t3backupd.root.restore import restore_in_place, restore_to
from t3backupd.root.served import load_served, log_problems

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, exit 2
        sys.stderr.write(f"t3backupd: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="t3backupd", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "-c",
        "--config",
        help="config file (default: $T3BACKUPD_CONFIG or /etc/t3backupd/config.toml)",
    )
    parser.add_argument("--version", action="version", version=f"t3backupd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    snapshot = commands.add_parser("snapshot", help="take one snapshot pass now")
    snapshot.add_argument("--user", action="append", default=[], help="only this user (repeatable)")
    snapshot.add_argument("--label", help="label the snapshot (never pruned automatically)")

    listing = commands.add_parser("list", help="list snapshots per user")
    listing.add_argument("--user", action="append", default=[])
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    commands.add_parser("check-config", help="validate config and usermap, show next runs")
    commands.add_parser("run", help="run the daemon in the foreground (for systemd)")

    verify = commands.add_parser("verify", help="checksum + integrity check of snapshots")
    verify.add_argument("--user", action="append", default=[], help="only this user (repeatable)")
    verify.add_argument("--latest", action="store_true", help="only each user's newest snapshot")
    verify.add_argument("--quick", action="store_true", help="quick_check, not integrity_check")
    verify.add_argument("--json", action="store_true", help="machine-readable output")

    restore = commands.add_parser("restore", help="restore a snapshot, as the user")
    restore.add_argument("--user", required=True)
    restore.add_argument(
        "--snapshot", default="latest", help="a snapshot file name, 'latest' or a LABEL"
    )
    where = restore.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="PATH", help="write a restored copy to a new file")
    where.add_argument("--in-place", action="store_true", help="restore into the live database")
    restore.add_argument(
        "--force", action="store_true", help="in place even while a process has it open"
    )
    return parser


def load_context(
    args: argparse.Namespace, strict_usermap: bool = False
) -> tuple[Config, list[User], list[Problem]]:
    """Config + resolved users (the daemon's loader). Logs each skipped usermap line.

    An unreadable usermap means zero users and one error line, as the legacy script
    behaved; with `strict_usermap` (check-config) it is a ConfigError.
    Raises ConfigError if the config is invalid.
    """
    served = load_served(resolve_config_path(args.config), usermap_optional=not strict_usermap)
    configure_logging(served.config.log.format, served.config.log.level)
    log_problems(served)
    return served.config, list(served.users), list(served.problems)


def select_users(users: Sequence[User], wanted: Sequence[str], usermap: str) -> list[User]:
    """Users named by --user (all when none). Raises UsageError for a name not served."""
    if not wanted:
        return list(users)
    by_name = {user.name: user for user in users}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise UsageError(f"user {unknown[0]!r} is not a served user in {usermap}")
    return [by_name[name] for name in dict.fromkeys(wanted)]


def command_snapshot(args: argparse.Namespace) -> int:
    if args.label is not None and not is_valid_label(args.label):
        raise UsageError(f"invalid label {args.label!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    config, users, _ = load_context(args)
    selected = select_users(users, args.user, config.usermap)
    if not selected:
        print(f"no users to back up in {config.usermap}")
        return EXIT_OK
    results = run_pass(config, selected, label=args.label)
    for result in results:
        report = result.report
        if report.ok and report.snapshot is not None:
            print(
                f"{result.user.name}: ok {report.snapshot.name} ({report.snapshot.bytes} bytes, "
                f"{result.duration_s:.1f}s)"
            )
        elif report.status == "skipped":
            print(f"{result.user.name}: skipped ({report.message})")
        else:
            print(f"{result.user.name}: FAILED {report.reason}: {report.message}")
    return EXIT_FAILED if any(result.report.status == "failed" for result in results) else EXIT_OK


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _snapshot_json(info: SnapshotInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "time": datetime.fromtimestamp(info.time, UTC).isoformat(),
        "timestamp": info.time,
        "bytes": info.bytes,
        "label": info.label,
        "has_checksum": info.has_checksum,
    }


def command_list(args: argparse.Namespace) -> int:
    config, users, _ = load_context(args)
    selected = select_users(users, args.user, config.usermap)
    now = time.time()
    documents = []
    status = EXIT_OK
    for user in selected:
        report = inventory_user(config, user).report
        if not report.ok:
            status = EXIT_FAILED
        documents.append((user, report))
    if args.json:
        payload = {
            "users": [
                {
                    "user": user.name,
                    "error": None if report.ok else f"{report.reason}: {report.message}",
                    "snapshots": [_snapshot_json(info) for info in reversed(report.snapshots)],
                }
                for user, report in documents
            ]
        }
        print(json.dumps(payload, indent=2))
        return status
    for user, report in documents:
        if not report.ok:
            print(f"{user.name}: cannot list: {report.reason}: {report.message}")
            continue
        if not report.snapshots:
            print(f"{user.name}: no snapshots")
            continue
        print(f"{user.name}: {len(report.snapshots)} snapshot(s)")
        for info in reversed(report.snapshots):
            when = datetime.fromtimestamp(info.time, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            checksum = "" if info.has_checksum else "  (no checksum)"
            label = f"  [{info.label}]" if info.label else ""
            print(
                f"  {info.name:<52} {when}  {_age(now - info.time):>6} ago  "
                f"{_human_size(info.bytes):>10}{label}{checksum}"
            )
    return status


def command_check_config(args: argparse.Namespace) -> int:
    config, users, problems = load_context(args, strict_usermap=True)
    print(f"config {config.path}: ok")
    print(f"usermap {config.usermap}: {len(users)} user(s) served, {len(problems)} skipped")
    for user in users:
        print(f"  {user.name} (uid {user.uid}): {config.source_for(user.name, user.home)}")
    for problem in problems:
        print(f"  skipped {problem}")
    # Imported here: APScheduler (behind the scheduler) is for `run` and this listing
    # only; every other command starts without loading it.
    from t3backupd.root.scheduler import next_run_times, trigger_for

    try:
        runs = next_run_times(trigger_for(config.schedule), datetime.now(UTC), 3)
    except CronError as error:  # validated already; kept for a clear line if not
        raise ConfigError(config.path, [f"schedule.cron: {error}"]) from None
    print(f"schedule '{config.schedule.cron}' ({config.schedule.timezone}), next runs:")
    for run in runs:
        print(f"  {run.isoformat()}")
    return EXIT_OK


VERIFY_WORDS = {
    "ok": "ok",
    "checksum_mismatch": "CHECKSUM MISMATCH",
    "integrity_error": "INTEGRITY ERRORS",
    "missing_checksum": "MISSING CHECKSUM",
    "unreadable": "UNREADABLE",
}


def command_verify(args: argparse.Namespace) -> int:
    config, users, _ = load_context(args)
    selected = select_users(users, args.user, config.usermap)
    results = run_verify_pass(config, selected, args.latest, args.quick)
    reports = [(result.user, result.report) for result in results]
    checked = sum(len(report.verified) for _, report in reports)
    bad = sum(verify_failures(report) for _, report in reports)
    errors = sum(1 for _, report in reports if not report.ok)
    if args.json:
        payload = {
            "ok": bad == 0,
            "check": "quick_check" if args.quick else "integrity_check",
            "summary": {"users": len(reports), "snapshots": checked, "bad": bad},
            "users": [
                {
                    "user": user.name,
                    "error": None if report.ok else f"{report.reason}: {report.message}",
                    "snapshots": [
                        {"name": result.name, "outcome": result.outcome, "detail": result.detail}
                        for result in report.verified
                    ],
                }
                for user, report in reports
            ],
        }
        print(json.dumps(payload, indent=2))
        return EXIT_FAILED if bad else EXIT_OK
    for user, report in reports:
        if not report.ok:
            print(f"{user.name}: cannot verify: {report.reason}: {report.message}")
            continue
        if not report.verified:
            print(f"{user.name}: no snapshots")
        for result in report.verified:
            detail = f"  ({result.detail})" if result.detail else ""
            print(f"{user.name}: {result.name}  {VERIFY_WORDS[result.outcome]}{detail}")
    failed_users = f", {errors} user(s) could not be verified" if errors else ""
    print(
        f"verified {checked} snapshot(s) of {len(reports)} user(s): "
        f"{checked - bad + errors} ok, {bad - errors} bad{failed_users}"
    )
    return EXIT_FAILED if bad else EXIT_OK


def command_restore(args: argparse.Namespace) -> int:
    parse_snapshot_request(args.snapshot)  # one clear line before anything runs
    if args.force and not args.in_place:
        raise UsageError("--force applies only to --in-place")
    config, users, _ = load_context(args)
    user = select_users(users, [args.user], config.usermap)[0]
    if args.to is not None:
        # Relative to the caller's cwd, not normalised: '..' keeps the kernel's meaning.
        target = args.to if os.path.isabs(args.to) else os.path.join(os.getcwd(), args.to)
        report = restore_to(config, user, args.snapshot, target)
        if not report.ok:
            sys.stderr.write(f"t3backupd: restore refused ({report.reason}): {report.message}\n")
            return EXIT_FAILED
        print(f"{user.name}: restored {report.extra.get('restored_from')}: {report.message}")
        return EXIT_OK
    result = restore_in_place(config, user, args.snapshot, force=args.force)
    report = result.report
    if result.pre_restore is not None:
        print(f"{user.name}: pre-restore snapshot {result.pre_restore} taken")
    if not report.ok:
        sys.stderr.write(f"t3backupd: restore refused ({report.reason}): {report.message}\n")
        if result.undo is not None:
            sys.stderr.write(
                f"t3backupd: {result.pre_restore} holds the state before this attempt; "
                f"to go back to it: {result.undo}\n"
            )
        return EXIT_FAILED
    for verified in report.verified:
        print(f"{user.name}: verified {verified.name}: {VERIFY_WORDS[verified.outcome]}")
    print(f"{user.name}: {report.message}")
    if result.undo is not None:
        print(f"to undo: {result.undo}")
    else:
        print("no database existed before the restore: nothing to undo")
    return EXIT_OK


def command_run(args: argparse.Namespace) -> int:
    # Imported here: the daemon's scheduler and HTTP server are for `run` only.
    from t3backupd.root import daemon

    return daemon.run(resolve_config_path(args.config))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": command_run,
    "verify": command_verify,
    "restore": command_restore,
    "snapshot": command_snapshot,
    "list": command_list,
    "check-config": command_check_config,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except T3BackupError as error:
        sys.stderr.write(f"t3backupd: {error}\n")
        return error.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("t3backupd: interrupted\n")
        return 130
