"""The offsite lane's pump against real processes and pipes: a stream longer than the
recorded size stops at once, a stream that never ends stops at its deadline, bytes are
counted and hashed exactly."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time

import pytest

from t3backupd.root.offsite.pump import Stalled, pump


def _reader(command: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    return process, process.stdout.fileno()


def test_a_stream_beyond_the_recorded_size_stops_there() -> None:
    process, fd = _reader(["yes"])  # never stops on its own
    try:
        started = time.monotonic()
        result = pump(fd, None, 1 << 20, time.monotonic() + 30)
        assert result.over_limit
        assert result.total <= (1 << 20) + (1 << 20)  # one chunk past the limit at most
        assert time.monotonic() - started < 10
    finally:
        process.kill()
        process.wait()


def test_a_stream_that_never_ends_stops_at_its_deadline() -> None:
    process, fd = _reader(["sleep", "60"])
    try:
        started = time.monotonic()
        with pytest.raises(Stalled):
            pump(fd, None, 1 << 20, time.monotonic() + 1.0)
        assert 0.9 <= time.monotonic() - started < 5
    finally:
        process.kill()
        process.wait()


def test_bytes_are_counted_hashed_and_copied_exactly() -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    process = subprocess.Popen(
        ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdin is not None and process.stdout is not None
    read_end, write_end = os.pipe()
    sink = subprocess.Popen(["sha256sum"], stdin=read_end, stdout=subprocess.PIPE, text=True)
    os.close(read_end)
    stdin = process.stdin

    def feed() -> None:
        stdin.write(data)
        stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        result = pump(process.stdout.fileno(), write_end, len(data), time.monotonic() + 30)
    finally:
        os.close(write_end)
        feeder.join(30)
        process.wait()
    out, _ = sink.communicate(timeout=30)
    expected = hashlib.sha256(data).hexdigest()
    assert (result.total, result.over_limit, result.digest.hexdigest()) == (
        len(data),
        False,
        expected,
    )
    assert out.split()[0] == expected


def test_a_stream_that_goes_silent_stops_at_its_stall_not_its_deadline() -> None:
    process, fd = _reader(["sh", "-c", "echo started; exec sleep 120"])
    deadline = time.monotonic() + 60
    try:
        with pytest.raises(Stalled):
            pump(fd, None, 1 << 20, deadline, stall=1.0)
        assert time.monotonic() < deadline  # the silence ended it, not the deadline
    finally:
        process.kill()
        process.wait()
