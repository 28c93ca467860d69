"""The metrics endpoint under attack, with the real daemon: a port squatter (a real
unprivileged user looping on bind()) racing restarts and reloads under socket activation;
idle and half-open plain and TLS connections; a port taken at start (loud, backups go on);
READY=1 before the inventory; catch-up decided after it; the state file."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from pathlib import Path

import pytest
from support import need
from support.daemon import (
    START_TIMEOUT,
    Running,
    Site,
    cli_snapshot,
    daemon,
    frozen_processes_of,
    inventory_done,
    last_pass_ok,
    sample,
    scrape,
    snapshot_times,
    start_daemon,
)
from support.system import IS_ROOT, PYTHON, as_user

from t3backupd.core.usermap import User

# What systemd does for a socket-activated service: the listening socket is fd 3, and
# LISTEN_PID names the service's own pid (known only after fork, hence exec from here).
ACTIVATION_WRAPPER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='metrics')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

# A hostile local user: loop on bind() to the metrics port (SO_REUSEADDR and SO_REUSEPORT,
# every trick an unprivileged process has); if it ever wins, serve fake "all fresh" metrics.
SQUATTER = r"""
import signal, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
tries = 0
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
  while time.monotonic() < end:
      sock = socket.socket()
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
      try:
          sock.bind(("127.0.0.1", port))
          sock.listen(16)
      except OSError:
          sock.close()
          tries += 1
          time.sleep(0.0005)
          continue
      print("WON", flush=True)
      sock.settimeout(0.2)
      while time.monotonic() < end:
          try:
              client, _ = sock.accept()
          except OSError:
              continue
          client.recv(4096)
          client.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nt3backup_users 999\n")
          client.close()
      break
finally:
  print("TRIES", tries, flush=True)
"""


@contextmanager
def squatter(user: User, port: int, seconds: float) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [PYTHON, "-I", "-c", SQUATTER, str(port), str(seconds)],
        **as_user(user),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


class Scraper:
    """Prometheus' part: scrape every 0.1 s from a thread, keeping every outcome."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.context = context
        self.outcomes: list[str | BaseException] = []
        self.durations: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        scheme = "https" if self.context else "http"
        url = f"{scheme}://127.0.0.1:{self.port}/metrics"
        while not self._done.is_set():
            started = time.monotonic()
            try:
                # A literal scheme and host: nothing else can be opened.
                with urllib.request.urlopen(url, timeout=15, context=self.context) as response:  # noqa: S310
                    self.outcomes.append(response.read().decode())
            except OSError as error:
                self.outcomes.append(error)
            self.durations.append(round(time.monotonic() - started, 3))
            time.sleep(0.1)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(20)


def activated_daemon(
    site: Site, listener: socket.socket, name: str
) -> AbstractContextManager[Running]:
    return start_daemon(
        site.config,
        site.port,
        site.root,
        name,
        command=[PYTHON, "-I", "-c", ACTIVATION_WRAPPER, str(listener.fileno())],
        pass_fds=(listener.fileno(),),
    )


def reload(running: Running) -> str:
    mark = len(running.notify.messages)
    running.signal(signal.SIGHUP)
    ready = running.notify.wait_field("READY", "1", after=mark, timeout=10)
    return running.notify.messages[ready].fields.get("STATUS", "")


