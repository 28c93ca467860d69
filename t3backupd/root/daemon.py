"""`t3backupd run`: the long-lived service (systemd `Type=notify`), kept thin.

Who does what:
- the main thread owns signals, sd_notify, the watchdog and reloads (`Daemon.serve`);
- `cronjobs.CronJobs` holds APScheduler and its jobs; their threads run the passes
  (`passrunner.PassRunner`, one at a time) and the offsite crons (`offsitejobs`);
- `metrics.Metrics` records, `http.Endpoint`'s threads serve `/metrics` (configured by
  `endpointconfig`);
- `inventory.Inventory` lists users' snapshots in the background (READY=1 never waits).

Signal handlers only queue the signal number; the main loop handles it. The served
config + users are one immutable `Served` value: a reload builds and validates a new
one and swaps it in, and a pass keeps the value it started with.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from t3backupd.core.config import Config
from t3backupd.core.errors import ConfigError
from t3backupd.root import statefile
from t3backupd.root.cronjobs import CronJobs
from t3backupd.root.endpointconfig import reload_endpoint, start_endpoint
from t3backupd.root.gate import PassGate
from t3backupd.root.http import Endpoint
from t3backupd.root.inventory import Inventory, Newest
from t3backupd.root.log import configure_logging, get_logger
from t3backupd.root.metrics import Metrics
from t3backupd.root.notify import Notifier, monotonic_usec, status_line, watchdog_interval
from t3backupd.root.offsitejobs import DaemonOffsite, changed_offsite_keys
from t3backupd.root.passrunner import SCHEDULER_THREADS, PassRunner
from t3backupd.root.scheduler import (
    clock_jumped,
    schedule_key,
    should_catch_up,
    trigger_for,
)
from t3backupd.root.served import (
    Served,
    load_served,
    log_problems,
    nobody_served,
    require_offsite_secrets,
)
from t3backupd.root.spawn import ProcessTracker
from t3backupd.root.usage import DestinationCollector
from t3backupd.root.watch import DestWatch

STOP_GRACE_SECONDS = 30.0  # for running workers to clean up and report after SIGTERM
IDLE_TICK_SECONDS = 30.0  # main-loop wake-up without a watchdog (clock-jump check)
REFRESH = "refresh"  # queued (besides signal numbers) when STATUS / next run may change
INVENTORY_DONE = "inventory-done"  # queued when the start-up inventory has finished
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def describe_changes(old: Served, new: Served) -> list[str]:
    """What a reload changed, in words for STATUS= and the log (pure)."""
    changes: list[str] = []
    old_names = {user.name for user in old.users}
    new_names = {user.name for user in new.users}
    if added := sorted(new_names - old_names):
        changes.append("users added: " + ", ".join(added))
    if removed := sorted(old_names - new_names):
        changes.append("users removed: " + ", ".join(removed))
    if schedule_key(old.config.schedule) != schedule_key(new.config.schedule):
        schedule = new.config.schedule
        changes.append(f"schedule now '{schedule.cron}' ({schedule.timezone})")
    if old.config.metrics != new.config.metrics:
        changes.append(f"metrics now at '{new.config.metrics.listen}'")
    other = [
        name
        for name in (
            "usermap",
            "dest",
            "source",
            "min_uid",
            "max_uid",
            "snapshot",
            "retention",
            "log",
            "verify",
        )
        if getattr(old.config, name) != getattr(new.config, name)
    ]
    if old.config.schedule.catch_up != new.config.schedule.catch_up or (
        old.config.schedule.misfire_grace_seconds != new.config.schedule.misfire_grace_seconds
    ):
        other.append("schedule options")
    if (old.config.offsite is None) != (new.config.offsite is None):
        changes.append("offsite " + ("removed" if new.config.offsite is None else "added"))
    other.extend(changed_offsite_keys(old.config.offsite, new.config.offsite))
    if other:
        changes.append("changed: " + ", ".join(other))
    return changes or ["no changes"]


def _format_time(moment: datetime | None) -> str:
    return "none scheduled" if moment is None else moment.isoformat(timespec="seconds")


class Daemon:
    """One running service. Build it, call `serve()`; it returns the exit status."""

    def __init__(self, config_path: Path, served: Served, notifier: Notifier) -> None:
        self._config_path = config_path
        self._served = served
        self._notifier = notifier
        self._log = get_logger()
        self._events: queue.SimpleQueue[int | str] = queue.SimpleQueue()
        self._tracker = ProcessTracker()
        self._stopping = threading.Event()
        self._gate = PassGate(self._stopping)
        self._registry = CollectorRegistry()
        self._metrics = Metrics(self._registry)
        DestinationCollector(self._registry, lambda: self._served.config.dest)
        self._inventory = Inventory(self._metrics, self._tracker)
        self._endpoint = Endpoint(
            self._registry,
            on_error=self._metrics.count_internal_error,
            on_event=self._metrics.count_endpoint_event,
            on_listening=lambda: self._events.put(REFRESH),
        )
        self._state_dir = statefile.state_directory(os.environ)
        self._startup_newest: Newest = {}
        self._jobs = CronJobs(SCHEDULER_THREADS, on_event=lambda: self._events.put(REFRESH))
        self._watchdog = watchdog_interval(os.environ, os.getpid())
        self._next_ping = 0.0
        self._clock_offset = time.time() - time.monotonic()
        self._scheduler_dead_logged = False
        # Snapshots taken by the CLI reach the metrics (see root/watch.py).
        self._watch = DestWatch(
            lambda: (self._served.config, self._served.users),
            self._gate.locked,
            self._inventory.apply,
            self._tracker,
        )
        self._offsite = DaemonOffsite(lambda: self._served, self._tracker, self._registry,
                                      self._jobs)  # fmt: skip
        self._passes = PassRunner(
            lambda: self._served, self._gate, self._stopping, self._tracker, self._metrics,
            self._watch, self._offsite, self._jobs, self._save_state,
            lambda: self._events.put(REFRESH),
        )  # fmt: skip

    # --- lifecycle -----------------------------------------------------------------

    def serve(self) -> int:
        """Start, run until SIGTERM/SIGINT, stop. Raises ConfigError if the metrics
        endpoint is misconfigured at start (TLS files, passed sockets; nothing else has
        started then). A port that cannot be bound is not fatal: logged, counted, in
        STATUS, retried, and the backups run."""
        self._install_signal_handlers()
        served = self._served
        log_problems(served)
        self._warn_if_nobody(served)
        names = [user.name for user in served.users]
        self._metrics.set_users(names)
        self._watch.prime()
        # The last known inventory serves until each user's fresh listing arrives.
        known = statefile.load(self._state_dir, served.config.dest, names)
        for name, (count, newest, size) in known.items():
            self._metrics.restore_summary(name, count, newest, size)
        self._metrics.config_loaded(True, time.time())
        # Jobs placed (not started) before the endpoint: the first scrape reads the
        # schedule interval, never 0.
        self._passes.schedule(None, served.config)
        self._start_endpoint(served.config)
        self._offsite.start()
        self._jobs.start()
        self._metrics.set_next_run(self._next_run_timestamp())
        self._inventory.start(
            served.config,
            served.users,
            current=lambda: self._served.config.dest == served.config.dest,
            on_done=self._startup_inventory_done,
        )
        self._watch.start()
        self._log.info(
            "daemon started",
            config=str(self._config_path),
            users=len(served.users),
            metrics=served.config.metrics.listen or None,
            metrics_socket_activated=self._endpoint.activated,
            state_file_users=len(known),
            next_run=_format_time(self._passes.next_run_time()),
            watchdog_s=self._watchdog,
        )
        self._notifier.send("READY=1", status_line(self._status()))
        self._ping_watchdog()
        self._loop()
        return self._shutdown()

    def _startup_inventory_done(self, newest: Newest) -> None:
        # Inventory thread: hand the result to the main loop.
        self._startup_newest = newest
        self._events.put(INVENTORY_DONE)

    def _after_startup_inventory(self) -> None:
        """Every user listed: save the state file, then decide catch-up (it needs each
        user's newest snapshot, so it waits for the listing, off the READY path)."""
        served = self._served
        self._save_state(served)
        self._log.info("inventory finished", users=len(self._startup_newest))
        newest = {user.name: self._startup_newest.get(user.name) for user in served.users}
        if served.config.schedule.catch_up and should_catch_up(
            trigger_for(served.config.schedule), datetime.now(UTC), newest
        ):
            self._log.info("catching up: the last scheduled pass was missed")
            self._passes.request("catch-up")
        self._refresh()

    def _save_state(self, served: Served) -> None:
        statefile.save(self._state_dir, served.config.dest, self._metrics.known())

    def _install_signal_handlers(self) -> None:
        def record(signum: int, frame: FrameType | None) -> None:
            # No work here: SimpleQueue.put is safe to call from a signal handler.
            self._events.put(signum)

        for signum in HANDLED_SIGNALS:
            signal.signal(signum, record)

    def _loop(self) -> None:
        """Dispatch each queued event to its handler (as gunicorn's arbiter does) until a
        stop signal; between events, check the clock and ping the watchdog."""
        handlers: dict[int | str, Callable[[], None]] = {
            signal.SIGHUP: self._reload,
            signal.SIGUSR1: lambda: self._passes.request("manual"),
            REFRESH: self._refresh,
            INVENTORY_DONE: self._after_startup_inventory,
        }
        while True:
            try:
                event: int | str | None = self._events.get(timeout=self._tick_seconds())
            except queue.Empty:
                event = None
            if event in (signal.SIGTERM, signal.SIGINT):
                self._log.info("stop requested", signal=signal.Signals(event).name)
                return
            handler = handlers.get(event) if event is not None else None
            try:
                if handler is not None:
                    handler()
                self._check_clock()
                self._ping_watchdog()
            except Exception:
                # A bug: the daemon must outlive it (the passes and the endpoint run on).
                self._log.exception("main loop error", event=str(event))
                self._metrics.count_internal_error("main_loop")
                if event == signal.SIGHUP:  # systemd waits for the end of RELOADING=1
                    self._notifier.send("READY=1", status_line("reload failed (see log)"))

    def _shutdown(self) -> int:
        """No new passes, SIGTERM to running workers, wait a bounded grace. 0 if clean."""
        self._notifier.send("STOPPING=1", status_line("stopping"))
        self._stopping.set()
        self._jobs.shutdown()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        stopped = False
        while time.monotonic() < deadline:
            # Repeated: a worker being spawned while we signal the others is caught next time.
            self._tracker.terminate_all()
            # The offsite lane runs outside the gate: also wait for its restic processes
            # and stream workers (tracked too) to be gone.
            if self._gate.wait_idle(timeout=0.2) and self._tracker.running() == 0:
                stopped = True
                break
        self._endpoint.stop()
        self._notifier.close()
        if not stopped:
            self._log.error(
                "workers did not stop in time; exiting anyway",
                grace_s=STOP_GRACE_SECONDS,
                running=self._tracker.running(),
            )
            # The pass threads cannot be joined; leave without waiting for them.
            os._exit(1)
        self._log.info("daemon stopped")
        return 0

    # --- reload --------------------------------------------------------------------

    def _reload(self) -> None:
        """SIGHUP: re-read config and usermap; swap them in, or keep the old ones."""
        self._notifier.send(
            "RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", status_line("reloading")
        )
        old = self._served
        try:
            new = load_served(self._config_path)
            require_offsite_secrets(new.config)
            reload_endpoint(
                self._endpoint, old.config.metrics, new.config.metrics, self._config_path
            )
        except ConfigError as error:
            self._metrics.config_loaded(False, time.time())
            self._log.error("reload refused; previous config still in use", error=str(error))
            self._notifier.send(
                "READY=1", status_line(f"reload refused, previous config kept: {error}")
            )
            return
        self._apply(old, new)
        changes = "; ".join(describe_changes(old, new))
        self._log.info("reloaded", changes=changes, users=len(new.users))
        self._notifier.send("READY=1", status_line(f"reloaded ({changes}); {self._status()}"))

    def _apply(self, old: Served, new: Served) -> None:
        """Swap in a reload's validated config and users, and follow them everywhere."""
        if old.config.log != new.config.log:
            configure_logging(new.config.log.format, new.config.log.level)
        log_problems(new)
        self._warn_if_nobody(new)
        self._passes.schedule(old.config, new.config)
        added, _ = self._metrics.set_users(user.name for user in new.users)
        self._offsite.set_users(new.users)
        self._served = new
        # After the swap: a lane that this reload starts reads the new config.
        self._offsite.start()
        # Snapshots of users added, or of everyone if dest moved: listed off the main thread
        # (a worker may take its whole timeout), results applied to the metrics when done.
        dest_changed = old.config.dest != new.config.dest
        self._inventory.start(
            new.config,
            [user for user in new.users if dest_changed or user.name in added],
            current=lambda: self._served.config.dest == new.config.dest,
            on_done=lambda newest: self._save_state(new),
        )
        self._metrics.config_loaded(True, time.time())
        self._metrics.set_next_run(self._next_run_timestamp())

    def _warn_if_nobody(self, served: Served) -> None:
        """One warning when the usermap serves no user (t3backup_users 0: the
        T3BackupNoUsers alert)."""
        nobody = nobody_served(served.config, served.users)
        if nobody is not None:
            self._log.warning("usermap serves no user", usermap=served.config.usermap,
                              detail=nobody)  # fmt: skip

    def _start_endpoint(self, config: Config) -> None:
        """Serve /metrics (see `endpointconfig.start_endpoint`); raises ConfigError."""
        start_endpoint(self._endpoint, config.metrics, self._config_path)
        self._metrics.set_socket_activated(self._endpoint.activated)

    # --- status, watchdog, clock ---------------------------------------------------

    def _next_run_timestamp(self) -> float | None:
        moment = self._passes.next_run_time()
        return None if moment is None else moment.timestamp()

    def _status(self) -> str:
        running = "; pass running" if self._gate.locked() else ""
        served = self._served
        pending = len(self._metrics.pending())
        listing = f"; listing snapshots of {pending} user(s)" if pending else ""
        problem = self._endpoint.problem
        endpoint = f"; METRICS NOT SERVED: {problem} (retrying)" if problem else ""
        return (
            f"{len(served.users)} user(s); next pass "
            f"{_format_time(self._passes.next_run_time())}; "
            f"last pass: {self._passes.previous_result}{running}{listing}{endpoint}"
        )

    def _refresh(self) -> None:
        self._metrics.set_next_run(self._next_run_timestamp())
        self._notifier.send(status_line(self._status()))

    def _tick_seconds(self) -> float:
        if self._watchdog is None:
            return IDLE_TICK_SECONDS
        return max(0.0, min(IDLE_TICK_SECONDS, self._next_ping - time.monotonic()))

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 every half interval, only while the scheduler thread is alive."""
        if self._watchdog is None or time.monotonic() < self._next_ping:
            return
        self._next_ping = time.monotonic() + self._watchdog
        if self._jobs.alive():
            self._notifier.send("WATCHDOG=1")
        elif not self._scheduler_dead_logged:
            self._scheduler_dead_logged = True
            self._log.error("scheduler thread is not running; watchdog pings stopped")

    def _check_clock(self) -> None:
        offset = time.time() - time.monotonic()
        if clock_jumped(self._clock_offset, offset):
            self._log.warning("wall clock stepped", seconds=round(offset - self._clock_offset, 1))
            # The scheduler sleeps in monotonic time: make it re-read the wall clock now.
            self._jobs.wakeup()
            self._refresh()
        self._clock_offset = offset


def run(config_path: Path) -> int:
    """`t3backupd run`: serve until stopped. Returns the exit status.

    Raises ConfigError if the config is invalid, the usermap is missing or unreadable
    (nothing has started then: no port bound, no pass), or metrics cannot be served.
    """
    served = load_served(config_path)
    require_offsite_secrets(served.config)
    configure_logging(served.config.log.format, served.config.log.level)
    return Daemon(config_path, served, Notifier.from_environment()).serve()
