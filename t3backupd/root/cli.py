"""Command line: t3backupd [OPTIONS] COMMAND ... (also python -m t3backupd).

Every error a user can cause is one line on stderr and an exit code; anything else is
a bug and keeps its traceback. On a terminal a command prints its human result once;
its structured log events go to stderr only when asked (-v, --log-format) or when
stderr is not a terminal (journald, cron, CI).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from t3backupd import __version__
from t3backupd.core.checks import verify_failures
from t3backupd.core.config import LOG_FORMATS, Config, resolve_config_path
from t3backupd.core.cron import CronError
from t3backupd.core.errors import ConfigError, T3BackupError, UsageError
from t3backupd.core.naming import is_valid_label, parse_name
from t3backupd.core.protocol import Report, SnapshotInfo, VerifyResult
from t3backupd.core.selection import parse_snapshot_request
from t3backupd.core.usermap import NOT_ROOT_REASON, Problem, User
from t3backupd.root import ledger
from t3backupd.root.log import configure_logging, get_logger, is_journal_stream
from t3backupd.root.output import Output, age_column, listed_time, schema_column
from t3backupd.root.passes import (
    future_dated,
    inventory_user,
    run_adopt,
    run_pass,
    run_verify_pass,
)
from t3backupd.root.restore import (
    StreamedCopy,
    at_moment,
    future_note,
    local_at,
    local_before_schema,
    restore_in_place,
    restore_to,
    skipped_note,
)
from t3backupd.root.served import (
    Served,
    load_served,
    log_problems,
    nobody_served,
    own_name,
    require_offsite_secrets,
    verify_shadowed,
)
from t3backupd.root.spawn import running_as_root
from t3backupd.root.usage import DIR_SIZES, destination_space, human

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

ENVIRONMENT = """\
environment:
  T3BACKUPD_CONFIG   config file when -c is not given
  T3_BACKUP_DEST     overrides dest (the legacy script's variable)
  T3_BACKUP_KEEP     overrides retention.keep
  T3_BACKUP_TIMEOUT  overrides snapshot.timeout_seconds"""

HELP_WIDTH = 78
USAGE_EXIT = "  2  usage or config error (one line on stderr)"


@dataclass(frozen=True)
class CommandDoc:
    """One subcommand's help: summary (command list), description, exit statuses."""

    summary: str
    description: str
    exits: tuple[str, ...]


DOCS: dict[str, CommandDoc] = {
    "snapshot": CommandDoc(
        "take one snapshot pass now",
        "Snapshot every served user (or those named by --user) now, through the same "
        "worker path as the daemon: as the user, verified, published, pruned. Prints one "
        "line per user, with what retention pruned.",
        ("0  every user ok (a user without a database is skipped, not failed)",
         "1  a user's snapshot failed"),
    ),
    "list": CommandDoc(
        "list snapshots per user, newest first",
        "List each served user's snapshots, newest first: name, time (UTC), age, size, "
        "label, and whether a checksum file exists. Creates nothing. Run as a user who is "
        "not root, it lists that user's own snapshots.",
        ("0  listed (a user who was never backed up has no snapshots)",
         "1  dest does not exist, or a user's directory could not be listed"),
    ),
    "verify": CommandDoc(
        "check snapshots: sha256 and SQLite integrity",
        "Check snapshots, newest first: sha256 against NAME.sha256, then "
        "integrity_check (quick_check with --quick), as the user. Creates nothing. A "
        "served user without any snapshot is reported and counts as a failure.",
        ("0  every served user has snapshots and every one checked is ok",
         "1  a snapshot is bad, a user could not be verified, a user has no snapshot, "
         "or dest does not exist"),
    ),
    "restore": CommandDoc(
        "restore a snapshot, as the user",
        "Restore a snapshot: to a new file outside dest (--to, creates only that file) "
        "or into the live database (--in-place, after a pre-restore snapshot of it if it "
        "exists; needs root). The snapshot is verified first. --from offsite takes the "
        "bytes from the offsite repository, verified (size and sha256 as recorded, "
        "quick_check) before either. "
        "--at TIME picks the newest snapshot at or before TIME in the [schedule] "
        "timezone: in the hour repeated when DST ends, the earlier occurrence; a time "
        "skipped when DST begins is refused.",
        (
            "0  restored",
            "1  refused or failed (nothing was changed): also a --to path inside dest, "
            "no snapshot at or before --at",
            "2  usage or config error (also: --at and --snapshot together, a nonexistent "
            "--at time)",
        ),
    ),
    "adopt": CommandDoc(
        "give the legacy script's snapshots a checksum",
        "For each snapshot of the user that has no NAME.sha256 (the legacy script wrote "
        "none, so verify reports it as missing checksum): run a full integrity_check as "
        "the user and, if it passes, write NAME.sha256. An existing checksum file is "
        "never replaced.",
        ("0  every snapshot without a checksum was adopted (or there was none)",
         "1  a snapshot failed its check (no checksum written), the user's directory is "
         "missing, or the job failed"),
    ),
    "offsite": CommandDoc(
        "offsite repository (restic or borg): init, sync, check",
        "The [offsite] repository (restic or borg): offsite init creates it, offsite sync "
        "uploads what is not offsite yet, offsite check checks it and drills a restore; "
        "each has its own --help (t3backupd offsite sync --help) and man page section. "
        "list --offsite and restore --from offsite read the repository.",
        ("0  done for every user", "1  the repository or a user's upload or drill failed"),
    ),
    "check-config": CommandDoc(
        "validate config and usermap, show what is in effect",
        "Validate the config and the usermap; print every config key with its value and "
        "where it came from (default, file, environment variable), the served users, the "
        "skipped usermap lines, warnings about what will not work under the systemd "
        "unit's sandbox, and the next 3 run times.",
        ("0  valid", "1  with --strict: a usermap line was skipped or there is a warning"),
    ),
    "run": CommandDoc(
        "run the daemon in the foreground (for systemd)",
        "Run the daemon in the foreground (systemd Type=notify): scheduled passes, "
        "metrics endpoint, SIGHUP reloads, SIGUSR1 runs a pass now, SIGTERM stops. "
        "Runs as root (each worker switches to its user); a user who is not root is "
        "refused, before anything starts, unless --unprivileged says they mean it.",
        ("0  clean stop", "1  workers did not stop within the 30 s grace",
         "2  usage, or an invalid config at start (one line on stderr)"),
    ),
}  # fmt: skip

# `offsite init|sync|check`: each its own --help and man page section (under offsite).
OFFSITE_DOCS: dict[str, CommandDoc] = {
    "init": CommandDoc(
        "create the repository if it does not exist",
        "Create the [offsite] repository (restic format 2, or borg init --encryption) if "
        "it does not exist; an existing repository is left as it is.",
        ("0  created, or it exists already", "1  the engine failed (one line says why)"),
    ),
    "sync": CommandDoc(
        "upload what is missing now",
        "Upload each served user's local snapshots that are not offsite yet (a worker as "
        "the user streams them; the engine, run by root with the password, stores them) "
        "and apply the offsite retention per user. Prints one line per user.",
        ("0  every user's snapshots are offsite",
         "1  the repository or a user's upload or retention failed"),
    ),
    "check": CommandDoc(
        "repository check + a restore drill of each user's newest copy",
        "Run restic check --read-data-subset (or borg check) and a restore drill of each "
        "user's newest copy, and record the time and result in offsite.cache_dir, which "
        "the daemon serves (t3backup_offsite_last_check_timestamp_seconds).",
        ("0  the repository and every drill are ok",
         "1  the repository check or a user's drill failed"),
    ),
}  # fmt: skip

# The commands that have subcommands, and their docs (the man page walks these).
SUBCOMMAND_DOCS: dict[str, dict[str, CommandDoc]] = {"offsite": OFFSITE_DOCS}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, exit 2
        sys.stderr.write(f"t3backupd: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def _global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options accepted before and after the command (`-c FILE snapshot` and
    `snapshot -c FILE`). After the command they default to "not given", so they never
    reset a value given before it."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=default(None),
        help="config file (default: $T3BACKUPD_CONFIG, else /etc/t3backupd/config.toml)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="also write the structured log events to stderr (-vv: debug events too)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="print only problems; exit status tells the rest",
    )
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default(None),
        help="write log events to stderr in this format (auto: console on a terminal, else JSON)",
    )