def listening_inode(port: int) -> str | None:
    """The inode of the socket in LISTEN state on 127.0.0.1:`port` (/proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            return fields[9]
    return None


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- socket activation against a squatter -----------------------------------------------


def test_squatter_never_wins_the_activated_port_across_restart_and_reloads(site: Site) -> None:
    need(IS_ROOT, "needs root: a real unprivileged squatter user")
    user, mallory = site.add_user(), site.new_user()
    site.write([user])
    listener = socket.socket()  # bound "by PID 1", before any user runs
    listener.bind(("127.0.0.1", site.port))
    listener.listen(128)
    scraper = Scraper(site.port)
    generations = 3
    try:
        with squatter(mallory, site.port, 120) as squat:
            for generation in range(generations):
                # A restart: the next daemon starts as soon as the previous one has exited.
                with activated_daemon(site, listener, f"daemon{generation}") as running:
                    if generation == 0:
                        scraper.start()
                    assert "t3backup_metrics_socket_activated 1.0" in scrape(site.port)
                    for _ in range(3):
                        inode = listening_inode(site.port)
                        reload(running)
                        assert listening_inode(site.port) == inode  # never rebound
                        time.sleep(0.3)
                    if generation == generations - 1:
                        scraper.stop()  # while a daemon still serves
            squat.terminate()
            output, _ = squat.communicate(timeout=10)
    finally:
        scraper.stop()
        listener.close()
    assert "WON" not in output, "the squatter got the metrics port"
    found = re.search(r"TRIES (\d+)", output)
    assert found is not None and int(found.group(1)) > 100, output  # it really tried
    assert len(scraper.outcomes) >= 10, scraper.durations
    failures = [item for item in scraper.outcomes if not isinstance(item, str)]
    assert failures == [], failures
    for text in scraper.outcomes:
        assert isinstance(text, str)
        # The squatter's fake line exactly: a timestamp may well contain the digits 999.
        assert "t3backup_users 1.0" in text and "t3backup_users 999" not in text


def test_without_activation_a_port_taken_at_start_is_loud_and_backups_go_on(site: Site) -> None:
    user = site.add_user()
    site.write([user], catch_up=True)  # a pass at once: the backups must not wait for metrics
    holder = socket.socket()
    holder.bind(("127.0.0.1", site.port))
    holder.listen(1)
    try:
        with daemon(site) as running:
            ready = running.notify.messages[running.notify.wait_field("READY", "1")]
            assert "METRICS NOT SERVED" in ready.fields["STATUS"]
            assert "Address already in use" in ready.fields["STATUS"]
            running.notify.wait_for(last_pass_ok(1), timeout=60)
            assert len(snapshot_times(site, user)) == 1
            assert "metrics endpoint not serving" in running.log_text()
            holder.close()  # the squatter goes: the endpoint comes back by itself
            deadline = time.monotonic() + 15
            text = ""
            while time.monotonic() < deadline:
                with suppress(OSError):
                    text = scrape(site.port)
                    break
                time.sleep(0.2)
            assert text, "the endpoint never came back"
            failures = sample(text, "t3backup_metrics_bind_failures_total")
            assert failures is not None and failures >= 1
            assert sample(text, "t3backup_metrics_socket_activated") == 0
            assert sample(text, "t3backup_attempts_total", user=user.name) == 1
            running.notify.wait_for(
                lambda message: "METRICS NOT SERVED" not in message.fields.get("STATUS", "x"),
                timeout=10,
            )
        assert running.process.returncode == 0
    finally:
        holder.close()


# --- idle and half-open clients ---------------------------------------------------------------


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    need(shutil.which("openssl") is not None, "needs the openssl CLI to make a test certificate")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return cert, key


def client_context(cafile: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False
    return context


def tls_scrape(port: int, cafile: Path) -> str:
    url = f"https://127.0.0.1:{port}/metrics"
    context = client_context(cafile)
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        body: bytes = response.read()
    return body.decode()


def peer_common_name(port: int, cafile: Path) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client_context(cafile).wrap_socket(raw) as tls,
    ):
        subject = dict(item[0] for item in tls.getpeercert()["subject"])  # type: ignore[index]
        return str(subject["commonName"])


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_idle_and_half_open_connections_never_stall_scrapes_reload_or_stop(
    site: Site, tls: bool
) -> None:
    user = site.add_user()
    extra = ""
    cert = site.root / "first.crt"
    if tls:
        cert, key = make_certificate(site.root, "first")
        extra = f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    site.write([user], extra="")
    # [metrics] is the config's last table but one: put the TLS keys into it.
    text = site.config.read_text().replace(
        f'listen = "127.0.0.1:{site.port}"\n', f'listen = "127.0.0.1:{site.port}"\n{extra}'
    )
    site.config.write_text(text)

    def one_scrape() -> str:
        return tls_scrape(site.port, cert) if tls else scrape(site.port)

    with daemon(site) as running:
        pid = running.process.pid
        baseline = open_fds(pid)
        held: list[socket.socket] = []
        try:
            # One silent connection first: the next scrape must not wait for it.
            held.append(socket.create_connection(("127.0.0.1", site.port), timeout=5))
            started = time.monotonic()
            assert "t3backup_users 1.0" in one_scrape()
            assert time.monotonic() - started < 5  # a stalled scrape waits 10 s or forever
            # Then 300 more: silent, half a request, half a TLS record.
            for index in range(300):
                sock = socket.create_connection(("127.0.0.1", site.port), timeout=5)
                sock.sendall((b"", b"GET /metr", b"\x16\x03\x01\x02\x00\x01")[index % 3])
                held.append(sock)
            time.sleep(1)
            assert open_fds(pid) <= baseline + 2 * 64 + 8, "connections exhaust descriptors"
            for _ in range(3):
                started = time.monotonic()
                assert "t3backup_users 1.0" in one_scrape()
                assert time.monotonic() - started < 5  # a stalled scrape waits 10 s or forever
            after = one_scrape()
            rejected = sample(after, "t3backup_metrics_connections_rejected_total")
            assert rejected is not None and rejected > 0
            assert sample(after, "t3backup_internal_errors_total", component="main_loop") == 0
            assert (
                sample(after, "t3backup_internal_errors_total", component="metrics_endpoint") == 0
            )
            started = time.monotonic()
            reload(running)
            assert time.monotonic() - started < 5, "SIGHUP stalled behind idle connections"
            started = time.monotonic()
            running.signal(signal.SIGTERM)
            assert running.process.wait(15) == 0
            assert time.monotonic() - started < 5, "SIGTERM stalled behind idle connections"
        finally:
            for sock in held:
                sock.close()


def test_tls_certificate_renewed_on_reload_without_closing_the_socket(site: Site) -> None:
    user = site.add_user()
    cert, key = make_certificate(site.root, "first")
    site.write([user])
    text = site.config.read_text().replace(
        f'listen = "127.0.0.1:{site.port}"\n',
        f'listen = "127.0.0.1:{site.port}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n',
    )
    site.config.write_text(text)
    with daemon(site, wait_inventory=False) as running:
        assert peer_common_name(site.port, cert) == "first"
        inode = listening_inode(site.port)
        assert inode is not None
        renewed, renewed_key = make_certificate(site.root, "second")
        shutil.copyfile(renewed, cert)
        shutil.copyfile(renewed_key, key)
        status = reload(running)
        assert "reloaded" in status
        assert listening_inode(site.port) == inode
        assert peer_common_name(site.port, cert) == "second"
        assert "t3backup_users 1.0" in tls_scrape(site.port, cert)
        # A broken renewal is refused and the live certificate stays.
        key.write_text("not a key\n")
        status = reload(running)
        assert "reload refused" in status
        assert listening_inode(site.port) == inode
        assert peer_common_name(site.port, cert) == "second"


# --- READY before the inventory; catch-up after it; the state file ---------------------------


def test_ready_does_not_wait_for_a_frozen_inventory_and_catch_up_waits_for_it(
    site: Site,
) -> None:
    need(IS_ROOT, "needs root: two real users, one of them frozen")
    quick, frozen = site.add_user(), site.add_user()
    site.write([quick, frozen])
    cli_snapshot(site)  # both have a fresh snapshot: catch-up needs none...
    site.write([quick, frozen], catch_up=True)
    with daemon(site, wait_ready=False) as running, ExitStack() as freezer:
        stopped = freezer.enter_context(frozen_processes_of(frozen.uid))
        ready = running.notify.wait_field("READY", "1", timeout=START_TIMEOUT)
        # READY=1 came while the frozen user's listing is still pending.
        text = running.notify.ready_scrape()
        assert sample(text, "t3backup_inventory_pending", user=frozen.name) == 1
        assert "listing snapshots of" in running.notify.messages[ready].fields["STATUS"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = scrape(site.port)
            if sample(text, "t3backup_inventory_pending", user=quick.name) == 0:
                break
            time.sleep(0.1)
        assert sample(text, "t3backup_snapshots", user=quick.name) == 1
        assert stopped, "the frozen user's inventory worker never appeared"
        assert sample(text, "t3backup_inventory_pending", user=frozen.name) == 1
        # ...and none is decided while a user's newest snapshot is unknown.
        assert "catching up" not in running.log_text()
        freezer.close()  # the user's worker is killed: its listing fails (unknown)
        running.notify.wait_for(inventory_done, timeout=30, after=ready)
        # Unknown counts as missed (as before): the catch-up pass runs now.
        running.notify.wait_for(last_pass_ok(2), timeout=60)
        assert "catching up" in running.log_text()


def test_catch_up_is_skipped_after_the_inventory_when_every_user_is_fresh(site: Site) -> None:
    user = site.add_user()
    site.write([user])
    cli_snapshot(site)
    site.write([user], catch_up=True)  # last leap day 2024-02-29: before this snapshot
    with daemon(site) as running:  # entered once the inventory is done
        time.sleep(1)  # a catch-up pass would have been requested by now
        text = scrape(site.port)
        assert "inventory finished" in running.log_text()
        assert "catching up" not in running.log_text()
    assert sample(text, "t3backup_attempts_total", user=user.name) == 0
    assert sample(text, "t3backup_snapshots", user=user.name) == 1


def test_state_file_serves_until_the_fresh_inventory_and_a_hostile_one_is_ignored(
    site: Site,
) -> None:
    need(IS_ROOT, "needs root: the user's inventory worker is frozen")
    user = site.add_user()
    site.write([user])
    cli_snapshot(site)
    newest = snapshot_times(site, user)[-1][1]
    state = site.root / "state"
    state.mkdir(mode=0o755)
    env = {"STATE_DIRECTORY": str(state)}
    with daemon(site, env=env):
        pass  # entered once the inventory is done: the state file is written
    path = state / "inventory.json"
    assert path.stat().st_uid == 0 and path.stat().st_mode & 0o777 == 0o600
    with frozen_processes_of(user.uid), daemon(site, env=env, wait_inventory=False) as running:
        text = running.notify.ready_scrape()
        assert sample(text, "t3backup_inventory_pending", user=user.name) == 1
        assert sample(text, "t3backup_last_success_timestamp_seconds", user=user.name) == newest
        assert sample(text, "t3backup_snapshots", user=user.name) == 1
    os.chmod(path, 0o666)  # writable by anyone: never trusted
    with frozen_processes_of(user.uid), daemon(site, env=env, wait_inventory=False) as running:
        text = running.notify.ready_scrape()
        assert sample(text, "t3backup_last_success_timestamp_seconds", user=user.name) == 0
        assert "state file ignored" in running.log_text()


# --- issue 20 item 5: one user's file must not wipe everyone's saved state ---------------

PLANTED_2099 = "state-20990101T000000Z.sqlite"


@contextmanager
def frozen_users(users: list[User]) -> Iterator[None]:
    """Every process of `users` stopped as it appears: their inventory workers never
    report, so their values are the state file's only."""
    with ExitStack() as stack:
        for user in users:
            stack.enter_context(frozen_processes_of(user.uid))
        yield


