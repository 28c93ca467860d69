"""The restic engine (restic 0.14's CLI, `--json` where it has it).

restic runs as root with a minimal environment: the repository password through
`--password-file` (a root-only file; the path is in argv, never the password), the
back-end credentials from the root-only `environment_file` in its environment (which
only root can read in /proc), `TZ=UTC` so `--time` means UTC. No worker ever sees any
of it. Every command has a deadline and runs in its own process group, ended as a
group.

One restic snapshot per t3backupd snapshot: path `/<user>.sqlite` (one constant path
per user), `--host` this machine, `--time` the snapshot's time, tags `t3backupd`,
`user=U`, `name=NAME`, `sha256=HEX`, `size=N` and `label=L` for labelled ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from t3backupd.core.naming import parse_name
from t3backupd.core.offsite_config import (
    OffsiteConfig,
    SecretFileError,
    parse_environment,
    read_secret_file,
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

MARKER_TAG = "t3backupd"
_USER_TAG = re.compile(r"user=(.+)")
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # First: restic says "unable to create lock" for it too, which is no stale lock.
    ("read_only", re.compile(r"read-only file system", re.I)),
    ("auth", re.compile(r"wrong password|no key found", re.I)),
    ("locked", re.compile(r"already locked|unable to create lock", re.I)),
    ("no_space", re.compile(r"no space left|quota exceeded|disk quota|EntityTooLarge", re.I)),
    (
        "auth",
        re.compile(
            r"access denied|accessdenied|invalidaccesskeyid|signaturedoesnotmatch|"
            r"permission denied|forbidden|status code 403|status code 401|unauthori[sz]ed",
            re.I,
        ),
    ),
    (
        "unreachable",
        re.compile(
            r"connection refused|no such host|dial tcp|i/o timeout|network is unreachable|"
            r"connection reset|unable to start the sftp session|EOF|host is down|"
            r"no route to host|ssh:",
            re.I,
        ),
    ),
    (
        "no_repository",
        re.compile(
            r"unable to open config file|is there a repository|nosuchbucket|"
            r"bucket does not exist",
            re.I,
        ),
    ),
)


def classify(stderr: str) -> str:
    """The failure reason for restic's error output."""
    for reason, pattern in _PATTERNS:
        if pattern.search(stderr):
            return reason
    return "failed"


def redact(repository: str) -> str:
    """The repository as shown in messages: without a password in a URL."""
    scheme, sep, rest = repository.partition(":")
    if sep and scheme in ("rest", "s3", "swift") and "://" in rest:
        parts = urlsplit(rest)
        if parts.password is not None:
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return f"{scheme}:{urlunsplit(parts._replace(netloc=netloc))}"
    return repository


def _error_line(stderr: bytes, repository: str, shown: str) -> str:
    text = stderr[-ERROR_TAIL_BYTES:].decode("utf-8", "replace")
    if repository:
        text = text.replace(repository, shown)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith("Fatal:")]
    # restic 0.14 ends a failed lock with "unable to create lock in backend", after a Go
    # stack trace; the line that says why comes before it.
    read_only = [line for line in lines if "read-only file system" in line.lower()]
    line = fatal[-1] if fatal else read_only[-1] if read_only else (
        lines[-1] if lines else "no error output")  # fmt: skip
    line = line.removeprefix("Fatal: ")
    return "".join(ch if ch.isprintable() else "?" for ch in line)[:240]


def local_path(repository: str) -> str | None:
    """The directory of a local-path repository (`/path` or `local:/path`), else None."""
    path = repository.removeprefix("local:")
    return path if path.startswith("/") else None


