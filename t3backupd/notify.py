"""sd_notify(3) for a Type=notify service, without libsystemd.

One datagram per message to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
socket). Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op, so the same code
runs in a terminal and in tests. Written by hand rather than with the `sdnotify`
package, which swallows every error and binds its socket once at construction.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from t3backupd.log import get_logger


def socket_address(value: str | None) -> str | None:
    """The address to send to, from `$NOTIFY_SOCKET`; None when unset or unusable.

    `@name` is an abstract socket (leading NUL); anything else must be an absolute path.
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between keep-alive pings (half of `$WATCHDOG_USEC`), or None.

    None when no watchdog is configured, the value is malformed, or `$WATCHDOG_PID`
    names another process (the watchdog is then meant for someone else).
    """
    text = environ.get("WATCHDOG_USEC", "")
    if not text.isdigit() or int(text) == 0:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(pid):
        return None
    return int(text) / 1_000_000 / 2


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` expects."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def status_line(text: str) -> str:
    """A `STATUS=` assignment; newlines would end the field, so they become spaces."""
    return "STATUS=" + " ".join(text.split())


class Notifier:
    """Sends notify messages to the service manager; silent when there is none."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(socket_address(environ.get("NOTIFY_SOCKET")))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` lines as one datagram. True if sent (False when disabled).

        A failure is logged once and otherwise ignored: losing a status update must
        never stop the service (systemd reports a missing READY/WATCHDOG itself).
        """
        if self.address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(payload, self.address)
        except OSError as error:
            if not self._warned:
                self._warned = True
                get_logger().warning(
                    "sd_notify failed", socket=self.address.replace("\0", "@"), error=str(error)
                )
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
