"""The shared destination: its free space (root's own statvfs of the root-owned `<dest>`,
never a user path) and each user's directory usage (measured by their own worker, in
its report, capped), so a full destination names who filled it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

LARGEST_NAMED = 3


def destination_space(dest: str) -> tuple[int, int] | None:
    """(free bytes for unprivileged writers, total bytes) of the file system holding
    `<dest>`, through a descriptor opened O_NOFOLLOW; None if it cannot be opened."""
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstatvfs(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


class DirSizes:
    """The last directory usage each user's worker reported. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}

    def record(self, user: str, size: int) -> None:
        if size > 0:
            with self._lock:
                self._sizes[user] = size

    def largest(self, count: int = LARGEST_NAMED) -> list[tuple[str, int]]:
        with self._lock:
            items = list(self._sizes.items())
        return sorted(items, key=lambda item: (-item[1], item[0]))[:count]

    def describe_largest(self, count: int = LARGEST_NAMED) -> str:
        """'alice 12.0 GiB, bob 1.0 GiB' (the largest first), or '' if none known."""
        return ", ".join(f"{user} {human(size)}" for user, size in self.largest(count))


# One process, one destination's worth of knowledge (the CLI and the daemon alike).
DIR_SIZES = DirSizes()


class DestinationCollector(Collector):
    """`t3backup_destination_free_bytes` and `_size_bytes`, measured at each scrape."""

    def __init__(self, registry: CollectorRegistry, dest: Callable[[], str]) -> None:
        self._dest = dest
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(destination_space(self._dest()))

    @staticmethod
    def _families(space: tuple[int, int] | None) -> list[Metric]:
        free = GaugeMetricFamily(
            "t3backup_destination_free_bytes",
            "Bytes free for new snapshots on the destination's file system.",
        )
        size = GaugeMetricFamily(
            "t3backup_destination_size_bytes", "Size of the destination's file system."
        )
        if space is not None:
            free.add_metric([], float(space[0]))
            size.add_metric([], float(space[1]))
        return [free, size]
