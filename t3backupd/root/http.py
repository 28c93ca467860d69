"""The `/metrics` endpoint: a small HTTP(S) server on the standard library that no local
user can take over or stall.

Why not prometheus-client's `start_http_server`: a thread per connection with no
timeouts, the TLS handshake inside `accept()` (one silent client stops every scrape),
and a reload had to stop and rebind it (a window in which any local user could take the
port). Here:

- the listening socket comes from systemd socket activation (`LISTEN_FDS`/`LISTEN_PID`,
  bound by PID 1 before any user runs, kept across restarts) or is bound once by us; it
  is never closed on reload; a failed bind is retried in the background and counted;
- one accept thread (a selector with a timeout) hands each connection to its own short
  thread; at most `MAX_CONNECTIONS` at once: when full, the oldest connection that has not
  sent its request yet is dropped (a scrape sends its request at once, an idle squatter
  never does), else the new one is refused;
- each connection has one deadline for handshake + request + response, enforced from the
  accept thread (it shuts the socket down), so a slow-drip client cannot stretch it;
- TLS certificates are reloaded into the live `SSLContext` (new handshakes use them);
- any unexpected exception in the accept loop or a handler is logged and counted, and the
  loop goes on.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from t3backupd.core.config import parse_listen
from t3backupd.root.log import get_logger

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3)
MAX_CONNECTIONS = 64
CONNECTION_DEADLINE_SECONDS = 10.0  # handshake + request + response, in total
MAX_REQUEST_BYTES = 8192
SELECT_SECONDS = 0.25  # accept-loop tick: deadlines and stop are checked this often
BIND_RETRY_SECONDS = 5.0
STOP_GRACE_SECONDS = 2.0  # for responses in flight when the daemon stops
BACKLOG = 128
# accept() failing for want of resources: the pending connection stays queued and the
# selector reports it again at once, so back off instead of spinning.
RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
METRICS_PATHS = {"/metrics", "/"}


class EndpointError(Exception):
    """The endpoint cannot be set up as asked (bad inherited fds, unusable TLS files)."""


# --- the listening sockets ---------------------------------------------------------------


def inherited_sockets(environ: Mapping[str, str], pid: int) -> list[socket.socket]:
    """The listening sockets systemd passed (sd_listen_fds(3)), or [] when none were.

    Passed only if `LISTEN_PID` is `pid` and `LISTEN_FDS` a positive count; fds start at 3.
    Each is made close-on-exec (systemd passes them inheritable; a worker running as a
    user must never get the port). Raises EndpointError if a passed fd is not a
    listening TCP socket.
    """
    if environ.get("LISTEN_PID", "") != str(pid):
        return []
    count_text = environ.get("LISTEN_FDS", "")
    if not count_text.isdigit() or int(count_text) == 0:
        return []
    sockets: list[socket.socket] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count_text)):
        try:
            os.set_inheritable(fd, False)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise EndpointError(f"LISTEN_FDS: fd {fd} is not a socket")
            sock = socket.socket(fileno=fd)
        except OSError as error:
            raise EndpointError(f"LISTEN_FDS: fd {fd}: {error.strerror or error}") from None
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.type != socket.SOCK_STREAM or sock.family not in (
            socket.AF_INET,
            socket.AF_INET6,
        ) or not listening:  # fmt: skip
            sock.detach()  # not ours to close: leave the fd as it came
            raise EndpointError(f"LISTEN_FDS: fd {fd} is not a listening TCP socket")
        sockets.append(sock)
    return sockets


def bind_listening(listen: str) -> socket.socket:
    """A listening TCP socket on `listen` ("host:port"). Raises OSError if it cannot be
    bound (e.g. the port is taken), ValueError if `listen` is malformed."""
    host, port = parse_listen(listen)
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICSERV
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Lets a restarted daemon bind over its predecessor's TIME_WAIT connections; a
        # port another process listens on is still refused (no SO_REUSEPORT).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def describe_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- TLS ----------------------------------------------------------------------------------


def check_tls(cert: str, key: str) -> None:
    """Raises EndpointError if `cert` and `key` cannot be loaded as a pair."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise EndpointError(f"metrics.tls_cert/tls_key: cannot load: {error}") from None


