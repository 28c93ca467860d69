"""Bytes moved between descriptors with deadlines, for every offsite stream.

A user's worker sets the pace of its end of a pipe, so root never blocks on it: both
ends are non-blocking, every wait has a deadline (and, with `stall`, a no-progress
limit), and the bytes are counted (more than the size recorded stops the copy) and
hashed as they pass, so what was moved is judged without reading it again. Used for
uploads (worker -> spool -> engine), restores (engine -> worker) and the drill
(engine -> nowhere); an upload's stream starts with the worker's header line
(`read_header`), read under the same rules.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import time
from dataclasses import dataclass, field

from t3backupd.root.offsite.engine import OffsiteError

CHUNK_BYTES = 1 << 20
MAX_HEADER_BYTES = 1024


class Stalled(Exception):
    """No byte moved before the deadline (or for the `stall` seconds allowed)."""


def _wait(fd: int, writable: bool, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Stalled()
    readers, writers, _ = select.select(
        [] if writable else [fd], [fd] if writable else [], [], min(left, 1.0)
    )
    if not readers and not writers and time.monotonic() >= deadline:
        raise Stalled()


def _write_all(fd: int, data: memoryview, deadline: float) -> None:
    while data:
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            _wait(fd, True, deadline)
            continue
        data = data[written:]


def _read_some(fd: int, deadline: float) -> bytes:
    while True:
        try:
            return os.read(fd, CHUNK_BYTES)
        except BlockingIOError:
            _wait(fd, False, deadline)


@dataclass
class Pumped:
    total: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    over_limit: bool = False


def pump(
    source: int,
    sink: int | None,
    limit: int,
    deadline: float,
    first: bytes = b"",
    stall: float | None = None,
) -> Pumped:
    """Copy `source` to `sink` (None: only count and hash) until EOF, hashing and
    counting; stop as soon as more than `limit` bytes came (`over_limit`). Both
    descriptors are made non-blocking. Raises Stalled past `deadline`, and (with
    `stall`) when no byte came for `stall` seconds."""
    os.set_blocking(source, False)
    if sink is not None:
        os.set_blocking(sink, False)
    result = Pumped()
    chunk = first
    while True:
        if chunk:
            result.total += len(chunk)
            if result.total > limit:
                result.over_limit = True
                return result
            result.digest.update(chunk)
            if sink is not None:
                _write_all(sink, memoryview(chunk), deadline)
        silence_ends = deadline if stall is None else min(deadline, time.monotonic() + stall)
        chunk = _read_some(source, silence_ends)
        if not chunk:
            return result


def read_header(fd: int, deadline: float) -> tuple[dict[str, object], bytes]:
    """The worker's header line and whatever data bytes came with it."""
    os.set_blocking(fd, False)
    buffer = b""
    while b"\n" not in buffer:
        chunk = _read_some(fd, deadline)
        if not chunk:
            raise OffsiteError("worker", "the worker ended its stream before the header")
        buffer += chunk
        if len(buffer) > MAX_HEADER_BYTES and b"\n" not in buffer[:MAX_HEADER_BYTES]:
            raise OffsiteError("worker", "the worker's stream header is too long")
    line, _, rest = buffer.partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError:
        raise OffsiteError("worker", "the worker's stream header is not JSON") from None
    if not isinstance(header, dict):
        raise OffsiteError("worker", "the worker's stream header is not an object")
    return header, rest
