"""Snapshots the daemon did not take (the CLI's `t3backupd snapshot`) reach its metrics.

Every WATCH_INTERVAL_SECONDS a thread `lstat`s each served user's `<dest>/<user>` entry,
relative to a `<dest>` descriptor opened O_NOFOLLOW: the entry of a root-owned directory,
so no path a user controls is opened or followed. A publish (rename), a prune or a temp
file changes the directory's mtime/ctime; for users whose entry changed since the last
look, an inventory runs through the one runner (`passes.run_inventory`, as the user, with
its deadline) and its listing replaces that user's metrics, as at start.

A listing is applied only if the entry is still as it was when the inventory started, so
a listing older than a snapshot recorded meanwhile never overwrites it (the next look
tries again). The daemon's own results mark the entry seen (`seen`), so a pass is not
followed by an inventory of everyone, and no look is taken while a pass holds the lock.
A user whose inventory hangs delays nobody else's: each look starts the changed users
not already in flight.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Sequence

from t3backupd.core.config import Config
from t3backupd.core.protocol import UserResult
from t3backupd.core.usermap import User
from t3backupd.root.log import get_logger
from t3backupd.root.passes import run_inventory
from t3backupd.root.spawn import ProcessTracker

WATCH_INTERVAL_SECONDS = 20.0
WATCH_CONCURRENCY = 4

# (st_ino, st_mtime_ns, st_ctime_ns) of `<dest>/<user>`; None when there is no entry.
Stamp = tuple[int, int, int] | None


def entry_stamp(dest: str, name: str) -> Stamp:
    """The stamp of `<dest>/<name>`, never following a link (neither `<dest>` nor the entry).
    None if either is missing or `<dest>` is not a plain directory."""
    try:
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.stat(name, dir_fd=dest_fd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(dest_fd)
    return (info.st_ino, info.st_mtime_ns, info.st_ctime_ns)


class DestWatch:
    """Looks at served users' directories and refreshes the metrics of changed ones.

    `served()` returns the current (config, users); `busy()` is true while a pass runs;
    `apply(result)` puts an inventory result into the metrics.
    """

    def __init__(
        self,
        served: Callable[[], tuple[Config, Sequence[User]]],
        busy: Callable[[], bool],
        apply: Callable[[UserResult], object],
        tracker: ProcessTracker,
        interval: float = WATCH_INTERVAL_SECONDS,
    ) -> None:
        self._served = served
        self._busy = busy
        self._apply = apply
        self._tracker = tracker
        self._interval = interval
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], Stamp] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._log = get_logger()

    def prime(self) -> None:
        """Record every served user's entry as seen (call before the start inventory)."""
        config, users = self._served()
        with self._lock:
            for user in users:
                self._seen[(config.dest, user.name)] = entry_stamp(config.dest, user.name)

    def seen(self, dest: str, user: str) -> None:
        """The daemon recorded a result of its own for `user`: nothing new to list."""
        with self._lock:
            self._seen[(dest, user)] = entry_stamp(dest, user)

    def recorder(
        self, record: Callable[[UserResult], None], dest: str
    ) -> Callable[[UserResult], None]:
        """`record` (the daemon's own result into the metrics), then `seen`."""

        def both(result: UserResult) -> None:
            record(result)
            self.seen(dest, result.user.name)

        return both

    def start(self) -> DestWatch:
        threading.Thread(
            target=contextvars.copy_context().run, args=(self._run,), name="watch", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._tracker.stopping.is_set():
                return
            try:
                self.look()
            except Exception:
                # A bug: keep watching (the next look may work), but loudly.
                self._log.exception("watch look crashed")

    def look(self) -> list[str]:
        """One look; starts inventories of changed users. Returns their names."""
        if self._busy():
            return []
        config, users = self._served()
        changed: list[tuple[User, Stamp]] = []
        with self._lock:
            for user in users:
                key = (config.dest, user.name)
                if key in self._in_flight:
                    continue
                stamp = entry_stamp(config.dest, user.name)
                if stamp is None or (key in self._seen and self._seen[key] == stamp):
                    continue
                self._in_flight.add(key)
                changed.append((user, stamp))
        if changed:
            self._log.info("snapshots changed on disk; listing", users=[u.name for u, _ in changed])
            threading.Thread(
                target=contextvars.copy_context().run,
                args=(self._inventory, config, changed),
                name="watch-inventory",
                daemon=True,
            ).start()
        return [user.name for user, _ in changed]

    def _inventory(self, config: Config, changed: list[tuple[User, Stamp]]) -> None:
        stamps = {user.name: stamp for user, stamp in changed}

        def on_result(result: UserResult) -> None:
            key = (config.dest, result.user.name)
            with self._lock:
                # Unchanged since the listing started: the listing is current (and still
                # about the served dest: a reload may have moved it).
                current = entry_stamp(config.dest, result.user.name) == stamps[result.user.name]
                if current and self._served()[0].dest == config.dest:
                    self._apply(result)
                    self._seen[key] = stamps[result.user.name]
                self._in_flight.discard(key)

        try:
            run_inventory(
                config, [user for user, _ in changed], WATCH_CONCURRENCY, self._tracker, on_result
            )
        finally:
            with self._lock:
                for user, _ in changed:
                    self._in_flight.discard((config.dest, user.name))
