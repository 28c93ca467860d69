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
import shutil
import signal
import socket
import threading
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from t3backupd.core.naming import parse_name
from t3backupd.core.offsite_config import (
    OffsiteConfig,
    SecretFileError,
    parse_environment,
    read_secret_file,
    subset_fraction,
)
from t3backupd.root.offsite.engine import (
    LOW_PRIORITY,
    OffsiteError,
    OffsiteSnapshot,
    SnapshotMeta,
    UploadResult,
    optional_fields,
)
from t3backupd.root.offsite.process import (
    BASE_ENVIRONMENT,
    ERROR_TAIL_BYTES,
    LOCK_WAIT_SECONDS,
    EngineProcess,
    cache_directory,
    lock_for,
    start_engine,
)

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

# Borg processes of ours per repository (break-lock waits for none).
_RUNNING: dict[str, int] = {}
_RUNNING_GUARD = threading.Lock()


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
    for msgid, message in lines:
        if msgid in _MSGIDS:
            return _MSGIDS[msgid], message
    joined = "\n".join(message for _, message in lines).lower()
    for reason, needles in _PATTERNS:
        for needle in needles:
            if needle in joined:
                line = next(m for _, m in lines if needle in m.lower())
                return reason, line
    meaningful = [m for _, m in lines if not m.startswith("Remote: Traceback")]
    return "failed", (meaningful[-1] if meaningful else "no error output")


def _printable(line: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in line.strip())[:240]


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