def test_a_planted_2099_snapshot_never_costs_other_users_their_saved_last_success(
    site: Site,
) -> None:
    need(IS_ROOT, "needs root: real users, and their inventory workers are frozen")
    victims = [site.add_user(), site.add_user()]
    attacker = site.add_user()
    site.write([*victims, attacker])
    cli_snapshot(site)
    newest = {user.name: snapshot_times(site, user)[-1][1] for user in [*victims, attacker]}
    # The attacker plants a snapshot named for 2099 in their own directory, as themselves.
    own_dir = site.dest / attacker.name
    current = snapshot_times(site, attacker)[-1][0]
    subprocess.run(["cp", str(own_dir / current), str(own_dir / PLANTED_2099)],
                   check=True, **as_user(attacker))  # fmt: skip
    state = site.root / "state"
    state.mkdir(mode=0o755)
    env = {"STATE_DIRECTORY": str(state)}
    with daemon(site, env=env):  # the listing sees the 2099 name; the state file is saved
        listed = scrape(site.port)
    with frozen_users([*victims, attacker]), daemon(site, env=env, wait_inventory=False) as running:
        text = running.notify.ready_scrape()
        log = running.log_text()
    # Before: the state file held 2099, the loader refused it whole ("value out of
    # range") and every user's last success restarted at 0.
    assert "state file ignored" not in log, log
    for user in [*victims, attacker]:
        assert sample(text, "t3backup_inventory_pending", user=user.name) == 1
        restored = sample(text, "t3backup_last_success_timestamp_seconds", user=user.name)
        assert restored == newest[user.name], user.name
    # The planted name is counted, never the newest (metrics, and so the state file).
    last_success = sample(listed, "t3backup_last_success_timestamp_seconds", user=attacker.name)
    assert last_success == newest[attacker.name]
    assert sample(listed, "t3backup_snapshots", user=attacker.name) == 2


