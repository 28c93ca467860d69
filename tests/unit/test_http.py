"""The /metrics endpoint on real sockets (127.0.0.1): answers, idle and half-open clients,
the connection bound, deadlines, TLS reload into the live context, bind failure + retry."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from support import need

from t3backupd.root.http import Endpoint, EndpointError, describe_address, respond
from t3backupd.root.metrics import Metrics


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Counts:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.errors: list[str] = []
        self.listening = threading.Event()


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Metrics(registry).set_users(["alice"])
    return registry


@pytest.fixture
def counts() -> Counts:
    return Counts()


MakeEndpoint = Callable[..., Endpoint]


@pytest.fixture
def make_endpoint(registry: CollectorRegistry, counts: Counts) -> Iterator[MakeEndpoint]:
    made: list[Endpoint] = []

    def make(**kwargs: Any) -> Endpoint:
        endpoint = Endpoint(
            registry,
            on_error=counts.errors.append,
            on_event=counts.events.append,
            on_listening=counts.listening.set,
            **kwargs,
        )
        made.append(endpoint)
        return endpoint

    yield make
    for endpoint in made:
        endpoint.stop()


def get(port: int, path: str = "/metrics", timeout: float = 5, **kwargs: object) -> bytes:
    scheme = "https" if "context" in kwargs else "http"
    url = f"{scheme}://127.0.0.1:{port}{path}"
    # The URL is built here from a literal scheme and host.
    with urllib.request.urlopen(url, timeout=timeout, **kwargs) as response:  # type: ignore[arg-type]  # noqa: S310
        body: bytes = response.read()
    return body


def idle_connections(port: int, count: int, first_bytes: bytes = b"") -> list[socket.socket]:
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first_bytes:
            sock.sendall(first_bytes)
        held.append(sock)
    return held


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# --- the response (pure) ------------------------------------------------------------------


def test_respond_serves_metrics_on_get_and_head_and_refuses_the_rest() -> None:
    def body() -> bytes:
        return b"metric 1\n"

    ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", body)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nmetric 1\n")
    assert b"Content-Length: 9\r\n" in ok and b"Connection: close\r\n" in ok
    assert b"Content-Type: " + CONTENT_TYPE_LATEST.encode() + b"\r\n" in ok
    assert respond(b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n", body).startswith(b"HTTP/1.1 200")
    head = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", body)
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    assert respond(b"GET /other HTTP/1.1\r\n\r\n", body).startswith(b"HTTP/1.1 404")
    assert respond(b"POST /metrics HTTP/1.1\r\n\r\n", body).startswith(b"HTTP/1.1 405")
    assert respond(b"\x16\x03\x01junk\r\n\r\n", body).startswith(b"HTTP/1.1 400")


# --- plain HTTP -----------------------------------------------------------------------------


def test_scrapes_are_answered_and_stop_releases_the_port(make_endpoint: MakeEndpoint) -> None:
    port = free_port()
    endpoint = make_endpoint()
    endpoint.start([], f"127.0.0.1:{port}", "", "")
    assert endpoint.addresses == [f"127.0.0.1:{port}"] and endpoint.problem == ""
    assert b"t3backup_users 1.0" in get(port)
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get(port, "/nothing")
    endpoint.stop()
    with socket.socket() as again:  # released: bindable at once
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_one_idle_connection_does_not_stop_scrapes(make_endpoint: MakeEndpoint) -> None:
    port = free_port()
    endpoint = make_endpoint()
    endpoint.start([], f"127.0.0.1:{port}", "", "")
    held = idle_connections(port, 1) + idle_connections(port, 1, b"GET /metrics HTTP/1.1\r\n")
    try:
        started = time.monotonic()
        assert b"t3backup_build_info" in get(port, timeout=2)
        assert time.monotonic() - started < 1
    finally:
        for sock in held:
            sock.close()


def test_idle_connections_are_cut_at_their_deadline(make_endpoint: MakeEndpoint) -> None:
    port = free_port()
    endpoint = make_endpoint(deadline_seconds=1.0)
    endpoint.start([], f"127.0.0.1:{port}", "", "")
    # Silent, half a request, and one byte every 0.3 s (a slow drip never extends it).
    silent, partial = idle_connections(port, 1)[0], idle_connections(port, 1, b"GET /")[0]
    drip = idle_connections(port, 1, b"G")[0]
    started = time.monotonic()
    try:
        for byte in b"ET /metrics HTTP/1.1\r\nX: y":
            if time.monotonic() - started > 2.5:
                break
            try:
                drip.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.3)
        for sock in (silent, partial, drip):
            assert closed_by_peer(sock, within=3), "connection outlived its deadline"
        assert time.monotonic() - started < 4.5
        assert endpoint.connections() == 0
    finally:
        for sock in (silent, partial, drip):
            sock.close()


def test_many_idle_connections_stay_within_the_bound_and_scrapes_go_through(
    make_endpoint: MakeEndpoint, counts: Counts
) -> None:
    port = free_port()
    endpoint = make_endpoint(max_connections=8)
    endpoint.start([], f"127.0.0.1:{port}", "", "")
    held = idle_connections(port, 40)
    try:
        time.sleep(0.5)  # let the accept thread take them all
        assert endpoint.connections() <= 8
        for _ in range(5):  # each scrape evicts the oldest idle connection if full
            assert b"t3backup_users" in get(port, timeout=3)
        assert "rejected" in counts.events
        assert counts.errors == []
    finally:
        for sock in held:
            sock.close()


def test_with_no_idle_connection_to_drop_a_new_one_is_refused_at_once(counts: Counts) -> None:
    # A large exposition (10,000 users) and clients that never read it: both slots stay
    # busy sending (until their deadline, or until the test closes them), none is idle,
    # so a third connection is refused.
    registry = CollectorRegistry()
    Metrics(registry).set_users(f"user{index}" for index in range(10_000))
    endpoint = Endpoint(registry, counts.errors.append, counts.events.append,
                        max_connections=2, deadline_seconds=120.0)  # fmt: skip
    port = free_port()
    endpoint.start([], f"127.0.0.1:{port}", "", "")
    held = []
    try:
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            held.append(sock)
        time.sleep(1.0)
        assert endpoint.connections() == 2
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        started = time.monotonic()
        assert closed_by_peer(extra, within=2)
        assert time.monotonic() - started < 1
        extra.close()
        assert counts.events.count("rejected") >= 1
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 90  # their handlers end once their send fails
        while endpoint.connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert endpoint.connections() == 0
        assert b"user9999" in get(port, timeout=60)  # slots free again once they go
    finally:
        for sock in held:
            sock.close()
        endpoint.stop()


# --- bind failure, retry, reload ------------------------------------------------------------


def test_a_taken_port_is_loud_and_retried_until_free(
    make_endpoint: MakeEndpoint, counts: Counts
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    endpoint = make_endpoint(bind_retry_seconds=0.3)
    endpoint.start([], f"127.0.0.1:{port}", "", "")  # does not raise: backups go on
    assert "Address already in use" in endpoint.problem
    tried = counts.events.count("bind_failed")
    assert tried >= 1
    time.sleep(1)
    assert counts.events.count("bind_failed") > tried  # still trying
    holder.close()
    assert counts.listening.wait(5), "never bound after the port was freed"
    assert endpoint.problem == ""
    assert b"t3backup_users" in get(port)


def test_reload_to_a_taken_port_raises_and_the_old_socket_keeps_serving(
    make_endpoint: MakeEndpoint,
) -> None:
    port = free_port()
    endpoint = make_endpoint()
    endpoint.start([], f"127.0.0.1:{port}", "", "")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError):
            endpoint.change_listen(f"127.0.0.1:{holder.getsockname()[1]}")
    assert b"t3backup_users" in get(port)
    endpoint.change_listen(f"127.0.0.1:{port}")  # unchanged: nothing rebound
    assert endpoint.addresses == [f"127.0.0.1:{port}"]
    new_port = free_port()
    endpoint.change_listen(f"127.0.0.1:{new_port}")
    assert b"t3backup_users" in get(new_port)
    with pytest.raises(OSError):
        get(port, timeout=2)


def test_inherited_sockets_are_served_and_listen_changes_ignored(
    make_endpoint: MakeEndpoint,
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    endpoint = make_endpoint()
    endpoint.start([listener], "127.0.0.1:1", "", "")
    assert endpoint.activated and endpoint.addresses == [describe_address(listener)]
    endpoint.change_listen("127.0.0.1:2")
    assert b"t3backup_users" in get(port)


# --- TLS -----------------------------------------------------------------------------------


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    need(shutil.which("openssl") is not None, "needs the openssl CLI to make a test certificate")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def peer_common_name(port: int, cafile: Path) -> str:
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        subject = dict(item[0] for item in tls.getpeercert()["subject"])  # type: ignore[index]
        return str(subject["commonName"])


def tls_get(port: int, cafile: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False
    return get(port, timeout=3, context=context)


def test_tls_idle_and_half_open_handshakes_do_not_stop_scrapes(
    make_endpoint: MakeEndpoint, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path, "first")
    port = free_port()
    endpoint = make_endpoint(deadline_seconds=2.0)
    endpoint.start([], f"127.0.0.1:{port}", str(cert), str(key))
    # No ClientHello at all, and a TLS record header promising bytes that never come.
    held = idle_connections(port, 3) + idle_connections(port, 3, b"\x16\x03\x01\x02\x00\x01")
    try:
        started = time.monotonic()
        assert b"t3backup_build_info" in tls_get(port, cert)
        assert time.monotonic() - started < 1
        with pytest.raises(OSError):  # plain HTTP is not served over TLS
            get(port, timeout=3)
        for sock in held:
            assert closed_by_peer(sock, within=4)
    finally:
        for sock in held:
            sock.close()


def test_tls_certificates_reload_into_the_live_context(
    make_endpoint: MakeEndpoint, tmp_path: Path
) -> None:
    first_cert, first_key = make_certificate(tmp_path, "first")
    second_cert, second_key = make_certificate(tmp_path, "second")
    port = free_port()
    endpoint = make_endpoint()
    endpoint.start([], f"127.0.0.1:{port}", str(first_cert), str(first_key))
    assert peer_common_name(port, first_cert) == "first"
    # Refused pairs change nothing: a key of another certificate, a missing file.
    with pytest.raises(EndpointError):
        endpoint.set_tls(str(second_cert), str(first_key))
    with pytest.raises(EndpointError):
        endpoint.set_tls(str(tmp_path / "missing.crt"), str(first_key))
    assert peer_common_name(port, first_cert) == "first"
    endpoint.set_tls(str(second_cert), str(second_key))
    assert peer_common_name(port, second_cert) == "second"
    assert b"t3backup_users" in tls_get(port, second_cert)


class _BrokenOnce:
    """A collector whose first collection raises (a bug in a collector, not a client)."""

    def __init__(self) -> None:
        self.calls = 0

    def collect(self) -> Iterator[Any]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("collector bug")
        return iter(())


def test_an_exception_while_serving_is_counted_and_the_endpoint_goes_on(counts: Counts) -> None:
    registry = CollectorRegistry()
    Metrics(registry).set_users(["alice"])
    registry.register(_BrokenOnce())  # type: ignore[arg-type]
    endpoint = Endpoint(registry, counts.errors.append, counts.events.append)
    port = free_port()
    endpoint.start([], f"127.0.0.1:{port}", "", "")
    try:
        with pytest.raises(OSError):  # that one request gets no answer...
            get(port)
        assert counts.errors == ["metrics_endpoint"]
        assert b"t3backup_users 1.0" in get(port)  # ...the next ones do
    finally:
        endpoint.stop()