def exit_lines(doc: CommandDoc) -> tuple[str, ...]:
    """The command's exit statuses, 2 once: its own line for 2 if it has one, else the
    general one."""
    if any(line.startswith("2 ") for line in doc.exits):
        return doc.exits
    return (*doc.exits, USAGE_EXIT.strip())


def _exit_text(doc: CommandDoc) -> str:
    lines = [
        textwrap.fill(line, HELP_WIDTH, initial_indent="  ", subsequent_indent="     ")
        for line in exit_lines(doc)
    ]
    return "exit status:\n" + "\n".join(lines)


def _add_command(
    commands: argparse._SubParsersAction[_Parser], name: str, doc: CommandDoc
) -> argparse.ArgumentParser:
    """A command (or `offsite` subcommand) with its full --help and the global options."""
    sub = commands.add_parser(
        name,
        help=doc.summary,
        description=textwrap.fill(doc.description, HELP_WIDTH),
        epilog=_exit_text(doc) + "\n\n" + ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(sub, defaults=False)
    return sub


def schema_version_arg(text: str) -> int:
    """`--before-schema N`: a schema version, 1 or more."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 1 << 31:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected a schema version (1 or more)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="t3backupd",
        description="Verified, privilege-separated snapshots of each T3 Code user's state.sqlite.",
        epilog="Each command has its own --help (exit statuses included).\n\n" + ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"t3backupd {__version__}")
    _global_options(parser, defaults=True)
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="COMMAND"
    )
    for name, add_options in _COMMAND_OPTIONS:
        add_options(_add_command(commands, name, DOCS[name]))
    return parser


def _users_option(sub: argparse.ArgumentParser, what: str) -> None:
    sub.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="U",
        help=f"only this OS user from the usermap (repeatable; default: {what})",
    )


def _snapshot_options(snapshot: argparse.ArgumentParser) -> None:
    _users_option(snapshot, "every served user")
    snapshot.add_argument(
        "--label",
        metavar="L",
        help="label the snapshot (1-64 of A-Z a-z 0-9 . _ -; never pruned automatically)",
    )
    snapshot.add_argument(
        "--accept-schema-downgrade",
        action="store_true",
        help="acknowledge a backwards schema step: retention no longer holds the snapshots "
        "of the newer version",
    )


def _list_options(listing: argparse.ArgumentParser) -> None:
    _users_option(listing, "every served user")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument(
        "--offsite", action="store_true", help="list the copies in the offsite repository"
    )


def _offsite_options(offsite: argparse.ArgumentParser) -> None:
    offsite_commands = offsite.add_subparsers(
        dest="offsite_command", required=True, parser_class=_Parser, metavar="SUBCOMMAND"
    )
    for name, doc in SUBCOMMAND_DOCS["offsite"].items():
        sub = _add_command(offsite_commands, name, doc)
        if name != "init":
            _users_option(sub, "every served user")


def _check_config_options(check: argparse.ArgumentParser) -> None:
    check.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if a usermap line is skipped or a warning is printed",
    )


def _run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--unprivileged",
        action="store_true",
        help="as a user who is not root: serve only your own usermap entry (the demo, "
        "tests, a single-user install); no effect as root",
    )


def _verify_options(verify: argparse.ArgumentParser) -> None:
    _users_option(verify, "every served user")
    verify.add_argument("--latest", action="store_true", help="only each user's newest snapshot")
    verify.add_argument(
        "--quick", action="store_true", help="quick_check instead of integrity_check"
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")


def _restore_options(restore: argparse.ArgumentParser) -> None:
    restore.add_argument("--user", required=True, metavar="U", help="whose snapshot (required)")
    which = restore.add_mutually_exclusive_group()
    which.add_argument(
        "--snapshot",
        default="latest",
        metavar="S",
        help="a snapshot file name from list, 'latest' (default) or a label",
    )
    which.add_argument(
        "--at",
        metavar="TIME",
        help="the newest snapshot at or before TIME ('YYYY-MM-DD HH:MM[:SS]' or "
        "'YYYY-MM-DD' = 00:00), in the [schedule] timezone; in the hour that repeats "
        "when DST ends, the earlier occurrence; a time skipped when DST begins is refused; "
        "a time as list prints it ('YYYY-MM-DD HH:MM:SSZ') is UTC",
    )
    which.add_argument(
        "--before-schema",
        type=schema_version_arg,
        metavar="N",
        help="the newest snapshot whose app schema version (as root recorded it) is below "
        "N: the state before a migration to N",
    )
    restore.add_argument(
        "--from",
        dest="origin",
        choices=("local", "offsite"),
        default="local",
        help="restore from the local backup dir (default) or the offsite repository",
    )
    where = restore.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="PATH", help="write a restored copy to this new file")
    where.add_argument(
        "--in-place", action="store_true", help="restore into the user's live database"
    )
    restore.add_argument(
        "--force",
        action="store_true",
        help="with --in-place: even while a process of the user has the database open",
    )


def _adopt_options(adopt: argparse.ArgumentParser) -> None:
    adopt.add_argument(
        "--user",
        action="append",
        required=True,
        metavar="U",
        help="whose snapshots (repeatable; required)",
    )


# Each command's own options, in the order --help and the man page list the commands.
_COMMAND_OPTIONS: tuple[tuple[str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("snapshot", _snapshot_options),
    ("list", _list_options),
    ("offsite", _offsite_options),
    ("check-config", _check_config_options),
    ("run", _run_options),
    ("verify", _verify_options),
    ("restore", _restore_options),
    ("adopt", _adopt_options),
)


# --- output ---------------------------------------------------------------------------


def log_settings(args: argparse.Namespace, config: Config) -> tuple[str, str]:
    """(format, level) of the CLI's log events on stderr; level "off" = none.

    On a terminal the human output is the result, so events are off unless asked for
    (-v, --log-format); elsewhere (journald, cron, CI) they are on, in the config's format.
    """
    level = config.log.level
    if args.quiet:
        level = "warning"
    if args.verbose:
        level = "debug" if args.verbose > 1 else "info"
    if args.log_format is not None:
        return args.log_format, level
    if args.verbose or not sys.stderr.isatty():
        return config.log.format, level
    return "auto", "off"


def events_on(args: argparse.Namespace) -> bool:
    return bool(args.verbose or args.log_format is not None or not sys.stderr.isatty())


def load_context(
    args: argparse.Namespace, strict_usermap: bool = False
) -> tuple[Config, list[User], list[Problem]]:
    """Config + resolved users (the daemon's loader). Reports each skipped usermap line
    once: as a log event when events are on, else as a human line on stderr.

    A usermap that serves nobody is one warning (when the command would serve every
    user; with --user the "not a served user" error says it). The exit status stays
    what the command decides, 0 for snapshot, list, verify and offsite sync with no
    users: an empty usermap is a state the operator can choose (every user moved off
    the host, a host being set up), and cron jobs and scripts must not fail on it; the
    warning says it on every run and the daemon's T3BackupNoUsers alert pages on it.
    check-config (`strict_usermap`) prints all of this in its own result.
    Raises ConfigError if the config is invalid or the usermap is missing or unreadable.
    """
    served = load_served(resolve_config_path(args.config))
    fmt, level = log_settings(args, served.config)
    configure_logging(fmt, level)
    if strict_usermap:
        return served.config, list(served.users), list(served.problems)
    nobody = nobody_served(served.config, served.users) if not getattr(args, "user", None) else None
    if events_on(args):
        log_problems(served)
        if nobody is not None:
            get_logger().warning("usermap serves no user", usermap=served.config.usermap,
                                 detail=nobody)  # fmt: skip
    else:
        _print_problems(served)
        if nobody is not None:
            sys.stderr.write(f"t3backupd: warning: {nobody}\n")
    return served.config, list(served.users), list(served.problems)


def _print_problems(served: Served) -> None:
    for problem in served.problems:
        # Run as a user for themselves, the other users' lines are expected, not news.
        if problem.reason != NOT_ROOT_REASON:
            sys.stderr.write(f"t3backupd: {served.config.usermap}: skipped {problem}\n")


def select_users(users: Sequence[User], wanted: Sequence[str], config: Config) -> list[User]:
    """Users named by --user (all when none). Raises UsageError for a name not served."""
    if not wanted:
        return list(users)
    by_name = {user.name: user for user in users}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        if not running_as_root() and unknown[0] != own_name():
            raise UsageError(
                f"user {unknown[0]!r}: not root, so only your own backups ({own_name()}) "
                "can be served; run as root"
            )
        raise UsageError(f"user {unknown[0]!r} is not a served user in {config.usermap}")
    return [by_name[name] for name in dict.fromkeys(wanted)]


def require_dest(config: Config) -> None:
    """A read-only command on a `dest` that does not exist: one line, exit 1 (a mistyped
    T3_BACKUP_DEST must not look like "no snapshots")."""
    if not os.path.lexists(config.dest):
        origin = dict(config.origins).get("dest", "default")
        raise T3BackupError(
            f"no backup directory {config.dest} (dest, from {origin}): nothing was ever "
            "backed up there; check dest and T3_BACKUP_DEST"
        )


# --- commands -------------------------------------------------------------------------


def command_snapshot(args: argparse.Namespace) -> int:
    if args.label is not None and not is_valid_label(args.label):
        raise UsageError(f"invalid label {args.label!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    config, users, _ = load_context(args)
    out = Output(args.quiet)
    selected = select_users(users, args.user, config)
    if not selected:
        return EXIT_OK  # load_context warned: the usermap serves no user
    results = run_pass(
        config, selected, label=args.label, accept_downgrade=args.accept_schema_downgrade
    )
    for result in results:
        report = result.report
        name = result.user.name
        if report.ok and report.snapshot is not None:
            pruned = (
                f"; pruned {len(report.pruned)}: {', '.join(report.pruned)}"
                if report.pruned
                else "; pruned nothing"
            )
            out.result(
                f"{name}: ok {report.snapshot.name} ({human(report.snapshot.bytes)}, "
                f"{result.duration_s:.1f}s){pruned}"
            )
        elif report.status == "skipped":
            out.result(f"{name}: skipped ({report.message})")
        else:
            out.problem(f"{name}: FAILED {report.reason}: {report.message}")
    return EXIT_FAILED if any(result.report.status == "failed" for result in results) else EXIT_OK


def _snapshot_json(info: SnapshotInfo, in_future: bool) -> dict[str, object]:
    return {
        "name": info.name,
        "time": datetime.fromtimestamp(info.time, UTC).isoformat(),
        "timestamp": info.time,
        "bytes": info.bytes,
        "label": info.label,
        "has_checksum": info.has_checksum,
        "in_future": in_future,
        "schema_version": info.schema_version,
    }


def with_schema(config: Config, user: User, report: Report) -> Report:
    """`report`'s snapshots with the schema version root recorded when it published each
    (its ledger: never the user's word); unknown ones stay None."""
    recorded = ledger.load(ledger.ledger_dir(config), user.name)
    snapshots = tuple(
        replace(info, schema_version=recorded[info.name].schema_version)
        if info.name in recorded
        else info
        for info in report.snapshots
    )
    return replace(report, snapshots=snapshots)


def newest_first(snapshots: Sequence[SnapshotInfo]) -> list[SnapshotInfo]:
    """The one order of `list` and `verify`: newest first (by the time in the name)."""
    return sorted(snapshots, key=lambda info: (info.time, info.name), reverse=True)


def newest_results_first(results: Sequence[VerifyResult]) -> list[VerifyResult]:
    """Verify (and adopt) results in the order of `list`: newest first."""

    def key(result: VerifyResult) -> tuple[float, str]:
        parsed = parse_name(result.name)
        return (parsed.time.timestamp() if parsed is not None else 0.0, result.name)

    return sorted(results, key=key, reverse=True)


def _failure_text(report: Report) -> str | None:
    """Why a user's job did not run or failed; None if it ran (a missing directory is
    not an error for list: that user has no snapshots)."""
    if report.ok or report.reason == "no_directory":
        return None
    return f"{report.reason}: {report.message}"


def command_list(args: argparse.Namespace) -> int:
    config, users, _ = load_context(args)
    out = Output(args.quiet)
    selected = select_users(users, args.user, config)
    if args.offsite:
        from t3backupd.root.offsite import commands as offsite_commands

        return offsite_commands.list_offsite(config, selected, args.json, out)
    require_dest(config)
    now = time.time()
    documents = [(user, with_schema(config, user, inventory_user(config, user).report))
                 for user in selected]  # fmt: skip
    status = EXIT_FAILED if any(_failure_text(r) for _, r in documents) else EXIT_OK
    future = {name for _, report in documents for name in future_dated(report.snapshots, now)}
    if args.json:
        payload = {
            "users": [
                {
                    "user": user.name,
                    "error": _failure_text(report),
                    "dir_bytes": report.dir_bytes,
                    "snapshots": [
                        _snapshot_json(info, info.name in future)
                        for info in newest_first(report.snapshots)
                    ],
                }
                for user, report in documents
            ]
        }
        print(json.dumps(payload, indent=2))
        return status
    for user, report in documents:
        failure = _failure_text(report)
        if failure is not None:
            out.problem(f"{user.name}: cannot list: {failure}")
            continue
        if report.reason == "no_directory":
            out.result(f"{user.name}: no snapshots (never backed up: {report.message})")
            continue
        if not report.snapshots:
            out.result(f"{user.name}: no snapshots")
            continue
        usage = f", directory {human(report.dir_bytes)}" if report.dir_bytes else ""
        out.result(f"{user.name}: {len(report.snapshots)} snapshot(s), newest first{usage}")
        for info in newest_first(report.snapshots):
            when = listed_time(info.time)
            checksum = "" if info.has_checksum else "  (no checksum)"
            label = f"  [{info.label}]" if info.label else ""
            age = age_column(info.time, now, info.name in future)
            if info.name in future:
                checksum += "  (clock fault or planted; never taken as latest)"
            out.result(
                f"  {info.name:<52} {when}  {age:>10}  {human(info.bytes):>10}"
                f"{schema_column(info.schema_version)}{label}{checksum}"
            )
    space = destination_space(config.dest)
    largest = DIR_SIZES.describe_largest()
    if space is not None:
        out.result(f"destination {config.dest}: {human(space[0])} free of {human(space[1])}")
    if largest:
        out.result(f"largest directories: {largest}")
    return status


def command_check_config(args: argparse.Namespace) -> int:
    from t3backupd.root.checkconfig import (
        DEFAULT_WRITABLE,
        effective_lines,
        installed_unit,
        warnings_for,
        writable_paths,
    )

    config, users, problems = load_context(args, strict_usermap=True)
    if running_as_root():
        # What the daemon refuses at start is an error here too, not a warning: as root
        # this is the daemon's view (a user's check-config never opens root's secrets).
        require_offsite_secrets(config)
    out = Output(args.quiet)
    out.result(f"config {config.path}: ok")
    for line in effective_lines(config):
        out.result(f"  {line}")
    own = [p for p in problems if p.reason != NOT_ROOT_REASON]
    others = len(problems) - len(own)
    out.result(f"usermap {config.usermap}: {len(users)} user(s) served, {len(own)} skipped")
    for user in users:
        out.result(f"  {user.name} (uid {user.uid}): {config.source_for(user.name, user.home)}")
    for problem in own:
        out.problem(f"  skipped {problem}")
    if others:
        out.result(f"  {others} other user(s) not served: not running as root")
    unit, texts = installed_unit()
    writable = writable_paths(texts) if texts else list(DEFAULT_WRITABLE)
    warnings = warnings_for(config, users, unit, writable)
    warnings += [w for w in (nobody_served(config, users), verify_shadowed(config)) if w]
    from t3backupd.root.offsite.report import offsite_report

    offsite_lines, offsite_warnings = offsite_report(config, datetime.now(UTC))
    for line in offsite_lines:
        out.result(line)
    warnings += offsite_warnings
    for warning in warnings:
        out.problem(f"warning: {warning}")
    # Imported here: APScheduler (behind the scheduler) is for `run` and this listing
    # only; every other command starts without loading it.
    from t3backupd.root.scheduler import next_run_times, trigger_for

    try:
        runs = next_run_times(trigger_for(config.schedule), datetime.now(UTC), 3)
    except CronError as error:  # validated already; kept for a clear line if not
        raise ConfigError(config.path, [f"schedule.cron: {error}"]) from None
    out.result(f"schedule '{config.schedule.cron}' ({config.schedule.timezone}), next runs:")
    for run in runs:
        out.result(f"  {run.isoformat()}")
    if args.strict and (own or warnings):
        out.problem(f"--strict: {len(own)} skipped usermap line(s), {len(warnings)} warning(s)")
        return EXIT_FAILED
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
    out = Output(args.quiet)
    selected = select_users(users, args.user, config)
    require_dest(config)
    results = run_verify_pass(config, selected, args.latest, args.quick)
    reports = [(result.user, result.report) for result in results]
    checked = sum(len(report.verified) for _, report in reports)
    bad = sum(verify_failures(report) for _, report in reports if report.ok)
    errors = [user for user, report in reports if report.status == "failed"]
    empty = [user for user, report in reports if report.status != "failed" and not report.verified]
    failed_run = bool(bad or errors or empty)
    if args.json:
        payload = {
            "ok": not failed_run,
            "check": "quick_check" if args.quick else "integrity_check",
            "summary": {
                "users": len(reports),
                "snapshots": checked,
                "bad": bad,
                "users_failed": len(errors),
                "users_without_snapshots": len(empty),
            },
            "users": [
                {
                    "user": user.name,
                    "error": None
                    if report.status != "failed"
                    else f"{report.reason}: {report.message}",
                    "snapshots": [
                        {"name": result.name, "outcome": result.outcome, "detail": result.detail}
                        for result in newest_results_first(report.verified)
                    ],
                }
                for user, report in reports
            ],
        }
        print(json.dumps(payload, indent=2))
        return EXIT_FAILED if failed_run else EXIT_OK
    for user, report in reports:
        if report.status == "failed":
            out.problem(f"{user.name}: cannot verify: {report.reason}: {report.message}")
            continue
        if not report.verified:
            why = "never backed up" if report.reason == "no_directory" else "directory is empty"
            out.problem(f"{user.name}: NO SNAPSHOTS to verify ({why})")
            continue
        for result in newest_results_first(report.verified):
            detail = f"  ({result.detail})" if result.detail else ""
            line = f"{user.name}: {result.name}  {VERIFY_WORDS[result.outcome]}{detail}"
            (out.result if result.outcome == "ok" else out.problem)(line)
    parts = [f"{checked - bad} ok", f"{bad} bad"]
    if errors:
        parts.append(f"{len(errors)} user(s) could not be verified")
    if empty:
        parts.append(f"{len(empty)} user(s) without any snapshot")
    summary = f"verified {checked} snapshot(s) of {len(reports)} user(s): {', '.join(parts)}"
    (out.problem if failed_run else out.result)(summary)
    return EXIT_FAILED if failed_run else EXIT_OK


def _refused(report: Report) -> None:
    sys.stderr.write(f"t3backupd: restore refused ({report.reason}): {report.message}\n")


def _skipped(out: Output, user: str, name: str | None) -> None:
    """One line when the choice passed over a future-dated snapshot (`latest`, `--at`)."""
    note = skipped_note(name)
    if note is not None:
        out.result(f"{user}: {note}")


def command_restore(args: argparse.Namespace) -> int:
    parse_snapshot_request(args.snapshot)  # one clear line before anything runs
    if args.force and not args.in_place:
        raise UsageError("--force applies only to --in-place")
    config, users, _ = load_context(args)
    moment = at_moment(config, args.at) if args.at is not None else None
    out = Output(args.quiet)
    user = select_users(users, [args.user], config)[0]
    streamed: StreamedCopy | None = None
    request = args.snapshot
    origin = ""
    skipped: str | None = None
    if args.origin == "offsite":
        from t3backupd.root.offsite import commands as offsite_commands

        streamed = offsite_commands.streamed_copy(config, user, request, moment, args.before_schema)
        request, origin = streamed.name, " from offsite"
    else:
        require_dest(config)
        if moment is not None:
            request, skipped = local_at(config, user, moment)
        elif args.before_schema is not None:
            request = local_before_schema(config, user, args.before_schema)
    if args.to is not None:
        # Relative to the caller's cwd, not normalised: '..' keeps the kernel's meaning.
        target = args.to if os.path.isabs(args.to) else os.path.join(os.getcwd(), args.to)
        report = restore_to(config, user, request, target, streamed)
        if not report.ok:
            _refused(report)
            return EXIT_FAILED
        _skipped(out, user.name, skipped or report.extra.get("skipped_future"))
        out.result(
            f"{user.name}: restored {report.extra.get('restored_from')}{origin}: {report.message}"
        )
        note = future_note(report)
        if note is not None:
            out.result(f"{user.name}: {note}")
        return EXIT_OK
    if not running_as_root() and (
        not os.path.lexists(config.dest) or os.lstat(config.dest).st_uid != os.geteuid()
    ):
        raise T3BackupError(
            f"restore --in-place first takes a pre-restore snapshot into {config.dest}, "
            "which only root can write: run it as root (restore --to PATH works as the user)"
        )
    result = restore_in_place(config, user, request, force=args.force, streamed=streamed)
    report = result.report
    _skipped(out, user.name, skipped or result.skipped_future)
    if result.pre_restore is not None:
        out.result(f"{user.name}: pre-restore snapshot {result.pre_restore} taken")
    if not report.ok:
        _refused(report)
        if result.undo is not None:
            sys.stderr.write(
                f"t3backupd: {result.pre_restore} holds the state before this attempt; "
                f"to go back to it: {result.undo}\n"
            )
        return EXIT_FAILED
    for verified in report.verified:
        out.result(f"{user.name}: verified {verified.name}: {VERIFY_WORDS[verified.outcome]}")
    out.result(f"{user.name}: {report.message}")
    note = future_note(report)
    if note is not None:
        out.result(f"{user.name}: {note}")
    if result.undo is not None:
        out.result(f"to undo: {result.undo}")
    else:
        out.result("no database existed before the restore: nothing to undo")
    return EXIT_OK


def command_adopt(args: argparse.Namespace) -> int:
    config, users, _ = load_context(args)
    out = Output(args.quiet)
    selected = select_users(users, args.user, config)
    require_dest(config)
    status = EXIT_OK
    for result in run_adopt(config, selected):
        name, report = result.user.name, result.report
        if not report.ok:
            status = EXIT_FAILED
            out.problem(f"{name}: cannot adopt: {report.reason}: {report.message}")
            continue
        if not report.verified:
            out.result(f"{name}: nothing to adopt (every snapshot has a checksum)")
            continue
        for item in newest_results_first(report.verified):
            if item.outcome == "ok":
                out.result(f"{name}: {item.name}  adopted ({item.detail})")
            else:
                status = EXIT_FAILED
                detail = f"  ({item.detail})" if item.detail else ""
                out.problem(
                    f"{name}: {item.name}  NOT ADOPTED: {VERIFY_WORDS[item.outcome]}{detail}"
                )
    return status


def command_run(args: argparse.Namespace) -> int:
    if not running_as_root() and not args.unprivileged:
        # Before the config is read: nothing binds the metrics port or runs a pass. A
        # daemon started by mistake as a user would serve nobody else, every minute.
        raise UsageError(
            f"run must run as root (its workers switch to each user), not as {own_name()}; "
            "to serve only your own backups, run --unprivileged"
        )
    # Imported here: the daemon's scheduler and HTTP server are for `run` only.
    from t3backupd.root import daemon

    return daemon.run(resolve_config_path(args.config))


def command_offsite(args: argparse.Namespace) -> int:
    from t3backupd.root.offsite import commands as offsite_commands

    config, users, _ = load_context(args)
    require_offsite_secrets(config)
    out = Output(args.quiet)
    if args.offsite_command == "init":
        return offsite_commands.init(config, out)
    selected = select_users(users, args.user, config)
    if args.offsite_command == "check":
        return offsite_commands.check(config, selected, out)
    return offsite_commands.sync(config, selected, out)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "offsite": command_offsite,
    "run": command_run,
    "verify": command_verify,
    "restore": command_restore,
    "snapshot": command_snapshot,
    "list": command_list,
    "check-config": command_check_config,
    "adopt": command_adopt,
}


# What ends a command the way Ctrl-C does. SIGHUP (the terminal went away) too, unless
# it was inherited ignored: that is `nohup`, asking the command to outlive the terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_stop_handlers() -> None:
    """Make SIGINT and SIGTERM (and a not-ignored SIGHUP) raise KeyboardInterrupt in the
    main thread, so every command stops through one path: its workers stopped and
    reaped, their temp files gone, exit 130.

    Set explicitly, whatever was inherited: a command started in the background by a
    non-interactive shell (`cmd &` in a script, a CI harness) inherits SIGINT *ignored*,
    and Python then installs no KeyboardInterrupt handler, so a Ctrl-C or `kill -INT`
    was silently lost (issue 18). A SIGTERM's default action killed the CLI at once and
    left its workers (their own process groups) running unwatched. Only the first signal
    counts: later ones are ignored so that the bounded stop is never cut short.
    """
    handled = list(STOP_SIGNALS)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        handled.append(signal.SIGHUP)

    def on_stop(signum: int, frame: object) -> None:
        _ignore(handled)
        raise KeyboardInterrupt

    for number in handled:
        signal.signal(number, on_stop)


def _ignore(signals: Sequence[int]) -> None:
    for number in signals:
        signal.signal(number, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    """The program (`argv` None: the process's own command line), or one command run
    in-process (`argv` given, as tests do): its signal handlers are put back after."""
    args = build_parser().parse_args(argv)
    stoppable = args.command != "run"  # the daemon handles its own signals (reload, stop)
    previous = {number: signal.getsignal(number) for number in (*STOP_SIGNALS, signal.SIGHUP)}
    if stoppable:
        install_stop_handlers()
    try:
        status = _dispatch(args)
        if stoppable and argv is None:
            _ignore(list(previous))  # done, the process exits next: nothing left to stop
    except KeyboardInterrupt:  # at most one: the handler ignores every later signal
        sys.stderr.write("t3backupd: interrupted\n")
        return EXIT_INTERRUPTED
    finally:
        if stoppable and argv is not None:
            for number, handler in previous.items():
                signal.signal(number, handler)
    return status


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except T3BackupError as error:
        # On systemd's journal stream (a refused `run`), at err like the daemon's errors.
        priority = "<3>" if is_journal_stream(sys.stderr) else ""
        sys.stderr.write(f"{priority}t3backupd: {error}\n")
        return error.exit_code
