"""The base of every engine that runs a command-line tool (restic, borg): what they do
alike, so that an engine module says only how its tool is spoken to.

Here, once for every engine:
- the environment: `process.BASE_ENVIRONMENT` plus the root-only `environment_file`,
  then the engine's own variables (`_engine_environment`);
- before each start: nothing while the daemon stops, the password file still root's
  alone, a local repository on a read-only file system refused as `read_only` (the tool
  would retry, then blame a lock), `cache_dir` trusted, the binary resolved (a missing
  one is one line, not the wrapper's error);
- starting through `process.start_engine` (the one launcher, the daemon's tracker) with
  the engine's stop signal, and counting the processes of ours per repository;
- the exit status and stderr mapped to one reason and one line (`_explain`);
- uploads and downloads under the repository's shared lock, forget/prune/check under
  its exclusive one; the SQLite page-size check before an upload.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from typing import Any

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
)
from t3backupd.root.offsite.process import (
    BASE_ENVIRONMENT,
    LOCK_WAIT_SECONDS,
    EngineProcess,
    cache_directory,
    lock_for,
    start_engine,
)

Lock = AbstractContextManager[None]
UNLOCK_TIMEOUT_SECONDS = 300

# How long an engine that stopped reading its stream is given to exit and say why.
ENDING_WAIT_SECONDS = 30.0

# Engine processes of ours per repository, by pid (borg's break-lock waits for none).
# A set: a process is forgotten once however many ways its end is seen.
_RUNNING: dict[str, set[int]] = {}
_RUNNING_GUARD = threading.Lock()


def running(repository: str) -> int:
    """How many engine processes this process runs on `repository` now."""
    with _RUNNING_GUARD:
        return len(_RUNNING.get(repository, ()))


def _started(repository: str, process: EngineProcess) -> None:
    with _RUNNING_GUARD:
        _RUNNING.setdefault(repository, set()).add(process.popen.pid)


def _ended(repository: str, process: EngineProcess) -> None:
    with _RUNNING_GUARD:
        _RUNNING.get(repository, set()).discard(process.popen.pid)


def read_only_problem(path: str) -> str | None:
    """Why an engine could not write the local repository `path`: its file system (or
    that of its nearest existing parent, for `init`) is read-only here, as under the
    unit's ProtectSystem=strict without a ReadWritePaths= for it; None otherwise. The
    engines themselves would retry such writes, then blame a lock."""
    probe = os.path.normpath(path)
    while not os.path.lexists(probe) and probe != "/":
        probe = os.path.dirname(probe)
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        return None  # the engine says what is wrong
    if not read_only:
        return None
    return (
        f"{path} is on a read-only file system for t3backupd (under systemd: add "
        f"ReadWritePaths={path} in a drop-in, systemctl edit t3backupd)"
    )


def printable(line: str) -> str:
    """One line as shown in a message: control characters replaced, at most 240."""
    return "".join(ch if ch.isprintable() else "?" for ch in line.strip())[:240]


class CommandEngine(ABC):
    """One repository of an engine run as a command (see the module docstring). A
    subclass sets `name` (also its binary's config key), `stop_signal` and what it
    needs of the rest, and implements the `_` hooks below."""

    name: str
    # The signal that makes the tool stop leaving nothing behind.
    stop_signal: signal.Signals = signal.SIGTERM
    ok_statuses: tuple[int, ...] = (0,)  # exit statuses that are success
    cache_subdirectories: tuple[str, ...] = ()

    def __init__(self, config: OffsiteConfig, tracker: Any = None) -> None:
        self.config = config
        self.tracker = tracker
        self.host = config.host or socket.gethostname().split(".")[0] or "localhost"
        self.location = self._location()
        self._repository_key = config.repository or config.repository_file
        self._lock = lock_for(self._repository_key)
        self._owner = 0 if os.geteuid() == 0 else os.geteuid()

    # --- what each engine says ---------------------------------------------------------

    def _location(self) -> str:
        """The repository as shown in messages (never a secret)."""
        return self.config.repository

    @abstractmethod
    def _engine_environment(self, env: dict[str, str]) -> None:
        """Add the engine's own variables to `env` (after the environment file's)."""

    @abstractmethod
    def _arguments(self, command: Sequence[str]) -> list[str]:
        """The tool's argv after its path, for `command` (its subcommand and arguments)."""

    @abstractmethod
    def _local_path(self) -> str | None:
        """The directory of a local-path repository, else None."""

    @abstractmethod
    def _explain(self, stderr: bytes) -> tuple[str, str]:
        """(reason, line) for a failed command's error output."""

    @abstractmethod
    def _create(self) -> bool:
        """`init` under the exclusive lock: False if the repository exists already."""

    @abstractmethod
    def _list_command(self, user: str | None) -> list[str]: ...

    @abstractmethod
    def _listed(self, listing: object) -> list[OffsiteSnapshot]:
        """Ours among the parsed JSON listing's entries (no other host's, no malformed)."""

    @abstractmethod
    def _upload_command(self, meta: SnapshotMeta) -> tuple[list[str], str]:
        """The command reading the stream on stdin, and the copy's id if known before."""

    @abstractmethod
    def _upload_result(self, stdout: bytes, expected_id: str) -> UploadResult:
        """The uploaded copy from the tool's output. Raises OffsiteError."""

    @abstractmethod
    def _download_command(self, snapshot: OffsiteSnapshot) -> list[str]:
        """The command writing the copy's stream to stdout."""

    @abstractmethod
    def _forget_command(self, ids: Sequence[str]) -> list[str]: ...

    @abstractmethod
    def _prune_command(self) -> list[str]: ...

    @abstractmethod
    def _check_commands(self, read_data_subset: str) -> list[list[str]]: ...

    @abstractmethod
    def _unlock_command(self) -> list[str] | None:
        """The command removing stale locks, or None when none may run now."""

    # --- running the tool --------------------------------------------------------------

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
        self._engine_environment(env)
        return env

    def _start(
        self, command: Sequence[str], stdin: int | None = None, drain_stdout: bool = True
    ) -> EngineProcess:
        if self.tracker is not None and self.tracker.stopping.is_set():
            # Stopping: start nothing a stop could miss (it would outlive the daemon).
            raise OffsiteError("failed", f"not started on {self.location}: stopping")
        # The password file must still be root's alone when the tool reads it.
        try:
            read_secret_file(self.config.password_file, self._owner)
        except SecretFileError as error:
            raise OffsiteError(
                "auth", f"offsite.password_file {self.config.password_file}: {error}"
            ) from None
        # First: it may resolve the repository (restic's repository_file).
        env = self._environment()
        local = self._local_path()
        problem = read_only_problem(local) if local is not None else None
        if problem is not None:
            raise OffsiteError("read_only", problem)
        # Root's all the way up, made and chmodded without following a link.
        os.close(cache_directory(self.config.cache_dir, self.cache_subdirectories))
        configured = str(getattr(self.config, self.name))
        # Resolved here, so a missing binary is this one line, not the wrapper's error.
        binary = shutil.which(configured, path=env.get("PATH"))
        if binary is None:
            raise OffsiteError("failed", f"cannot run {configured}: not found")
        argv = [*LOW_PRIORITY, binary, *self._arguments(command)]
        process = start_engine(
            argv, env, self.tracker, self.stop_signal, stdin, drain_stdout, configured,
            self.location,
        )  # fmt: skip
        _started(self._repository_key, process)
        return process

    def _wait(self, process: EngineProcess, timeout: float) -> int | None:
        """The exit status, or None (the process stopped) on timeout."""
        try:
            return process.wait(timeout)
        finally:
            _ended(self._repository_key, process)

    def _stop(self, process: EngineProcess) -> None:
        try:
            process.stop()
        finally:
            _ended(self._repository_key, process)

    def _fail(self, what: str, process: EngineProcess, status: int | None) -> OffsiteError:
        if status is None:
            return OffsiteError(
                "timeout",
                f"{self.name} {what} on {self.location}: "
                f"no result after {self.config.timeout_seconds}s",
            )
        reason, line = self._explain(process.stderr)
        return OffsiteError(reason, f"{self.name} {what} on {self.location}: {line}")

    def _run(self, command: Sequence[str], what: str = "", timeout: float | None = None) -> bytes:
        """The tool's stdout; raises OffsiteError (`what`, else the subcommand, named)."""
        process = self._start(command)
        status = self._wait(process, self.config.timeout_seconds if timeout is None else timeout)
        if status not in self.ok_statuses:
            raise self._fail(what or command[0], process, status)
        return process.stdout

    def _start_shared(
        self, command: Sequence[str], stdin: int | None = None, drain_stdout: bool = True
    ) -> tuple[EngineProcess, Lock]:
        """The command started under the repository's shared lock, held until the
        caller's upload or download ends."""
        lock = self._lock.shared(LOCK_WAIT_SECONDS)
        lock.__enter__()
        try:
            return self._start(command, stdin=stdin, drain_stdout=drain_stdout), lock
        except BaseException:
            lock.__exit__(None, None, None)
            raise

    # --- Engine ------------------------------------------------------------------------

    def init(self) -> bool:
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            return self._create()

    def snapshots(self, user: str | None = None) -> list[OffsiteSnapshot]:
        command = self._list_command(user)
        with self._lock.shared(LOCK_WAIT_SECONDS):
            raw = self._run(command)
        try:
            listing = json.loads(raw or b"null")
        except ValueError:
            raise OffsiteError(
                "failed", f"{self.name} {command[0]} on {self.location}: output is not JSON"
            ) from None
        found = [
            snapshot
            for snapshot in self._listed(listing)
            if user is None or snapshot.meta.user == user
        ]
        found.sort(key=lambda s: (s.meta.time, s.meta.name, s.id))
        return found

    def start_upload(self, meta: SnapshotMeta) -> EngineUpload:
        page_size = meta.page_size
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            raise OffsiteError("corrupt", f"{meta.name}: no valid SQLite page size ({page_size})")
        command, expected_id = self._upload_command(meta)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            process, lock = self._start_shared(command, stdin=read_end)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        return EngineUpload(self, process, write_end, lock, command[0], expected_id)

    def start_download(self, snapshot: OffsiteSnapshot) -> EngineDownload:
        command = self._download_command(snapshot)
        process, lock = self._start_shared(command, drain_stdout=False)
        return EngineDownload(self, process, lock, command[0])

    def forget(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        command = self._forget_command(ids)
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            self._run(command)

    def prune(self) -> None:
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            self._run(self._prune_command())

    def check(self, read_data_subset: str) -> None:
        with self._lock.exclusive(LOCK_WAIT_SECONDS):
            for command in self._check_commands(read_data_subset):
                self._run(command)

    def unlock_stale(self) -> None:
        command = self._unlock_command()
        if command is not None:
            self._run(command, timeout=min(UNLOCK_TIMEOUT_SECONDS, self.config.timeout_seconds))


class _Transfer:
    """An upload or download under way: its process and the shared lock it holds."""

    def __init__(self, engine: CommandEngine, process: EngineProcess, lock: Lock, what: str):
        self.engine = engine
        self.process = process
        self.what = what
        self._lock = lock

    def _end(self, timeout: float) -> None:
        """Wait for the engine (the lock released either way). Raises OffsiteError."""
        try:
            status = self.engine._wait(self.process, timeout)
        finally:
            self._lock.__exit__(None, None, None)
        if status not in self.engine.ok_statuses:
            raise self.engine._fail(self.what, self.process, status)


class EngineUpload(_Transfer):
    """The engine reading the pipe whose write end is `fd` (see engine.Upload)."""

    def __init__(
        self,
        engine: CommandEngine,
        process: EngineProcess,
        fd: int,
        lock: Lock,
        what: str,
        expected_id: str,
    ) -> None:
        super().__init__(engine, process, lock, what)
        self.fd = fd
        self.expected_id = expected_id
        self._closed = False

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            with suppress(OSError):
                os.close(self.fd)

    def commit(self, timeout: float) -> UploadResult:
        self._close()
        self._end(timeout)
        return self.engine._upload_result(self.process.stdout, self.expected_id)

    def stopped_reading(self) -> OffsiteError:
        """Why the engine stopped reading before the end of the stream (a full
        repository, a lost server...): its own reason once it has exited, stopped if it
        has not within ENDING_WAIT_SECONDS. A copy it recorded anyway is not believed:
        "failed"."""
        self._close()
        try:
            self._end(ENDING_WAIT_SECONDS)
        except OffsiteError as error:
            return error
        return OffsiteError("failed", f"{self.engine.name} stopped reading")

    def abort(self) -> None:
        # The engine's stop signal before EOF: the tool stops without recording a copy
        # (restic: SIGINT; borg: SIGTERM, as SIGINT would commit a checkpoint archive).
        try:
            self.engine._stop(self.process)
        finally:
            self._close()
            self._lock.__exit__(None, None, None)


class EngineDownload(_Transfer):
    """The engine writing a copy's stream to its stdout, read by the caller from `fd`."""

    def __init__(
        self, engine: CommandEngine, process: EngineProcess, lock: Lock, what: str
    ) -> None:
        super().__init__(engine, process, lock, what)
        stdout = process.popen.stdout
        if stdout is None:
            raise RuntimeError("Popen without stdout")
        # The caller reads the stream itself (no drain thread on stdout).
        self.fd = stdout.fileno()

    def finish(self, timeout: float) -> None:
        self._end(timeout)

    def abort(self) -> None:
        try:
            self.engine._stop(self.process)
        finally:
            self._lock.__exit__(None, None, None)
