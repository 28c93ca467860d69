"""The real daemon for tests: a NOTIFY_SOCKET the test owns, /metrics scrapes, a sandbox
("site") with config, usermap, dest and users, and `python -I -m t3backupd run` as a child."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from support import need
from support.system import (
    IS_ROOT,
    PYTHON,
    create_state_db,
    current_user,
    run_as,
    snapshot_files,
    t3backupd,
    user_factory,
    write_config,
)
from t3backupd.core.naming import parse_name
from t3backupd.core.usermap import User

FAR_FUTURE_CRON = "0 0 29 2 *"  # leap days only: never fires during a test
START_TIMEOUT = 20.0
STOP_GRACE = 30.0  # the daemon's bounded grace for workers after SIGTERM


# --- plumbing: notify socket, metrics scrapes, the daemon process ------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, from a text exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def sample(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


@dataclass
class Message:
    at: float  # time.monotonic()
    fields: dict[str, str]
    scrape_ok: bool | None = None  # for READY=1: did /metrics answer right then?
    scrape_text: str | None = None  # for READY=1: what /metrics answered right then


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records every message.

    On READY=1 it scrapes /metrics at once, from its own thread, so a READY sent before
    the endpoint answers is caught, and the values seen are those the daemon was ready with.
    """

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port
        self.messages: list[Message] = []
        self._condition = threading.Condition()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.1)
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            message = Message(time.monotonic(), fields)
            if fields.get("READY") == "1":
                try:
                    message.scrape_text = scrape(self.port)
                    message.scrape_ok = True
                except OSError:
                    message.scrape_ok = False
            with self._condition:
                self.messages.append(message)
                self._condition.notify_all()

    def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float = 15.0, after: int = 0
    ) -> int:
        """Index of the first message from `after` on matching `predicate`."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for index in range(after, len(self.messages)):
                    if predicate(self.messages[index]):
                        return index
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    shown = [message.fields for message in self.messages[after:]]
                    raise AssertionError(f"no matching notify message; got {shown}")
                self._condition.wait(remaining)

    def wait_field(self, key: str, value: str | None = None, **kwargs: float) -> int:
        return self.wait_for(
            lambda message: (
                key in message.fields and (value is None or message.fields[key] == value)
            ),
            **kwargs,  # type: ignore[arg-type]
        )

    def ready_scrape(self, timeout: float = START_TIMEOUT) -> str:
        """The /metrics text scraped the moment the first READY=1 arrived."""
        ready = self.messages[self.wait_field("READY", "1", timeout=timeout)]
        assert ready.scrape_text is not None, "/metrics did not answer at READY=1"
        return ready.scrape_text

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self._socket.close()


@dataclass
class Site:
    """A sandbox with a config, its usermap, its dest, and users with databases."""

    root: Path
    port: int
    new_user: Callable[[], User]
    source: str
    extra: str = ""
    users: list[User] = field(default_factory=list)

    @property
    def dest(self) -> Path:
        return self.root / "dest"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def add_user(self, size_mb: float = 1) -> User:
        user = self.new_user()
        make_database(self, user, size_mb)
        return user

    def write(self, users: list[User], cron: str = FAR_FUTURE_CRON, catch_up: bool = False,
              snapshot: str = "", extra: str = "") -> Path:  # fmt: skip
        self.users = users
        text = (
            f'[schedule]\ncron = "{cron}"\ncatch_up = {str(catch_up).lower()}\n'
            f'[metrics]\nlisten = "127.0.0.1:{self.port}"\n[log]\nformat = "json"\n'
            f"{snapshot}{extra}"
        )
        return write_config(self.root, users, self.dest, extra=text, source=self.source)


def make_database(site: Site, user: User, size_mb: float) -> Path:
    if IS_ROOT:
        return create_state_db(user, size_mb)
    path = Path(site.source.format(user=user.name, home=user.home))
    path.parent.mkdir(parents=True, exist_ok=True)
    run_as(user, [PYTHON, "-I", "-m", "t3backupd_dev.sampledb", "create", str(path),
                  "--size-mb", str(size_mb), "--force"])  # fmt: skip
    return path


def inventory_done(message: Message) -> bool:
    """A STATUS= sent once no user's snapshots are still being listed."""
    status = message.fields.get("STATUS")
    return status is not None and "listing snapshots" not in status