class BorgEngine:
    """borg on one repository (see the module docstring)."""

    name = "borg"

    def __init__(self, config: OffsiteConfig, tracker: Any = None) -> None:
        self.config = config
        self.location = config.repository  # borg URLs carry no password
        self.host = config.host or socket.gethostname().split(".")[0] or "localhost"
        self.tracker = tracker
        self._lock = lock_for(config.repository)
        self._owner = 0 if os.geteuid() == 0 else os.geteuid()

    # --- running borg -------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = dict(BASE_ENVIRONMENT)
        if self.config.environment_file:
            try:
                raw = read_secret_file(self.config.environment_file, self._owner)
                env.update(parse_environment(raw.decode("utf-8")))
            except (SecretFileError, ValueError, UnicodeDecodeError) as error:
                raise OffsiteError(
                    "auth", f"offsite.environment_file {self.config.environment_file}: {error}"
                ) from None
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
        return env

    def _argv(self, borg: str, command: str, args: Sequence[str]) -> list[str]:
        argv = [
            *LOW_PRIORITY,
            borg,
            command,
            "--log-json",
            "--lock-wait",
            str(min(BORG_LOCK_WAIT_SECONDS, self.config.timeout_seconds)),
        ]
        if self.config.limit_upload_kib and self.config.repository.startswith("ssh://"):
            argv += ["--upload-ratelimit", str(self.config.limit_upload_kib)]
        return argv + list(args)

    def _start(
        self,
        command: str,
        args: Sequence[str],
        stdin: int | None = None,
        drain_stdout: bool = True,
    ) -> EngineProcess:
        if self.tracker is not None and self.tracker.stopping.is_set():
            raise OffsiteError("failed", f"not started on {self.location}: stopping")
        try:
            read_secret_file(self.config.password_file, self._owner)
        except SecretFileError as error:
            raise OffsiteError(
                "auth", f"offsite.password_file {self.config.password_file}: {error}"
            ) from None
        environment = self._environment()
        # Resolved here, so a missing binary is this one line, not the wrapper's error.
        borg = shutil.which(self.config.borg, path=environment.get("PATH"))
        if borg is None:
            raise OffsiteError("failed", f"cannot run {self.config.borg}: not found")
        # Root's all the way up, made and chmodded without following a link.
        os.close(cache_directory(self.config.cache_dir, ("base", "cache", "config", "security")))
        with _RUNNING_GUARD:
            _RUNNING[self.config.repository] = _RUNNING.get(self.config.repository, 0) + 1
        try:
            # SIGTERM, never SIGINT: on SIGINT borg 1.2 commits a `.checkpoint` archive of
            # what it read; on SIGTERM it exits without one.
            return start_engine(
                self._argv(borg, command, args), environment, self.tracker, signal.SIGTERM,
                stdin, drain_stdout, self.config.borg, self.location,
            )  # fmt: skip
        except OffsiteError:
            self._ended()
            raise

    def _ended(self) -> None:
        with _RUNNING_GUARD:
            _RUNNING[self.config.repository] = max(0, _RUNNING.get(self.config.repository, 1) - 1)

    def _wait(self, process: EngineProcess, timeout: float) -> int | None:
        """The exit status, or None (borg stopped) on timeout."""
        try:
            return process.wait(timeout)
        finally:
            self._ended()

    def _stop(self, process: EngineProcess) -> None:
        try:
            process.stop()
        finally:
            self._ended()

    def _fail(self, what: str, process: EngineProcess, status: int | None) -> OffsiteError:
        if status is None:
            return OffsiteError(
                "timeout",
                f"borg {what} on {self.location}: no result after {self.config.timeout_seconds}s",
            )
        reason, line = classify(process.stderr)
        line = _printable(line)
        return OffsiteError(reason, f"borg {what} on {self.location}: {line}")

    def _run(
        self, command: str, args: Sequence[str], what: str = "", timeout: float | None = None
    ) -> bytes:
        process = self._start(command, args)
        status = self._wait(process, self.config.timeout_seconds if timeout is None else timeout)
        if status not in (0, 1):  # 1: finished with warnings
            raise self._fail(what or command, process, status)
        return process.stdout

    # --- Engine -------------------------------------------------------------------------

    def init(self) -> bool:
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            process = self._start(
                "init",
                [
                    f"--encryption={self.config.encryption}",
                    "--make-parent-dirs",
                    self.config.repository,
                ],
            )
            status = self._wait(process, self.config.timeout_seconds)
            if status == 0:
                return True
            if status is not None and any(
                msgid == "Repository.AlreadyExists" for msgid, _ in _log_lines(process.stderr)
            ):
                return False
            raise self._fail("init", process, status)

    def snapshots(self, user: str | None = None) -> list[OffsiteSnapshot]:
        prefix = f"{ARCHIVE_PREFIX}+{self.host}+" + (f"{user}+" if user is not None else "")
        args = [
            "--json",
            "--format",
            "{comment}{hostname}",
            "--glob-archives",
            f"{prefix}*",
            self.config.repository,
        ]
        with self._lock.shared(LOCK_WAIT_SECONDS):
            raw = self._run("list", args)
        try:
            listing = json.loads(raw or b"{}")
        except ValueError:
            raise OffsiteError(
                "failed", f"borg list on {self.location}: output is not JSON"
            ) from None
        items = listing.get("archives") if isinstance(listing, dict) else None
        found = []
        for item in items if isinstance(items, list) else []:
            snapshot = _parse_archive(item, self.host)
            if snapshot is not None and (user is None or snapshot.meta.user == user):
                found.append(snapshot)
        found.sort(key=lambda s: (s.meta.time, s.meta.name, s.id))
        return found

    def start_upload(self, meta: SnapshotMeta) -> BorgUpload:
        page_size = meta.page_size
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            raise OffsiteError("corrupt", f"{meta.name}: no valid SQLite page size ({page_size})")
        when = datetime.fromtimestamp(meta.time, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        args = [
            "--json",
            "--stdin-name",
            f"{meta.user}.sqlite",
            "--timestamp",
            when,
            "--chunker-params",
            f"fixed,{page_size}",
            "--compression",
            COMPRESSION,
            # No checkpoint archive within an upload's deadline: an aborted upload leaves
            # nothing behind (SIGTERM before EOF ends borg without an archive).
            "--checkpoint-interval",
            str(self.config.timeout_seconds + 3600),
            "--comment",
            _comment(meta),
            f"{self.config.repository}::{archive_name(self.host, meta)}",
            "-",
        ]
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        lock = self._lock.shared(LOCK_WAIT_SECONDS)
        lock.__enter__()
        try:
            process = self._start("create", args, stdin=read_end)
        except BaseException:
            os.close(write_end)
            lock.__exit__(None, None, None)
            raise
        finally:
            os.close(read_end)
        return BorgUpload(self, process, write_end, lock, archive_name(self.host, meta))

    def start_download(self, snapshot: OffsiteSnapshot) -> BorgDownload:
        lock = self._lock.shared(LOCK_WAIT_SECONDS)
        lock.__enter__()
        try:
            process = self._start(
                "extract",
                ["--stdout", f"{self.config.repository}::{snapshot.id}"],
                drain_stdout=False,
            )
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        return BorgDownload(self, process, lock)

    def forget(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        for archive in ids:
            # Never a glob, never the whole repository: exact names of our archives.
            if not archive.startswith(f"{ARCHIVE_PREFIX}+") or "*" in archive:
                raise OffsiteError("failed", f"borg delete on {self.location}: bad id {archive}")
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            self._run("delete", [self.config.repository, *ids])

    def prune(self) -> None:
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            self._run("compact", [self.config.repository], "compact")

    def check(self, read_data_subset: str) -> None:
        fraction = subset_fraction(read_data_subset) if read_data_subset else 0.0
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            if fraction is not None and fraction >= 1.0:
                self._run("check", ["--verify-data", self.config.repository])
                return
            if fraction:
                seconds = max(60, int(fraction * self.config.timeout_seconds))
                self._run(
                    "check",
                    ["--repository-only", "--max-duration", str(seconds), self.config.repository],
                )
            else:
                self._run("check", ["--repository-only", self.config.repository])
            self._run("check", ["--archives-only", self.config.repository])

    def unlock_stale(self) -> None:
        with _RUNNING_GUARD:
            ours = _RUNNING.get(self.config.repository, 0)
        if ours or _root_processes_naming(self.config.repository):
            return  # a live borg of ours may hold the lock; borg clears dead local ones
        self._run(
            "break-lock",
            [self.config.repository],
            timeout=min(300, self.config.timeout_seconds),
        )


class BorgUpload:
    """`borg create ... -` reading the pipe whose write end is `fd`."""

    def __init__(
        self, engine: BorgEngine, process: EngineProcess, fd: int, lock: Any, archive: str
    ) -> None:
        self.engine = engine
        self.process = process
        self.fd = fd
        self.archive = archive
        self._lock = lock
        self._closed = False

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            with suppress(OSError):
                os.close(self.fd)

    def commit(self, timeout: float) -> UploadResult:
        self._close()
        try:
            status = self.engine._wait(self.process, timeout)
        finally:
            self._lock.__exit__(None, None, None)
        if status not in (0, 1):
            raise self.engine._fail("create", self.process, status)
        try:
            summary = json.loads(self.process.stdout)
            archive = summary["archive"]
            added = archive["stats"]["deduplicated_size"]
        except (ValueError, KeyError, TypeError):
            raise OffsiteError(
                "failed", f"borg create on {self.engine.location}: no summary in its output"
            ) from None
        if archive.get("name") != self.archive or not isinstance(added, int):
            raise OffsiteError(
                "failed", f"borg create on {self.engine.location}: unexpected summary"
            )
        return UploadResult(self.archive, max(0, added))

    def abort(self) -> None:
        # SIGTERM before EOF: borg stops without committing an archive (its transaction
        # is rolled back at the next access); SIGINT would commit a checkpoint archive.
        try:
            self.engine._stop(self.process)
        finally:
            self._close()
            self._lock.__exit__(None, None, None)


class BorgDownload:
    """`borg extract --stdout REPO::NAME`, its stdout read by the caller from `fd`."""

    def __init__(self, engine: BorgEngine, process: EngineProcess, lock: Any) -> None:
        self.engine = engine
        self.process = process
        self._lock = lock
        stdout = process.popen.stdout
        if stdout is None:
            raise RuntimeError("Popen without stdout")
        self.fd = stdout.fileno()

    def finish(self, timeout: float) -> None:
        try:
            status = self.engine._wait(self.process, timeout)
        finally:
            self._lock.__exit__(None, None, None)
        if status not in (0, 1):
            raise self.engine._fail("extract", self.process, status)

    def abort(self) -> None:
        try:
            self.engine._stop(self.process)
        finally:
            self._lock.__exit__(None, None, None)


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
    try:
        size = int(values.get("size", "-1"))
        page_size = int(values.get("page_size", "0"))
    except ValueError:
        return None
    optional = optional_fields(values)
    if parsed is None or not user or optional is None:
        return None
    meta = SnapshotMeta(
        user=user,
        name=snapshot_name,
        time=parsed.time.timestamp(),
        size=size,
        sha256=values.get("sha256", ""),
        label=parsed.label,
        page_size=page_size,
        schema_version=optional[0],
        seal=optional[1],
    )
    if not meta.valid():
        return None
    archive_id = item.get("id")
    return OffsiteSnapshot(name, meta, host, archive_id if isinstance(archive_id, str) else "")
