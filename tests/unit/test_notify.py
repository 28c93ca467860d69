"""sd_notify: real datagrams to a real socket (path and abstract), no-op outside systemd."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from t3backupd.root.notify import (
    Notifier,
    socket_address,
    status_line,
    watchdog_interval,
)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    server.bind(str(path))
    server.settimeout(2)
    yield server, str(path)
    server.close()


def test_messages_arrive_as_one_datagram_of_lines(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier.from_environment()
    assert notifier.send("READY=1", "STATUS=serving 3 users")
    assert server.recv(4096) == b"READY=1\nSTATUS=serving 3 users"
    notifier.close()


def test_abstract_socket_names_start_with_at(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"t3backupd-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_environment()
        assert notifier.send("WATCHDOG=1")
        assert server.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_environment()
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_a_vanished_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notifier = Notifier.from_environment()
    assert notifier.enabled
    assert notifier.send("READY=1") is False
    assert notifier.send("READY=1") is False


def test_a_socket_that_goes_away_after_start_does_not_raise(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier.from_environment()
    assert notifier.send("READY=1")
    server.close()
    Path(path).unlink()
    assert notifier.send("WATCHDOG=1") is False


def test_non_latin1_status_text_is_sent_not_dropped(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier.from_environment()
    assert notifier.send("STATUS=user \u00e9\u4e2d")
    assert server.recv(4096) == b"STATUS=user \xe9?"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("relative/path", None), ("/run/notify", "/run/notify"),
     ("@abstract", "\0abstract")],
)  # fmt: skip
def test_socket_address(value: str | None, expected: str | None) -> None:
    assert socket_address(value) == expected


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}, 42) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, 42) == 1.0


@pytest.mark.parametrize(
    "environ",
    [{}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "abc"}, {"WATCHDOG_USEC": "-5"},
     {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}],
)  # fmt: skip
def test_no_watchdog_when_unset_malformed_or_meant_for_another_pid(
    environ: dict[str, str],
) -> None:
    assert watchdog_interval(environ, 42) is None


def test_status_line_never_spans_lines() -> None:
    assert status_line("reload refused:\nline 2\n") == "STATUS=reload refused: line 2"
