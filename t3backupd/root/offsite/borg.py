"""The borg engine (Debian 12's borgbackup 1.2 CLI, `--json` and `--log-json`).

borg runs as root with a minimal environment built here, nothing inherited:

- the passphrase: `BORG_PASSCOMMAND="cat -- <password_file>"` -- borg reads the root-only
  file itself; the passphrase is never in an argv or an environment (and so never in any
  /proc/<pid>/environ or cmdline), only the file's path is;
- `BORG_BASE_DIR`, `BORG_CACHE_DIR`, `BORG_CONFIG_DIR`, `BORG_SECURITY_DIR` and `HOME`
  under the root-only `cache_dir` (mode 0700): borg never writes into ~root or into
  anything a user controls;
- `BORG_RELOCATED_REPO_ACCESS_IS_OK=no`, `BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=no`,
  `BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=NO` (a whole-repository delete is never confirmed);
  stdin is the snapshot stream or /dev/null: borg can never prompt;
- `BORG_RSH="ssh -o BatchMode=yes -o StrictHostKeyChecking=yes ..."` plus the operator's
  `options` as `-o Key=Value` (e.g. `UserKnownHostsFile=`, `IdentityFile=`, `Port=`);
  the environment file adds back-end variables (BORG_RSH itself is refused there).

One archive per t3backupd snapshot, named `t3backupd+<host>+<user>+<snapshot name>` (the
label is in the snapshot name; `+` occurs in neither host nor user names), created with
`--stdin-name <user>.sqlite` (one constant path per user), `--timestamp` the snapshot's
time, `--chunker-params fixed,<page size>` (read from the stream's SQLite header by the
lane: chunks are SQLite pages, which is what makes hourly history cheap) and
`--compression zstd,3`; its comment `t3backupd sha256=<hex> size=<n> page_size=<n>`
records what `borg list --json --format {comment}` gives back. The archive name is the
copy's id: `forget` is `borg delete REPO NAME...` of one user's names only; `prune` is
`borg compact` (1.2 frees space only then).

`check(subset)`: a full share ("1/1", "100%") is `borg check --verify-data` (every chunk
read and decrypted); a partial share f is `borg check --repository-only --max-duration
<f x timeout_seconds>` (borg resumes its partial repository check where the last one
stopped, so successive checks cover the whole repository) followed by `borg check
--archives-only` (archive metadata). The restore drill reads the newest copy of each
user end to end either way.

`unlock_stale`: borg 1.2 removes a stale lock of a dead process on this host by itself
(`BORG_HOSTNAME_IS_UNIQUE=yes`); beyond that, `borg break-lock` runs only when no borg of
ours runs on this repository -- none started by this process, and no root process on the
host whose command line names the repository (a CLI command beside the daemon) -- since
break-lock would remove a live lock too.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
from collections.abc import Sequence
from datetime import UTC, datetime

from t3backupd.core.naming import parse_name
from t3backupd.core.offsite_config import subset_fraction
from t3backupd.root.offsite.cli_engine import CommandEngine, printable, running
from t3backupd.root.offsite.engine import (
    OffsiteError,
    OffsiteSnapshot,
    SnapshotMeta,
    UploadResult,
    recorded_meta,
)
from t3backupd.root.offsite.process import ERROR_TAIL_BYTES

ARCHIVE_PREFIX = "t3backupd"
COMMENT_MARKER = "t3backupd"
COMPRESSION = "zstd,3"
BORG_LOCK_WAIT_SECONDS = 120
# ssh takes the first value given for an option: BatchMode comes before the operator's
# options (never a prompt), the other defaults after them (the operator's win).
SSH_FORCED = ("BatchMode=yes",)
SSH_OPTIONS = (
    "StrictHostKeyChecking=yes",
    "ConnectTimeout=30",
    "ServerAliveInterval=30",
    "ServerAliveCountMax=4",
)

# borg's --log-json error ids (msgid) and, for what has none (ssh, OS errors), patterns.
_MSGIDS = {
    "PassphraseWrong": "auth",
    "PasscommandFailure": "auth",
    "NoPassphraseFailure": "auth",
    "PasswordRetriesExceeded": "auth",
    "Repository.DoesNotExist": "no_repository",
    "Repository.InvalidRepository": "no_repository",
    "Repository.InvalidRepositoryConfig": "no_repository",
    "LockTimeout": "locked",
    "LockFailed": "locked",
    "Repository.InsufficientFreeSpaceError": "no_space",
    "ConnectionClosed": "unreachable",
    "ConnectionClosedWithHint": "unreachable",
}
_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("auth", ("passphrase", "permission denied", "host key verification failed")),
    ("locked", ("failed to create/acquire the lock", "lock timeout")),
    ("no_space", ("no space left", "disk quota", "insufficient free space")),
    (
        "unreachable",
        (
            "connection closed by remote host",
            "connection refused",
            "connection timed out",
            "could not resolve hostname",
            "no route to host",
            "network is unreachable",
            "connection reset",
            "ssh:",
            "borg: command not found",
        ),
    ),
    ("no_repository", ("does not exist", "is not a valid repository")),
)


def _log_lines(stderr: bytes) -> list[tuple[str, str]]:
    """(msgid, message) of each error line in borg's --log-json stderr (plain lines too:
    ssh writes its own)."""
    found = []
    text = stderr[-ERROR_TAIL_BYTES * 4 :].decode("utf-8", "replace")
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
        except ValueError:
            found.append(("", line))
            continue
        if not isinstance(item, dict):
            found.append(("", line))
            continue
        if item.get("type") != "log_message" or item.get("levelname") not in (
            "ERROR",
            "CRITICAL",
        ):
            continue
        found.append((str(item.get("msgid") or ""), str(item.get("message") or "")))
    return found


def classify(stderr: bytes) -> tuple[str, str]:
    """The failure reason and the one line to show for borg's error output."""
    lines = _log_lines(stderr)
    # First: borg reports a lock it cannot write as LockFailed, which is no stale lock
    # (a repository read-only for t3backupd here, or on the server of an ssh:// one).
    read_only = _line_with(lines, "read-only file system")
    if read_only is not None:
        return "read_only", read_only
    for msgid, message in lines:
        if msgid in _MSGIDS:
            return _MSGIDS[msgid], message
    for reason, needles in _PATTERNS:
        for needle in needles:
            line = _line_with(lines, needle)
            if line is not None:
                return reason, line
    meaningful = [m for _, m in lines if not m.startswith("Remote: Traceback")]
    return "failed", (meaningful[-1] if meaningful else "no error output")