# --- one connection -----------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    fd: int  # the same for the plain and the TLS socket object
    deadline: float  # time.monotonic()
    requested: bool = False  # a whole request arrived (no longer an eviction candidate)
    dropped: bool = False  # cut to make room: its handler is ending, it holds no slot
    closed: threading.Event = field(default_factory=threading.Event)

    def cut(self) -> None:
        """Wake and end the handler from another thread: shutdown() acts on the connection
        itself, whichever object (plain or TLS) the handler holds it through. Called with
        the endpoint's lock held, so the handler cannot have closed the fd (and the number
        cannot name another file yet)."""
        try:
            duplicate = socket.socket(fileno=os.dup(self.fd))
        except OSError:
            return
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more: nothing to wake
        finally:
            duplicate.close()


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("connection deadline passed")
    return left


def _read_request(sock: socket.socket, deadline: float) -> bytes:
    """The request head (up to the blank line). Raises TimeoutError, ValueError if too
    long or the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request head too long")
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(4096)
        if not chunk:
            raise ValueError("connection closed before a whole request")
        data += chunk
    return data


def respond(head: bytes, body: Callable[[], bytes]) -> bytes:
    """The whole HTTP/1.1 response (Connection: close) to a request head (pure, apart from
    calling `body` for a metrics request)."""
    line = head.split(b"\n", 1)[0].strip()
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response(400, b"Bad Request", b"text/plain", b"bad request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"Method Not Allowed", b"text/plain", b"GET or HEAD only\n",
                         b"Allow: GET, HEAD\r\n")  # fmt: skip
    if target.decode("latin-1") not in METRICS_PATHS:
        return _response(404, b"Not Found", b"text/plain", b"see /metrics\n")
    content = body()
    response = _response(200, b"OK", CONTENT_TYPE_LATEST.encode(), content)
    return response[: len(response) - len(content)] if method == b"HEAD" else response


def _response(code: int, reason: bytes, kind: bytes, content: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n%s\r\n" % (code, reason, kind, len(content), extra)
    ) + content


def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        sock.settimeout(_remaining(deadline))
        sent = sock.send(view[:65536])
        view = view[sent:]


# --- the server ---------------------------------------------------------------------------


ErrorHook = Callable[[str], None]


class Endpoint:
    """Serves `registry` on listening sockets it is given or binds.

    `on_error(component)` is called for every unexpected exception (already logged) and
    `on_event(kind)` for counted events: "bind_failed", "rejected". `on_listening()` is
    called from the retry thread when a failed bind finally succeeds.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        on_error: ErrorHook,
        on_event: ErrorHook,
        on_listening: Callable[[], None] = lambda: None,
        max_connections: int = MAX_CONNECTIONS,
        deadline_seconds: float = CONNECTION_DEADLINE_SECONDS,
        bind_retry_seconds: float = BIND_RETRY_SECONDS,
    ) -> None:
        self._registry = registry
        self._on_error = on_error
        self._on_event = on_event
        self._on_listening = on_listening
        self._max_connections = max_connections
        self._deadline_seconds = deadline_seconds
        self._bind_retry_seconds = bind_retry_seconds
        self._log = get_logger()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._activated = False
        self._listen = ""  # what we bind ourselves ("" = nothing, or socket-activated)
        self._bind_error = ""
        self._context: ssl.SSLContext | None = None
        # OpenSSL does not allow changing a context while connections are made from it:
        # a reload's load_cert_chain and each wrap_socket (not the handshake) take turns.
        self._tls_lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._stop = threading.Event()
        self._generation = 0  # bumped when the socket set changes: the selector rebuilds
        self._thread = threading.Thread(target=self._accept_loop, name="metrics", daemon=True)
        self._retry: threading.Thread | None = None

    # --- state, for STATUS and tests ------------------------------------------------------

    @property
    def activated(self) -> bool:
        return self._activated

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return [describe_address(sock) for sock in self._sockets]

    @property
    def problem(self) -> str:
        """Why the endpoint is not serving ("" when it is, or when none is wanted)."""
        with self._lock:
            return self._bind_error

    def connections(self) -> int:
        """Connections holding a slot (not counting dropped ones still closing)."""
        with self._lock:
            return sum(not item.dropped for item in self._connections)

    # --- setup -------------------------------------------------------------------------

    def start(self, inherited: Sequence[socket.socket], listen: str, cert: str, key: str) -> None:
        """Serve on `inherited` sockets (socket activation; `listen` is then ignored) or
        on `listen` (bound now; if that fails the failure is logged, counted and retried in
        the background: the caller goes on). Raises EndpointError for unusable TLS files."""
        self.set_tls(cert, key)
        if inherited:
            with self._lock:
                self._sockets = list(inherited)
                self._activated = True
                self._generation += 1
        else:
            self._bind(listen)
        self._thread.start()

    def set_tls(self, cert: str, key: str) -> None:
        """Serve TLS with `cert`/`key` ("" = plain HTTP). A renewed pair is loaded into the
        live context: handshakes from now on use it, open connections are untouched.
        Raises EndpointError (and changes nothing) if the pair cannot be loaded."""
        if not cert:
            self._context = None
            return
        check_tls(cert, key)  # a failed load into the live context could leave it half-set
        context = self._context
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            with self._tls_lock:
                context.load_cert_chain(cert, key)
        except (OSError, ValueError) as error:
            raise EndpointError(f"metrics.tls_cert/tls_key: cannot load: {error}") from None
        self._context = context

    def change_listen(self, listen: str) -> None:
        """A reload's `metrics.listen`. Socket-activated: ignored (the socket unit owns the
        address). Otherwise a new address is bound first, then the old socket is closed;
        "" stops serving. Raises OSError/ValueError (old socket kept) if it cannot bind."""
        if self._activated or (listen == self._listen and (self._sockets or self._retrying())):
            return
        new = [bind_listening(listen)] if listen else []
        with self._lock:
            old, self._sockets = self._sockets, new
            self._listen = listen
            self._bind_error = ""
            self._generation += 1
        for sock in old:
            sock.close()

    def _retrying(self) -> bool:
        return self._retry is not None and self._retry.is_alive()

    def _bind(self, listen: str) -> None:
        self._listen = listen
        if not listen:
            return
        try:
            sock = bind_listening(listen)
        except OSError as error:
            self._bind_failed(listen, error)
            self._retry = threading.Thread(
                target=self._retry_bind, args=(listen,), name="metrics-bind", daemon=True
            )
            self._retry.start()
            return
        with self._lock:
            self._sockets = [sock]
            self._bind_error = ""
            self._generation += 1

    def _bind_failed(self, listen: str, error: OSError) -> None:
        message = f"cannot listen on {listen}: {error.strerror or error}"
        first = False
        with self._lock:
            first = self._bind_error != message
            self._bind_error = message
        self._on_event("bind_failed")
        if first:
            self._log.error(
                "metrics endpoint not serving; backups go on, retrying",
                listen=listen,
                error=error.strerror or str(error),
                retry_s=self._bind_retry_seconds,
            )

    def _retry_bind(self, listen: str) -> None:
        while not self._stop.wait(self._bind_retry_seconds):
            if self._listen != listen:
                return  # a reload chose another address (bound there by change_listen)
            try:
                sock = bind_listening(listen)
            except OSError as error:
                self._bind_failed(listen, error)
                continue
            with self._lock:
                if self._listen != listen or self._sockets:
                    sock.close()
                    return
                self._sockets = [sock]
                self._bind_error = ""
                self._generation += 1
            self._log.info("metrics endpoint serving again", listen=listen)
            self._on_listening()
            return

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop accepting, give requests in flight `grace` seconds, cut the rest, close the
        sockets. Activated ones stay open in systemd: connections not yet accepted wait
        in its queue for the next daemon."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        # A connection just accepted has not sent its request yet: it gets the grace too.
        deadline = time.monotonic() + grace
        while self.connections() and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._lock:
            sockets, self._sockets = self._sockets, []
            for connection in self._connections:
                connection.cut()
        for sock in sockets:
            sock.close()

    # --- the accept thread -------------------------------------------------------------

    def _accept_loop(self) -> None:
        selector = selectors.DefaultSelector()
        generation = -1
        while not self._stop.is_set():
            try:
                with self._lock:
                    if generation != self._generation:
                        generation = self._generation
                        selector.close()
                        selector = selectors.DefaultSelector()
                        for sock in self._sockets:
                            sock.setblocking(False)
                            selector.register(sock, selectors.EVENT_READ)
                if not selector.get_map():
                    self._stop.wait(SELECT_SECONDS)
                else:
                    for key, _ in selector.select(SELECT_SECONDS):
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                self._enforce_deadlines()
            except Exception:
                # A bug, not a client's doing (those end in the handler): keep serving.
                self._log.exception("metrics endpoint: accept loop error")
                self._on_error("metrics_endpoint")
                self._stop.wait(0.1)
        selector.close()

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as error:
            if error.errno in RESOURCE_ERRNOS:
                self._log.warning("metrics endpoint: cannot accept", error=error.strerror)
                self._on_error("metrics_endpoint")
                self._stop.wait(0.1)
                return
            if error.errno == errno.EBADF:
                return  # closed by a reload between select() and accept()
            raise
        sock.setblocking(True)
        connection = _Connection(sock, sock.fileno(), time.monotonic() + self._deadline_seconds)
        with self._lock:
            live = [item for item in self._connections if not item.dropped]
            # Dropped ones close within moments; still, never hold more than twice the bound.
            full = len(live) >= self._max_connections
            victim = None
            if full and len(self._connections) < 2 * self._max_connections:
                # Drop the oldest connection that has not sent a request yet: a scrape
                # sends its request at once, a connection held open to take a slot never does.
                idle = [item for item in live if not item.requested]
                victim = min(idle, key=lambda item: item.deadline, default=None)
                if victim is not None:
                    victim.dropped = True
                    victim.cut()
            if not full or victim is not None:
                self._connections.append(connection)
        if full:
            self._on_event("rejected")
            if victim is None:
                sock.close()
                return
        try:
            threading.Thread(
                target=self._handle, args=(connection,), name="metrics-conn", daemon=True
            ).start()
        except RuntimeError:  # no thread to be had (resource limits): drop this one
            with self._lock:
                self._connections.remove(connection)
                sock.close()
            raise

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [item for item in self._connections if item.deadline <= now]
            for connection in late:
                connection.cut()

    # --- a connection's thread ---------------------------------------------------------

    def _handle(self, connection: _Connection) -> None:
        sock = connection.sock
        try:
            context = self._context
            if context is not None:
                sock.settimeout(_remaining(connection.deadline))
                with self._tls_lock:
                    sock = context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                connection.sock = sock
                sock.do_handshake()
            head = _read_request(sock, connection.deadline)
            connection.requested = True
            _send(sock, respond(head, lambda: generate_latest(self._registry)),
                  connection.deadline)  # fmt: skip
        except (OSError, ValueError):
            pass  # the client's doing (timeout, reset, bad TLS, junk): just close
        except Exception:
            self._log.exception("metrics endpoint: request error")
            self._on_error("metrics_endpoint")
        finally:
            with self._lock:  # see _Connection.cut
                self._connections.remove(connection)
                sock.close()
