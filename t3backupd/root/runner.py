"""The one runner of per-user jobs: snapshot passes, verify passes, inventories.

`run_for_users` runs one function per user, `concurrency` at a time, each in a copy of
the caller's logging context (so every per-user event carries the pass's `pass_id` and
`trigger`) with `user` bound, and hands each result to a callback as it arrives. Users
are isolated: a failure is a report, never an exception that stops the others.
"""

from __future__ import annotations

import contextvars
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Sequence

import structlog

from t3backupd.core.config import Config
from t3backupd.core.protocol import Action, JobSpec, Report, UserResult, failed
from t3backupd.core.usermap import User
from t3backupd.root.log import get_logger
from t3backupd.root.spawn import (
    ABANDONED,
    DirectoryRefused,
    ProcessTracker,
    os_error_reason,
    prepare_user_dir,
    run_worker,
    running_as_root,
    stuck_report,
)

# Parent-side slack on top of the worker's own deadline before it is killed.
TIMEOUT_SLACK_SECONDS = 10.0
# Joins poll, so Ctrl-C reaches the CLI's main thread while workers run.
JOIN_POLL_SECONDS = 0.2
# After a stop, how long the runner threads get to finish what they were doing.
RUNNER_STOP_SECONDS = 2.0


# Jobs that may create `<dest>` and `<dest>/<user>`; every other job only looks.
CREATING_ACTIONS: frozenset[Action] = frozenset({"snapshot"})


class NoBackupDirectory(Exception):
    """`<dest>` or `<dest>/<user>` does not exist: nothing was ever backed up there."""


def check_user_dir(dest: str, user: User) -> str:
    """Check, creating nothing, that `<dest>/<user>` exists and is safe to hand a worker.

    Only lstat()s: never follows a link, never creates. `<dest>` must be a real directory
    owned by root or by us (a user listing their own backups under the daemon's root-owned
    `<dest>` is fine) and not writable by group or others; `<dest>/<user>` a real directory
    owned by the user or by us. Returns the path. Raises NoBackupDirectory if either is
    missing, DirectoryRefused if either is unsafe.
    """
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        raise NoBackupDirectory(f"no backup directory {dest}") from None
    except OSError as error:
        raise DirectoryRefused(
            f"cannot check {dest}: {error.strerror}", os_error_reason(error)
        ) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise DirectoryRefused(f"{dest} is not a directory (or is a symlink)")
    if info.st_uid not in (0, os.geteuid()):
        raise DirectoryRefused(f"{dest} is owned by uid {info.st_uid}, not by root")
    if info.st_mode & 0o022:
        raise DirectoryRefused(f"{dest} is writable by group or others")
    path = os.path.join(dest, user.name)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise NoBackupDirectory(f"no backup directory {path}") from None
    except PermissionError:
        raise DirectoryRefused(f"cannot look into {dest} (permission denied)") from None
    except OSError as error:
        raise DirectoryRefused(
            f"cannot check {path}: {error.strerror}", os_error_reason(error)
        ) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise DirectoryRefused(f"{path} is not a plain directory")
    if info.st_uid not in (user.uid, os.geteuid()):
        raise DirectoryRefused(f"{path} is owned by uid {info.st_uid}, not {user.name}")
    return path


def _prepare(config: Config, user: User, spec: JobSpec) -> Report | None:
    """Make (snapshot) or check (every other job) the user's directory; a report if the
    worker must not run."""
    try:
        if spec.action in CREATING_ACTIONS:
            prepare_user_dir(config.dest, user)
        else:
            check_user_dir(config.dest, user)
    except NoBackupDirectory as error:
        return Report(action=spec.action, status="skipped", reason="no_directory",
                      message=str(error))  # fmt: skip
    except DirectoryRefused as error:
        message = str(error)
        if not running_as_root() and spec.action in CREATING_ACTIONS:
            message += " (only root can write there: run this command as root)"
        return failed(spec.action, error.reason, message)
    except OSError as error:
        # Reported as what it is (no descriptor left is not "permission").
        return failed(spec.action, os_error_reason(error), f"{config.dest}: {error.strerror}")
    return None


