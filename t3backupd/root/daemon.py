"""`t3backupd run`: the long-lived service (systemd `Type=notify`), kept thin.

Who does what:
- the main thread owns signals, sd_notify, the watchdog and reloads (`Daemon.serve`);
- APScheduler's thread fires passes, which `passes.run_pass` runs (one at a time);
- `metrics.Metrics` records, `http.Endpoint`'s threads serve `/metrics`;
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
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, EVENT_JOB_SUBMITTED
from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from t3backupd.core.checks import verify_failures
from t3backupd.core.config import Config, MetricsConfig
from t3backupd.core.errors import ConfigError
from t3backupd.core.protocol import UserResult
from t3backupd.root import statefile
from t3backupd.root.gate import WAITING_TRIGGERS, PassGate
from t3backupd.root.http import Endpoint, EndpointError, check_tls, inherited_sockets
from t3backupd.root.inventory import Inventory, Newest
from t3backupd.root.log import configure_logging, get_logger
from t3backupd.root.metrics import Metrics
from t3backupd.root.notify import Notifier, monotonic_usec, status_line, watchdog_interval
from t3backupd.root.passes import run_pass, run_verify_pass
from t3backupd.root.scheduler import (
    build_trigger,
    clock_jumped,
    longest_interval,
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
    verify_shadowed,
)
from t3backupd.root.spawn import ProcessTracker
from t3backupd.root.usage import DestinationCollector
from t3backupd.root.watch import DestWatch

JOB_ID = "pass"
VERIFY_JOB_ID = "verify"
OFFSITE_PRUNE_JOB_ID = "offsite-prune"
OFFSITE_CHECK_JOB_ID = "offsite-check"
STOP_GRACE_SECONDS = 30.0  # for running workers to clean up and report after SIGTERM
IDLE_TICK_SECONDS = 30.0  # main-loop wake-up without a watchdog (clock-jump check)
REFRESH = "refresh"  # queued (besides signal numbers) when STATUS / next run may change
INVENTORY_DONE = "inventory-done"  # queued when the start-up inventory has finished
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
# Scheduler threads: a waiting scheduled pass, a waiting catch-up pass and the running one.
SCHEDULER_THREADS = 3


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
    if other:
        changes.append("changed: " + ", ".join(other))
    return changes or ["no changes"]


def summarize_pass(results: Sequence[UserResult]) -> str:
    """One line about a finished pass, e.g. "3 ok, 1 failed (alice: timeout)"."""
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    failed: list[str] = []
    for result in results:
        counts[result.report.status] = counts.get(result.report.status, 0) + 1
        if result.report.status == "failed":
            failed.append(f"{result.user.name}: {result.report.reason}")
    text = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    if failed:
        text += " (" + "; ".join(failed[:5]) + ("; ..." if len(failed) > 5 else "") + ")"
    return text or "no users"


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
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": SchedulerExecutor(max_workers=SCHEDULER_THREADS)},
        )
        self._previous_result = "none yet"
        self._manual_requests = 0
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
        self._offsite: Any = None  # OffsiteService when [offsite] is configured

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
        if served.config.offsite is not None:
            self._start_offsite()
        self._metrics.config_loaded(True, time.time())
        self._publish_schedule_interval(served.config)  # before the first scrape can read 0
        self._start_endpoint(served.config.metrics)
        self._start_scheduler(served.config)
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
            next_run=_format_time(self._next_run_time()),
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
            self._request_pass("catch-up")
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
            signal.SIGUSR1: lambda: self._request_pass("manual"),
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
        self._scheduler.shutdown(wait=False)
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

    # --- passes --------------------------------------------------------------------

    def _publish_schedule_interval(self, config: Config) -> None:
        # The staleness alerts' threshold: derived from the schedule, so an hourly
        # schedule pages after hours of no snapshot, a daily one after a day.
        trigger = trigger_for(config.schedule)
        self._metrics.set_schedule_interval(longest_interval(trigger, datetime.now(UTC)))

    def _start_scheduler(self, config: Config) -> None:
        self._scheduler.add_listener(
            self._on_scheduler_event,
            EVENT_JOB_SUBMITTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES,
        )
        self._scheduler.add_job(
            self._run_pass,
            trigger_for(config.schedule),
            args=["schedule"],
            id=JOB_ID,
            name="backup pass",
            misfire_grace_time=config.schedule.misfire_grace_seconds,
            coalesce=True,
            max_instances=1,
        )
        self._schedule_verify(config)
        self._schedule_offsite(config)
        self._scheduler.start()
        self._metrics.set_next_run(self._next_run_timestamp())

    def _schedule_verify(self, config: Config) -> None:
        """The optional `[verify] cron` job: (re)placed, or removed when the cron is ""."""
        if self._scheduler.get_job(VERIFY_JOB_ID) is not None:
            self._scheduler.remove_job(VERIFY_JOB_ID)
        self._metrics.set_verify_enabled(bool(config.verify.cron))
        if not config.verify.cron:
            return
        shadowed = verify_shadowed(config)
        if shadowed is not None:
            self._log.warning("verify passes will be skipped", detail=shadowed)
        self._scheduler.add_job(
            self._run_verify,
            build_trigger(config.verify.cron, config.schedule.timezone),
            id=VERIFY_JOB_ID,
            name="verify pass",
            misfire_grace_time=config.schedule.misfire_grace_seconds,
            coalesce=True,
            max_instances=1,
        )

    def _on_snapshot_result(self, result: UserResult) -> None:
        """Record one user's snapshot; queue their offsite sync (the second lane: the
        pass goes on to the next user at once)."""
        self._metrics.record_result(result)
        if self._offsite is not None:
            self._offsite.submit(result.user)

    def _start_offsite(self) -> None:
        """The offsite lane, at start or at the first reload with an `[offsite]`."""
        from t3backupd.root.offsite.service import OffsiteService

        self._offsite = OffsiteService(
            lambda: self._served.config, lambda: self._served.users, self._tracker,
            self._registry,
        )  # fmt: skip
        self._offsite.start()

    def _schedule_offsite(self, config: Config) -> None:
        """`offsite.prune_cron` and `offsite.check_cron` jobs (replaced on reload)."""
        for job_id in (OFFSITE_PRUNE_JOB_ID, OFFSITE_CHECK_JOB_ID):
            if self._scheduler.get_job(job_id) is not None:
                self._scheduler.remove_job(job_id)
        if config.offsite is None or self._offsite is None:
            return
        for job_id, cron, function in (
            (OFFSITE_PRUNE_JOB_ID, config.offsite.prune_cron, self._offsite.prune),
            (OFFSITE_CHECK_JOB_ID, config.offsite.check_cron, self._offsite.check),
        ):
            if cron:
                self._scheduler.add_job(
                    function,
                    build_trigger(cron, config.schedule.timezone),
                    id=job_id,
                    name=job_id,
                    misfire_grace_time=config.schedule.misfire_grace_seconds,
                    coalesce=True,
                    max_instances=1,
                )

    def _run_verify(self) -> None:
        """Scheduled verification of every stored snapshot (shares the pass lock: never
        at the same time as a snapshot pass, so the two do not compete for the disk)."""
        if not self._gate.try_enter("verify"):
            self._log.info("verify pass not started: a pass is running", running=self._gate.holder)
            return
        try:
            if self._stopping.is_set():
                return
            served = self._served
            with structlog.contextvars.bound_contextvars(pass_id=uuid.uuid4().hex[:8]):
                results = run_verify_pass(
                    served.config,
                    served.users,
                    tracker=self._tracker,
                    on_result=lambda result: self._metrics.record_verify(
                        result.user.name, verify_failures(result.report), result.finished
                    ),
                )
                bad = sum(verify_failures(result.report) for result in results)
                (self._log.warning if bad else self._log.info)(
                    "verify pass stopped" if self._stopping.is_set() else "verify pass finished",
                    users=len(results),
                    bad_snapshots=bad,
                )
        except Exception:
            self._log.exception("verify pass crashed")
        finally:
            self._gate.leave()

    def _on_scheduler_event(self, event: Any) -> None:
        # Scheduler thread: only wake the main loop (it refreshes next run and STATUS).
        self._events.put(REFRESH)

    def _request_pass(self, trigger: str) -> None:
        """Start a pass now on the scheduler's executor. A manual one is dropped if a pass
        is running; a catch-up one waits for it (see `_acquire_for_pass`)."""
        if trigger not in WAITING_TRIGGERS and self._gate.locked():
            self._log.info(
                "pass not started: one is already running",
                trigger=trigger,
                running=self._gate.holder,
            )
            return
        self._manual_requests += 1
        self._scheduler.add_job(
            self._run_pass,
            args=[trigger],
            id=f"{trigger}-{self._manual_requests}",
            name=f"{trigger} pass",
            misfire_grace_time=None,
        )

    def _run_pass(self, trigger: str) -> None:
        """One pass over the users served when it starts (runs in a scheduler thread)."""
        if not self._gate.enter_for_pass(trigger):
            return
        try:
            if self._stopping.is_set():
                return
            served = self._served  # this pass keeps this config, whatever a reload does
            with structlog.contextvars.bound_contextvars(
                pass_id=uuid.uuid4().hex[:8], trigger=trigger
            ):
                self._log.info("pass started", users=len(served.users))
                clock = time.monotonic()
                results = run_pass(
                    served.config,
                    served.users,
                    tracker=self._tracker,
                    on_result=self._watch.recorder(self._on_snapshot_result, served.config.dest),
                )
                self._save_state(served)
                summary = summarize_pass(results)
                failed = sum(result.report.status == "failed" for result in results)
                (self._log.warning if failed else self._log.info)(
                    "pass stopped" if self._stopping.is_set() else "pass finished",
                    result=summary,
                    duration_s=round(time.monotonic() - clock, 3),
                )
            self._previous_result = (
                f"{summary} at {datetime.now(UTC).isoformat(timespec='seconds')}"
            )
        except Exception:
            # A bug, not a user's failure (those are reports): keep serving, but loudly.
            self._log.exception("pass crashed", trigger=trigger)
            self._previous_result = "crashed (see log)"
        finally:
            self._gate.leave()
            self._events.put(REFRESH)

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
            trigger = trigger_for(new.config.schedule)
            self._reload_endpoint(old.config.metrics, new.config.metrics)
        except ConfigError as error:
            self._metrics.config_loaded(False, time.time())
            self._log.error("reload refused; previous config still in use", error=str(error))
            self._notifier.send(
                "READY=1", status_line(f"reload refused, previous config kept: {error}")
            )
            return
        if old.config.log != new.config.log:
            configure_logging(new.config.log.format, new.config.log.level)
        log_problems(new)
        self._warn_if_nobody(new)
        if schedule_key(old.config.schedule) != schedule_key(new.config.schedule):
            self._scheduler.reschedule_job(JOB_ID, trigger=trigger)
            self._publish_schedule_interval(new.config)
        if old.config.schedule.misfire_grace_seconds != new.config.schedule.misfire_grace_seconds:
            self._scheduler.modify_job(
                JOB_ID, misfire_grace_time=new.config.schedule.misfire_grace_seconds
            )
        if (old.config.verify, schedule_key(old.config.schedule)) != (
            new.config.verify,
            schedule_key(new.config.schedule),
        ):
            self._schedule_verify(new.config)
        self._schedule_offsite(new.config)
        added, _ = self._metrics.set_users(user.name for user in new.users)
        if self._offsite is not None:
            self._offsite.set_users(new.users)
        self._served = new
        if new.config.offsite is not None and self._offsite is None:
            # [offsite] added by this reload (after the swap: the lane reads the new config).
            self._start_offsite()
            self._schedule_offsite(new.config)
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
        changes = "; ".join(describe_changes(old, new))
        self._log.info("reloaded", changes=changes, users=len(new.users))
        self._notifier.send("READY=1", status_line(f"reloaded ({changes}); {self._status()}"))

    def _warn_if_nobody(self, served: Served) -> None:
        """One warning when the usermap serves no user (t3backup_users 0: the
        T3BackupNoUsers alert)."""
        nobody = nobody_served(served.config, served.users)
        if nobody is not None:
            self._log.warning("usermap serves no user", usermap=served.config.usermap,
                              detail=nobody)  # fmt: skip

    def _start_endpoint(self, settings: MetricsConfig) -> None:
        """Serve /metrics on the sockets systemd passed (t3backupd.socket), else on
        `metrics.listen`. Raises ConfigError for unusable TLS files or passed fds."""
        try:
            inherited = inherited_sockets(os.environ, os.getpid())
            self._endpoint.start(inherited, settings.listen, settings.tls_cert, settings.tls_key)
        except EndpointError as error:
            raise ConfigError(str(self._config_path), [str(error)]) from None
        finally:
            for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(name, None)  # as sd_listen_fds(unset_environment=1)
        self._metrics.set_socket_activated(self._endpoint.activated)
        if self._endpoint.activated:
            self._log.info(
                "metrics socket from systemd; metrics.listen not used for binding",
                addresses=self._endpoint.addresses,
                listen=settings.listen or None,
            )

    def _reload_endpoint(self, old: MetricsConfig, new: MetricsConfig) -> None:
        """Apply a reload's `[metrics]` without ever closing the listening socket first: a
        new address is bound before the old one is closed; certificates are reloaded into
        the live TLS context. Raises ConfigError (endpoint unchanged) if the new address
        cannot be bound or the new TLS files cannot be loaded."""
        if self._endpoint.activated and old.listen != new.listen:
            self._log.warning(
                "metrics.listen changed, but the socket comes from systemd: change "
                "ListenStream= in t3backupd.socket to serve another address",
                listen=new.listen,
                serving=self._endpoint.addresses,
            )
        try:
            if new.tls_cert:
                check_tls(new.tls_cert, new.tls_key)
            self._endpoint.change_listen(new.listen)
            self._endpoint.set_tls(new.tls_cert, new.tls_key)
        except (EndpointError, OSError, ValueError) as error:
            text = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise ConfigError(
                str(self._config_path), [f"metrics.listen: cannot serve on {new.listen!r}: {text}"]
            ) from None

    # --- disk state, status, watchdog ----------------------------------------------

    def _next_run_time(self) -> datetime | None:
        job = self._scheduler.get_job(JOB_ID)
        moment: datetime | None = None if job is None else job.next_run_time
        return moment

    def _next_run_timestamp(self) -> float | None:
        moment = self._next_run_time()
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
            f"{_format_time(self._next_run_time())}; last pass: {self._previous_result}"
            f"{running}{listing}{endpoint}"
        )

    def _refresh(self) -> None:
        self._metrics.set_next_run(self._next_run_timestamp())
        self._notifier.send(status_line(self._status()))

    def _tick_seconds(self) -> float:
        if self._watchdog is None:
            return IDLE_TICK_SECONDS
        return max(0.0, min(IDLE_TICK_SECONDS, self._next_ping - time.monotonic()))

    def _scheduler_alive(self) -> bool:
        # BackgroundScheduler keeps its thread in `_thread`; there is no public accessor.
        thread = getattr(self._scheduler, "_thread", None)
        return bool(self._scheduler.running) and thread is not None and thread.is_alive()

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 every half interval, only while the scheduler thread is alive."""
        if self._watchdog is None or time.monotonic() < self._next_ping:
            return
        self._next_ping = time.monotonic() + self._watchdog
        if self._scheduler_alive():
            self._notifier.send("WATCHDOG=1")
        elif not self._scheduler_dead_logged:
            self._scheduler_dead_logged = True
            self._log.error("scheduler thread is not running; watchdog pings stopped")

    def _check_clock(self) -> None:
        offset = time.time() - time.monotonic()
        if clock_jumped(self._clock_offset, offset):
            self._log.warning("wall clock stepped", seconds=round(offset - self._clock_offset, 1))
            # The scheduler sleeps in monotonic time: make it re-read the wall clock now.
            self._scheduler.wakeup()
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