def _line_with(lines: list[tuple[str, str]], needle: str) -> str | None:
    """The first line of the messages that says `needle` (case aside): of a traceback
    (borg logs an unexpected OSError as one message), the line that says why."""
    for _, message in lines:
        for line in message.splitlines():
            if needle in line.lower():
                return line.strip()
    return None


def archive_name(host: str, meta: SnapshotMeta) -> str:
    return f"{ARCHIVE_PREFIX}+{host}+{meta.user}+{meta.name}"


def _comment(meta: SnapshotMeta) -> str:
    words = [COMMENT_MARKER, f"sha256={meta.sha256}", f"size={meta.size}"]
    return " ".join([*words, f"page_size={meta.page_size}", *meta.words()])


def _root_processes_naming(repository: str) -> int:
    """Root processes other than us whose command line runs borg on `repository`."""
    count = 0
    me = os.getpid()
    needle = repository.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != 0:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read(1 << 16).split(b"\0")
        except OSError:
            continue
        if any(os.path.basename(arg) == b"borg" for arg in argv[:2]) and any(
            needle in arg for arg in argv
        ):
            count += 1
    return count


class BorgEngine(CommandEngine):
    """borg on one repository (see the module docstring)."""

    name = "borg"
    # SIGTERM, never SIGINT: on SIGINT borg 1.2 commits a `.checkpoint` archive of what
    # it read; on SIGTERM it exits without one.
    stop_signal = signal.SIGTERM
    ok_statuses = (0, 1)  # 1: finished with warnings
    cache_subdirectories = ("base", "cache", "config", "security")

    def _engine_environment(self, env: dict[str, str]) -> None:
        base = os.path.join(self.config.cache_dir, "base")
        ssh = ["ssh"]
        for option in (*SSH_FORCED, *self.config.options, *SSH_OPTIONS):
            ssh += ["-o", option]
        env.update(
            {
                "HOME": base,
                "BORG_BASE_DIR": base,
                "BORG_CACHE_DIR": os.path.join(self.config.cache_dir, "cache"),
                "BORG_CONFIG_DIR": os.path.join(self.config.cache_dir, "config"),
                "BORG_SECURITY_DIR": os.path.join(self.config.cache_dir, "security"),
                "BORG_PASSCOMMAND": shlex.join(["cat", "--", self.config.password_file]),
                "BORG_RSH": shlex.join(ssh),
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
                "BORG_DELETE_I_KNOW_WHAT_I_AM_DOING": "NO",
                "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "NO",
                "BORG_HOSTNAME_IS_UNIQUE": "yes",
                "BORG_DISPLAY_PASSPHRASE": "no",
            }
        )

    def _arguments(self, command: Sequence[str]) -> list[str]:
        # Half the deadline at most: a lock held past it is `locked`, not `timeout`.
        lock_wait = max(1, min(BORG_LOCK_WAIT_SECONDS, self.config.timeout_seconds // 2))
        argv = [command[0], "--log-json", "--lock-wait", str(lock_wait)]
        if self.config.limit_upload_kib and self.config.repository.startswith("ssh://"):
            argv += ["--upload-ratelimit", str(self.config.limit_upload_kib)]
        return argv + list(command[1:])

    def _local_path(self) -> str | None:
        repository = self.config.repository
        return repository if repository.startswith("/") else None

    def _explain(self, stderr: bytes) -> tuple[str, str]:
        reason, line = classify(stderr)
        return reason, printable(line)

    def _create(self) -> bool:
        encryption = f"--encryption={self.config.encryption}"
        process = self._start(["init", encryption, "--make-parent-dirs", self.config.repository])
        status = self._wait(process, self.config.timeout_seconds)
        if status == 0:
            return True
        if status is not None and any(
            msgid == "Repository.AlreadyExists" for msgid, _ in _log_lines(process.stderr)
        ):
            return False
        raise self._fail("init", process, status)

    def _list_command(self, user: str | None) -> list[str]:
        prefix = f"{ARCHIVE_PREFIX}+{self.host}+" + (f"{user}+" if user is not None else "")
        return [
            "list",
            "--json",
            "--format",
            "{comment}{hostname}",
            "--glob-archives",
            f"{prefix}*",
            self.config.repository,
        ]

    def _listed(self, listing: object) -> list[OffsiteSnapshot]:
        items = listing.get("archives") if isinstance(listing, dict) else None
        found = (_parse_archive(item, self.host) for item in items or [])
        return [snapshot for snapshot in found if snapshot is not None]

    def _upload_command(self, meta: SnapshotMeta) -> tuple[list[str], str]:
        when = datetime.fromtimestamp(meta.time, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        name = archive_name(self.host, meta)
        command = [
            "create",
            "--json",
            "--stdin-name",
            f"{meta.user}.sqlite",
            "--timestamp",
            when,
            "--chunker-params",
            f"fixed,{meta.page_size}",
            "--compression",
            COMPRESSION,
            # No checkpoint archive within an upload's deadline: an aborted upload leaves
            # nothing behind (SIGTERM before EOF ends borg without an archive).
            "--checkpoint-interval",
            str(self.config.timeout_seconds + 3600),
            "--comment",
            _comment(meta),
            f"{self.config.repository}::{name}",
            "-",
        ]
        return command, name

    def _upload_result(self, stdout: bytes, expected_id: str) -> UploadResult:
        try:
            summary = json.loads(stdout)
            archive = summary["archive"]
            added = archive["stats"]["deduplicated_size"]
        except (ValueError, KeyError, TypeError):
            raise OffsiteError(
                "failed", f"borg create on {self.location}: no summary in its output"
            ) from None
        if archive.get("name") != expected_id or not isinstance(added, int):
            raise OffsiteError("failed", f"borg create on {self.location}: unexpected summary")
        return UploadResult(expected_id, max(0, added))

    def _download_command(self, snapshot: OffsiteSnapshot) -> list[str]:
        return ["extract", "--stdout", f"{self.config.repository}::{snapshot.id}"]

    def _forget_command(self, ids: Sequence[str]) -> list[str]:
        for archive in ids:
            # Never a glob, never the whole repository: exact names of our archives.
            if not archive.startswith(f"{ARCHIVE_PREFIX}+") or "*" in archive:
                raise OffsiteError("failed", f"borg delete on {self.location}: bad id {archive}")
        return ["delete", self.config.repository, *ids]

    def _prune_command(self) -> list[str]:
        return ["compact", self.config.repository]

    def _check_commands(self, read_data_subset: str) -> list[list[str]]:
        repository = self.config.repository
        fraction = subset_fraction(read_data_subset) if read_data_subset else 0.0
        if fraction is not None and fraction >= 1.0:
            return [["check", "--verify-data", repository]]
        partial = []
        if fraction:
            seconds = max(60, int(fraction * self.config.timeout_seconds))
            partial = ["--max-duration", str(seconds)]
        return [
            ["check", "--repository-only", *partial, repository],
            ["check", "--archives-only", repository],
        ]

    def _unlock_command(self) -> list[str] | None:
        if running(self.config.repository) or _root_processes_naming(self.config.repository):
            return None  # a live borg of ours may hold the lock; borg clears dead local ones
        return ["break-lock", self.config.repository]


def _parse_archive(item: object, host: str) -> OffsiteSnapshot | None:
    """One entry of `borg list --json`, or None if it is not a valid copy of ours."""
    if not isinstance(item, dict):
        return None
    name, comment = item.get("name"), item.get("comment")
    if not isinstance(name, str) or not isinstance(comment, str):
        return None
    parts = name.split("+", 3)
    if len(parts) != 4 or parts[0] != ARCHIVE_PREFIX or parts[1] != host:
        return None
    _, _, user, snapshot_name = parts
    words = comment.split()
    if not words or words[0] != COMMENT_MARKER:
        return None
    values = dict(word.split("=", 1) for word in words[1:] if "=" in word)
    parsed = parse_name(snapshot_name)
    meta = recorded_meta(user, snapshot_name, values, parsed.label if parsed else None)
    if meta is None:
        return None
    archive_id = item.get("id")
    return OffsiteSnapshot(name, meta, host, archive_id if isinstance(archive_id, str) else "")