def run_user_job(
    config: Config, user: User, spec: JobSpec, tracker: ProcessTracker | None
) -> UserResult:
    """Prepare (snapshot) or only check (read-only jobs) the user's directory as root,
    then run one worker for `spec` as the user.

    A read-only job creates nothing: if `<dest>` or `<dest>/<user>` is missing its result
    is `skipped` with reason `no_directory`, and no worker runs. A user whose previous
    worker was abandoned (outlived SIGKILL) and is not reaped yet is skipped at once
    (`worker_stuck`): no second worker, no wait.
    """
    started = time.time()
    clock = time.monotonic()
    stuck = ABANDONED.get(user.uid)
    if stuck is not None:
        get_logger().warning(
            "user skipped: worker stuck", user=user.name, pid=stuck.pid, action=spec.action
        )
        return UserResult(user, stuck_report(spec.action, stuck), started, 0.0)
    report = _prepare(config, user, spec)
    if report is None:
        report = run_worker(spec, user, spec.timeout_seconds + TIMEOUT_SLACK_SECONDS, tracker)
    return UserResult(user, report, started, time.monotonic() - clock)


def run_for_users(
    users: Sequence[User],
    job: Callable[[User], UserResult],
    *,
    concurrency: int,
    tracker: ProcessTracker,
    on_result: Callable[[UserResult], None] | None = None,
    action: Action,
) -> list[UserResult]:
    """`job(user)` for every user, `concurrency` at a time; results in `users` order.

    Once `tracker.stopping` is set, users not yet started are left out, and results that
    arrive after it are not handed to `on_result`: a worker stopped because we are
    stopping did not fail on its own. An exception in a job is a bug: it is logged with
    its traceback and that user's result is `worker_crashed`. On an exception in the
    caller's thread (Ctrl-C in the CLI) no more start, and the running workers are
    stopped and reaped before it propagates (bounded: `ProcessTracker.stop_all`).

    Plain daemon threads, not an executor: an executor's threads are joined at
    interpreter exit, which would hold a stop up behind a worker that never ends.
    """
    results: list[UserResult | None] = [None] * len(users)
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(users)):
        pending.put(index)

    def one(user: User) -> UserResult:
        with structlog.contextvars.bound_contextvars(user=user.name):
            try:
                return job(user)
            except Exception as error:
                get_logger().exception("job crashed", user=user.name, action=action)
                report = failed(action, "worker_crashed", f"internal error: {error!r}"[:300])
                return UserResult(user, report, time.time(), 0.0)

    def work(finished: threading.Event) -> None:
        try:
            while not tracker.stopping.is_set():
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                result = one(users[index])
                results[index] = result
                if on_result is not None and not tracker.stopping.is_set():
                    on_result(result)
        finally:
            finished.set()

    count = max(1, min(concurrency, len(users)))
    finished = [threading.Event() for _ in range(count)]
    threads = [
        # Each thread runs in a copy of the caller's context: pass_id and trigger reach
        # every per-user event.
        threading.Thread(
            target=contextvars.copy_context().run,
            args=(work, finished[number]),
            name=f"{action}-{number}",
            daemon=True,
        )
        for number in range(count)
    ]
    started = 0  # threads whose start() was called (it may have been cut short)
    try:
        # Ctrl-C or SIGTERM in the CLI: its process exits next, so every worker is
        # stopped and reaped (bounded), its temp files gone, before this propagates.
        with tracker.stop_all_if_interrupted(action=action):
            for thread in threads:
                started += 1
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(JOIN_POLL_SECONDS)
    except BaseException:
        _finish_runners(threads[:started], finished)
        raise
    return [result for result in results if result is not None]


def _finish_runners(
    threads: Sequence[threading.Thread], finished: Sequence[threading.Event]
) -> None:
    """After a stop, let each runner finish the step it is in (making `<dest>`, then its
    chmod): nothing is launched any more, so each ends at once. A stop inside
    Thread.start() leaves a thread that runs but is not yet "alive" (and cannot be
    joined), so its own end of `work` is waited for: an interpreter that finalizes while
    a daemon thread is still starting can crash (SIGSEGV, seen under load)."""
    deadline = time.monotonic() + RUNNER_STOP_SECONDS
    for thread, done in zip(threads, finished, strict=False):
        done.wait(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