# As a user who is not root the daemon runs only when asked to (`run --unprivileged`).
RUN_AS_ME: tuple[str, ...] = () if IS_ROOT else ("--unprivileged",)


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    notify: NotifyListener
    log: Path
    started: float

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self, name: str, **fields: object) -> list[dict[str, object]]:
        """The daemon's JSON log events named `name` (with these field values), in order."""
        found = []
        for line in self.log_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            wanted = {"event": name, **fields}
            if isinstance(event, dict) and all(
                event.get(key) == value for key, value in wanted.items()
            ):
                found.append(event)
        return found

    def wait_offsite(self, user: str, count: int, timeout: float = 120) -> dict[str, object]:
        """The `count`-th "offsite" event of `user` (the lane's outcome), once logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events("offsite", user=user)
            if len(events) >= count:
                return events[count - 1]
            time.sleep(0.2)
        raise AssertionError(f"no offsite event #{count} for {user}:\n{self.log_text()[-3000:]}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)


@contextmanager
def start_daemon(
    config: Path,
    port: int,
    workdir: Path,
    name: str = "daemon",
    *,
    watchdog_usec: int | None = None,
    watchdog_pid: str | None = None,
    wait_ready: bool = True,
    wait_inventory: bool = True,
    stop: signal.Signals = signal.SIGTERM,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Iterator[Running]:
    """The real `python -I -m t3backupd -c CONFIG run`, run from `/` (the installed package,
    as under systemd, never the checkout), with a NOTIFY_SOCKET of the test's and its log
    `<workdir>/<name>.log`. With `wait_ready`, entered once READY=1 has come, and with
    `wait_inventory` too, once STATUS says the start-up listing of snapshots is done (it
    runs after READY=1). `env` adds variables; `command` is put before the daemon's argv
    (e.g. a socket-activation wrapper), with `pass_fds` inherited.

    If still running at the end: `stop=SIGTERM` sends it and waits out the daemon's grace
    (then SIGKILL); `stop=SIGKILL` kills it at once.
    """
    notify = NotifyListener(workdir / f"notify-{name}-{time.monotonic_ns()}", port)
    log = workdir / f"{name}.log"
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("WATCHDOG_", "T3_BACKUP_", "NOTIFY_", "LISTEN_",
                                          "STATE_DIRECTORY"))}  # fmt: skip
    environment.update({"NOTIFY_SOCKET": str(notify.path), "T3BACKUPD_CONFIG": ""})
    if watchdog_usec is not None:
        environment["WATCHDOG_USEC"] = str(watchdog_usec)
    if watchdog_pid is not None:
        environment["WATCHDOG_PID"] = watchdog_pid
    environment.update(env or {})
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *(command or []),
                PYTHON,
                "-I",
                "-m",
                "t3backupd",
                "-c",
                str(config),
                "run",
                *RUN_AS_ME,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd="/",
            pass_fds=pass_fds,
        )
    running = Running(process, notify, log, time.monotonic())
    try:
        if wait_ready:
            ready = notify.wait_field("READY", "1", timeout=START_TIMEOUT)
            if wait_inventory:
                notify.wait_for(inventory_done, timeout=START_TIMEOUT, after=ready)
        yield running
    except BaseException:
        print(f"--- {name} log ---\n{running.log_text()}")
        raise
    finally:
        if process.poll() is None:
            process.send_signal(stop)
            try:
                process.wait(STOP_GRACE + 5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        notify.close()


@contextmanager
def daemon(site: Site, watchdog_usec: int | None = None, watchdog_pid: str | None = None,
           wait_ready: bool = True, wait_inventory: bool = True,
           env: dict[str, str] | None = None) -> Iterator[Running]:  # fmt: skip
    """The real daemon on `site`'s config (see start_daemon), stopped (SIGTERM) afterwards."""
    with start_daemon(
        site.config,
        site.port,
        site.root,
        watchdog_usec=watchdog_usec,
        watchdog_pid=watchdog_pid,
        wait_ready=wait_ready,
        wait_inventory=wait_inventory,
        env=env,
    ) as running:
        yield running


def snapshot_times(site: Site, user: User) -> list[tuple[str, float]]:
    """(name, epoch seconds) of the user's snapshots on disk, oldest first."""
    directory = site.dest / user.name
    if not directory.exists():
        return []
    found = []
    for name in snapshot_files(directory):
        parsed = parse_name(name)
        assert parsed is not None
        found.append((name, parsed.time.timestamp()))
    return sorted(found, key=lambda item: item[1])


def cli_snapshot(site: Site) -> None:
    result = t3backupd(site.config, "snapshot")
    assert result.returncode == 0, result.stdout + result.stderr


def last_pass_ok(count: int) -> Callable[[Message], bool]:
    return lambda message: f"last pass: {count} ok" in message.fields.get("STATUS", "")


@contextmanager
def make_site(sandbox: Path) -> Iterator[Site]:
    """A Site in `sandbox`: real users as root; otherwise only the invoking user."""
    if IS_ROOT:
        with user_factory() as factory:
            yield Site(sandbox, free_port(), factory, "{home}/.t3/userdata/state.sqlite")
        return
    handed_out: list[User] = []

    def only_me() -> User:
        need(not handed_out, "needs root: a second real user (useradd)")
        handed_out.append(current_user())
        return handed_out[-1]

    yield Site(sandbox, free_port(), only_me, f"{sandbox}/src/{{user}}/state.sqlite")


# --- a user freezing their own workers ----------------------------------------------------


def uid_of(pid: int) -> int | None:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


@contextmanager
def frozen_processes_of(uid: int) -> Iterator[list[int]]:
    """SIGSTOP every process of `uid` as soon as it appears (a user stopping their own
    worker); SIGKILL them afterwards. Yields the pids stopped so far."""
    stopped: list[int] = []
    done = threading.Event()

    def freeze() -> None:
        while not done.is_set():
            for entry in os.scandir("/proc"):
                pid = int(entry.name) if entry.name.isdigit() else 0
                if pid and pid not in stopped and uid_of(pid) == uid:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
            time.sleep(0.002)

    thread = threading.Thread(target=freeze, daemon=True)
    thread.start()
    try:
        yield stopped
    finally:
        done.set()
        thread.join(5)
        for pid in stopped:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