def read_only_problem(path: str) -> str | None:
    """Why restic could not write the local repository `path`: its file system (or that
    of its nearest existing parent, for `init`) is read-only here, as under the unit's
    ProtectSystem=strict without a ReadWritePaths= for it; None otherwise. restic itself
    would retry such writes for about 45 s, then blame a lock."""
    probe = os.path.normpath(path)
    while not os.path.lexists(probe) and probe != "/":
        probe = os.path.dirname(probe)
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        return None  # restic says what is wrong
    if not read_only:
        return None
    return (
        f"{path} is on a read-only file system for t3backupd (under systemd: add "
        f"ReadWritePaths={path} in a drop-in, systemctl edit t3backupd)"
    )


class ResticEngine:
    """restic on one repository (see the module docstring)."""

    name = "restic"

    def __init__(self, config: OffsiteConfig, tracker: Any = None) -> None:
        self.config = config
        # With repository_file the URL is a secret: messages name the file, never the URL.
        self.location = (
            redact(config.repository)
            if config.repository
            else f"the repository in {config.repository_file}"
        )
        self.host = config.host or socket.gethostname().split(".")[0] or "localhost"
        self.tracker = tracker
        self._lock = lock_for(config.repository or config.repository_file)
        self._owner = 0 if os.geteuid() == 0 else os.geteuid()
        self._url = config.repository  # from repository_file: read at first use, by root

    # --- running restic ---------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = dict(BASE_ENVIRONMENT)
        env["HOME"] = os.environ.get("HOME", "/root") if os.geteuid() != 0 else "/root"
        if self.config.environment_file:
            try:
                raw = read_secret_file(self.config.environment_file, self._owner)
                env.update(parse_environment(raw.decode("utf-8")))
            except (SecretFileError, ValueError, UnicodeDecodeError) as error:
                raise OffsiteError(
                    "auth", f"offsite.environment_file {self.config.environment_file}: {error}"
                ) from None
        # The repository through the environment, never argv: a REST URL carries its
        # password, and any local user can read a process's /proc/PID/cmdline (its
        # environ is root's alone). Set last: it wins over an environment_file's.
        env["RESTIC_REPOSITORY"] = self._repository()
        return env

    def _repository(self) -> str:
        """The repository URL: `repository`, or the first line of the root-only
        `repository_file`, read here, at use (so a command that never runs restic never
        opens it). Raises OffsiteError naming the file, never its content."""
        if not self._url:
            path = self.config.repository_file
            try:
                lines = read_secret_file(path, self._owner).decode("utf-8").splitlines()
            except (SecretFileError, UnicodeDecodeError) as error:
                raise OffsiteError("auth", f"offsite.repository_file {path}: {error}") from None
            self._url = lines[0].strip() if lines else ""
            if not self._url:
                raise OffsiteError("auth", f"offsite.repository_file {path}: is empty")
        return self._url

    def _argv(self, restic: str, command: Sequence[str]) -> list[str]:
        argv = [
            *LOW_PRIORITY,
            restic,
            "--password-file",
            self.config.password_file,
            "--cache-dir",
            self.config.cache_dir,
        ]
        if self.config.limit_upload_kib:
            argv += ["--limit-upload", str(self.config.limit_upload_kib)]
        for option in self.config.options:
            argv += ["--option", option]
        return argv + list(command)

    def _start(
        self, command: Sequence[str], stdin: int | None = None, drain_stdout: bool = True
    ) -> EngineProcess:
        if self.tracker is not None and self.tracker.stopping.is_set():
            # Stopping: start nothing a stop could miss (it would outlive the daemon).
            raise OffsiteError("failed", f"not started on {self.location}: stopping")
        # The password file must still be root's alone when restic reads it.
        try:
            read_secret_file(self.config.password_file, self._owner)
        except SecretFileError as error:
            raise OffsiteError(
                "auth", f"offsite.password_file {self.config.password_file}: {error}"
            ) from None
        # Resolved first: it reads repository_file, whose URL may be a local path.
        env = self._environment()
        local = local_path(self._url)
        problem = read_only_problem(local) if local is not None else None
        if problem is not None:
            raise OffsiteError("read_only", problem)
        os.close(cache_directory(self.config.cache_dir))
        # Resolved here, so a missing binary is this one line, not the wrapper's error.
        restic = shutil.which(self.config.restic, path=env.get("PATH"))
        if restic is None:
            raise OffsiteError("failed", f"cannot run {self.config.restic}: not found")
        # SIGINT: restic stops without saving a snapshot and removes its lock.
        return start_engine(
            self._argv(restic, command), env, self.tracker, signal.SIGINT, stdin,
            drain_stdout, self.config.restic, self.location,
        )  # fmt: skip

    def _fail(self, what: str, process: EngineProcess, status: int | None) -> OffsiteError:
        if status is None:
            return OffsiteError(
                "timeout",
                f"restic {what} on {self.location}: no result after {self.config.timeout_seconds}s",
            )
        stderr = process.stderr
        line = _error_line(stderr, self._url, self.location)
        reason = classify(stderr.decode("utf-8", "replace"))
        return OffsiteError(reason, f"restic {what} on {self.location}: {line}")

    def _run(self, command: Sequence[str], what: str, timeout: float | None = None) -> bytes:
        process = self._start(command)
        status = process.wait(self.config.timeout_seconds if timeout is None else timeout)
        if status != 0:
            raise self._fail(what, process, status)
        return process.stdout

    # --- Engine -------------------------------------------------------------------------

    def init(self) -> bool:
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            try:
                self._run(["cat", "config"], "cat config", timeout=120)
                return False
            except OffsiteError as error:
                if error.reason != "no_repository":
                    raise
            self._run(["init", "--repository-version", "2"], "init")
            return True

    def snapshots(self, user: str | None = None) -> list[OffsiteSnapshot]:
        command = ["snapshots", "--json", "--host", self.host, "--tag", MARKER_TAG]
        if user is not None:
            command += ["--tag", f"user={user}"]
        with self._lock.shared(LOCK_WAIT_SECONDS):
            raw = self._run(command, "snapshots")
        try:
            items = json.loads(raw or b"[]")
        except ValueError:
            raise OffsiteError(
                "failed", f"restic snapshots on {self.location}: output is not JSON"
            ) from None
        found = []
        for item in items if isinstance(items, list) else []:
            snapshot = _parse_snapshot(item)
            if snapshot is not None and (user is None or snapshot.meta.user == user):
                found.append(snapshot)
        found.sort(key=lambda s: (s.meta.time, s.meta.name, s.id))
        return found

    def start_upload(self, meta: SnapshotMeta) -> ResticUpload:
        when = datetime.fromtimestamp(meta.time, UTC).strftime("%Y-%m-%d %H:%M:%S")
        command = [
            "backup",
            "--stdin",
            "--stdin-filename",
            f"{meta.user}.sqlite",
            "--host",
            self.host,
            "--time",
            when,
            "--compression",
            self.config.compression,
            "--json",
            "--quiet",
        ]
        for tag in _tags(meta):
            command += ["--tag", tag]
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        lock = self._lock.shared(LOCK_WAIT_SECONDS)
        lock.__enter__()
        try:
            process = self._start(command, stdin=read_end)
        except BaseException:
            os.close(write_end)
            lock.__exit__(None, None, None)
            raise
        finally:
            os.close(read_end)
        return ResticUpload(self, process, write_end, lock)

    def start_download(self, snapshot: OffsiteSnapshot) -> ResticDownload:
        lock = self._lock.shared(LOCK_WAIT_SECONDS)
        lock.__enter__()
        try:
            process = self._start(
                ["dump", snapshot.id, f"/{snapshot.meta.user}.sqlite"], drain_stdout=False
            )
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        return ResticDownload(self, process, lock)

    def forget(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            self._run(["forget", *ids], "forget")

    def prune(self) -> None:
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            self._run(["prune"], "prune")

    def check(self, read_data_subset: str) -> None:
        command = ["check"]
        if read_data_subset:
            command += ["--read-data-subset", read_data_subset]
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            self._run(command, "check")

    def unlock_stale(self) -> None:
        self._run(["unlock"], "unlock", timeout=min(300, self.config.timeout_seconds))


class ResticUpload:
    """`restic backup --stdin` reading the pipe whose write end is `fd`."""

    def __init__(self, engine: ResticEngine, process: EngineProcess, fd: int, lock: Any) -> None:
        self.engine = engine
        self.process = process
        self.fd = fd
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
            status = self.process.wait(timeout)
        finally:
            self._lock.__exit__(None, None, None)
        if status != 0:
            raise self.engine._fail("backup", self.process, status)
        for line in reversed(self.process.stdout.splitlines()):
            try:
                summary = json.loads(line)
            except ValueError:
                continue
            if isinstance(summary, dict) and summary.get("message_type") == "summary":
                snapshot_id = summary.get("snapshot_id")
                added = summary.get("data_added")
                if isinstance(snapshot_id, str) and isinstance(added, int):
                    return UploadResult(snapshot_id, max(0, added))
        raise OffsiteError(
            "failed", f"restic backup on {self.engine.location}: no summary in its output"
        )

    def abort(self) -> None:
        # SIGINT before EOF: restic stops without saving a snapshot and removes its lock.
        try:
            self.process.stop()
        finally:
            self._close()
            self._lock.__exit__(None, None, None)


class ResticDownload:
    """`restic dump ID /<user>.sqlite`, its stdout read by the caller from `fd`."""

    def __init__(self, engine: ResticEngine, process: EngineProcess, lock: Any) -> None:
        self.engine = engine
        self.process = process
        self._lock = lock
        stdout = process.popen.stdout
        if stdout is None:
            raise RuntimeError("Popen without stdout")
        # The caller reads the stream itself (no drain thread on stdout).
        self.fd = stdout.fileno()

    def finish(self, timeout: float) -> None:
        try:
            status = self.process.wait(timeout)
        finally:
            self._lock.__exit__(None, None, None)
        if status != 0:
            raise self.engine._fail("dump", self.process, status)

    def abort(self) -> None:
        try:
            self.process.stop()
        finally:
            self._lock.__exit__(None, None, None)


def _tags(meta: SnapshotMeta) -> list[str]:
    tags = [
        MARKER_TAG,
        f"user={meta.user}",
        f"name={meta.name}",
        f"sha256={meta.sha256}",
        f"size={meta.size}",
    ]
    if meta.label is not None:
        tags.append(f"label={meta.label}")
    return tags + meta.words()


def _parse_snapshot(item: object) -> OffsiteSnapshot | None:
    """One entry of `restic snapshots --json`, or None if it is not a valid copy of ours."""
    if not isinstance(item, dict):
        return None
    snapshot_id, host, tags = item.get("id"), item.get("hostname"), item.get("tags")
    if not isinstance(snapshot_id, str) or not isinstance(tags, list):
        return None
    values: dict[str, str] = {}
    for tag in tags:
        if isinstance(tag, str) and "=" in tag:
            key, _, value = tag.partition("=")
            values.setdefault(key, value)
    user, name, digest = values.get("user"), values.get("name"), values.get("sha256")
    if user is None or name is None or digest is None:
        return None
    parsed = parse_name(name)
    try:
        size = int(values.get("size", "-1"))
    except ValueError:
        return None
    optional = optional_fields(values)
    if parsed is None or optional is None or item.get("paths") != [f"/{user}.sqlite"]:
        return None
    meta = SnapshotMeta(
        user=user,
        name=name,
        time=parsed.time.timestamp(),
        size=size,
        sha256=digest,
        label=values.get("label"),
        schema_version=optional[0],
        seal=optional[1],
    )
    if not meta.valid():
        return None
    return OffsiteSnapshot(snapshot_id, meta, host if isinstance(host, str) else "")