def test_a_corrupted_state_entry_drops_that_user_only(site: Site) -> None:
    need(IS_ROOT, "needs root: real users, and their inventory workers are frozen")
    victim, broken = site.add_user(), site.add_user()
    site.write([victim, broken])
    cli_snapshot(site)
    newest = snapshot_times(site, victim)[-1][1]
    state = site.root / "state"
    state.mkdir(mode=0o755)
    env = {"STATE_DIRECTORY": str(state)}
    with daemon(site, env=env):
        pass  # the start-up listing is done: the state file is written
    path = state / "inventory.json"
    document = json.loads(path.read_bytes())
    document["users"][broken.name] = [1, "yesterday", 4096]  # hand-corrupted
    path.write_text(json.dumps(document))
    with frozen_users([victim, broken]), daemon(site, env=env, wait_inventory=False) as running:
        text = running.notify.ready_scrape()
        log = running.log_text()
    assert sample(text, "t3backup_last_success_timestamp_seconds", user=victim.name) == newest
    assert sample(text, "t3backup_last_success_timestamp_seconds", user=broken.name) == 0
    assert "state file ignored" not in log
    dropped = [line for line in log.splitlines() if "state file entry dropped" in line]
    assert len(dropped) == 1 and broken.name in dropped[0] and "newest" in dropped[0], log
