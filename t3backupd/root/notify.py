"""sd_notify(3) for a Type=notify service, without libsystemd.

One datagram per message to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
socket). Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op, so the same code
runs in a terminal and in tests. Datagrams are sent by the `sdnotify` package; the
pure helpers (socket address, watchdog interval, STATUS text) are ours.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import sdnotify

from t3backupd.root.log import get_logger


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
    """Sends notify messages to the service manager; silent when there is none.

    Sending goes through `sdnotify.SystemdNotifier(debug=True)`, which connects to
    `$NOTIFY_SOCKET` once (systemd's socket does not move while we run) and raises on
    errors; this wrapper turns those into one warning, because losing a status update
    must never stop the service (systemd reports a missing READY/WATCHDOG itself).
    """

    def __init__(self, notifier: sdnotify.SystemdNotifier | None, address: str | None) -> None:
        self.address = address
        self._notifier = notifier
        self._warned = False

    @classmethod
    def from_environment(cls) -> Notifier:
        """A notifier for `$NOTIFY_SOCKET`, or a disabled one outside systemd."""
        address = socket_address(os.environ.get("NOTIFY_SOCKET"))
        if address is None:
            return cls(None, None)
        notifier = cls(None, address)
        try:
            notifier._notifier = sdnotify.SystemdNotifier(debug=True)
        except OSError as error:
            notifier._warn(error)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` lines as one datagram. True if sent (False when disabled or
        when sending failed: logged once, otherwise ignored)."""
        if self._notifier is None or not assignments:
            return False
        # sdnotify encodes Latin-1; a STATUS text may hold any character (a user name).
        payload = "\n".join(assignments).encode("latin-1", "replace").decode("latin-1")
        try:
            self._notifier.notify(payload)
        except OSError as error:
            self._warn(error)
            return False
        return True

    def _warn(self, error: OSError) -> None:
        if not self._warned:
            self._warned = True
            get_logger().warning(
                "sd_notify failed", socket=(self.address or "").replace("\0", "@"), error=str(error)
            )

    def close(self) -> None:
        if self._notifier is not None and self._notifier.socket is not None:
            self._notifier.socket.close()
        self._notifier = None
