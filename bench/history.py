"""Offsite history: how much a repository grows over days of snapshots, per engine.

`python bench/history.py [--size-mb N] [--days D] [--hourly-days H] [--json FILE]`
(`make bench-history`). Not run by `make test`.

A T3-shaped database (sampledb) grows by `--growth` (default 2 %) a day through the live
writer (the app's own small transactions, checkpointed as the app does). Every simulated
day (or hour) one snapshot is taken with the real snapshot code (`backup` keeps page
positions; `vacuum` re-packs every page) and stored:

* plain copies, and each copy `zstd -3` (what a directory of snapshots costs);
* restic 0.14, repository v2, `--compression auto`, snapshot streamed on stdin;
* borg 1.2, `repokey-blake2`, `zstd,3`, default chunker (buzhash, ~2 MiB chunks);
* borg 1.2 with `--chunker-params fixed,PAGE_SIZE` (the page size read from the file).

Reported per store: bytes after the last day relative to one database, bytes added per
snapshot, wall time and CPU per snapshot, the engine's peak RSS, and the restore time of
the newest and the oldest snapshot relative to a local copy of the same file (read +
write + fsync, what `restore --to` does). The hourly run keeps 48 hourly / 14 daily /
8 weekly (restic `forget --prune`, borg `prune` + `compact` once a simulated day).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from t3backupd.worker import files as ops
from t3backupd_dev import sampledb

MIB = 1 << 20
PASSWORD = "bench-only-password"  # noqa: S105  # a throwaway repository made by this run
GFS = {"hourly": 48, "daily": 14, "weekly": 8}
START = datetime(2026, 11, 1, 3, 30, tzinfo=UTC)


@dataclass
class Run:
    """One subprocess: wall seconds, CPU seconds (user+sys) and peak RSS (KiB)."""

    wall: float
    cpu: float
    rss_kib: int


def run(command: Sequence[str], env: dict[str, str], stdin: Path | None = None,
        stdout: Path | None = None) -> Run:  # fmt: skip
    """Run `command` to completion (check=True) and measure it with wait4."""
    clock = time.monotonic()
    with (
        open(stdin, "rb") if stdin else open(os.devnull, "rb") as source,
        open(stdout, "wb") if stdout else open(os.devnull, "wb") as sink,
    ):
        process = subprocess.Popen(
            command, stdin=source, stdout=sink, stderr=subprocess.PIPE, env=env
        )
        assert process.stderr is not None
        errors = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({process.returncode}): {errors[-500:]!r}")
    return Run(time.monotonic() - clock, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def tree_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def page_size(path: Path) -> int:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(connection.execute("PRAGMA page_size").fetchone()[0])
    finally:
        connection.close()


def database_bytes(path: Path) -> int:
    return sum(
        os.stat(f"{path}{suffix}").st_size
        for suffix in ("", "-wal")
        if os.path.exists(f"{path}{suffix}")
    )


def checkpoint(path: Path) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        connection.close()


def grow(path: Path, target_bytes: int, seed: int) -> None:
    """Append app-like commits until the checkpointed database file reaches
    `target_bytes`, as the app's autocheckpoint would leave it. Small steps for small
    deltas (an hour's growth is a few dozen commits), bigger ones for a day's."""
    checkpoint(path)
    while (size := path.stat().st_size) < target_bytes:
        missing = target_bytes - size
        rate, duration = (None, 0.3) if missing > 4 * MIB else (40.0, 0.05)
        sampledb.run_writer(path, rate=rate, duration=duration, seed=seed, stats_interval=60.0)
        seed += 1
        checkpoint(path)


def snapshot(source: Path, directory: Path, method: str) -> Path:
    """One snapshot with the real copy code, renamed to a stable name."""
    temp = ops.create_temp(str(directory))
    ops.copy_database(str(source), temp, method, 600.0, [])
    final = directory / f"snapshot-{method}.sqlite"
    os.replace(temp, final)
    return final


def local_restore_seconds(path: Path, scratch: Path) -> float:
    """A local `restore --to`'s I/O: read the file, write a new one, fsync."""
    target = scratch / "local-restore.sqlite"
    clock = time.monotonic()
    shutil.copyfile(path, target)
    ops.fsync_path(str(target))
    seconds = time.monotonic() - clock
    target.unlink()
    return seconds


class Store:
    """A place snapshots go; subclasses say how."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root / self.name.replace(" ", "-").replace(",", "")
        self.runs: list[Run] = []
        self.added: list[int] = []
        self.restores: dict[str, float] = {}

    def setup(self) -> None:
        self.root.mkdir(parents=True)

    def size(self) -> int:
        return tree_bytes(self.root)

    def put(self, path: Path, when: datetime, index: int) -> None:
        before = self.size()
        self.runs.append(self.store(path, when, index))
        self.added.append(self.size() - before)

    def store(self, path: Path, when: datetime, index: int) -> Run:
        raise NotImplementedError

    def thin(self, now: datetime) -> None:
        """Apply the GFS policy (hourly run only)."""

    def restore(self, which: str, index: int, target: Path) -> float:
        raise NotImplementedError


class PlainCopies(Store):
    name = "plain copies"

    def store(self, path: Path, when: datetime, index: int) -> Run:
        clock = time.monotonic()
        shutil.copyfile(path, self.root / f"{index:04d}.sqlite")
        return Run(time.monotonic() - clock, 0.0, 0)


class ZstdCopies(Store):
    name = "each copy zstd -3"

    def store(self, path: Path, when: datetime, index: int) -> Run:
        out = self.root / f"{index:04d}.sqlite.zst"
        return run(["zstd", "-3", "-q", "-T1", "-c"], dict(os.environ), path, out)


class Restic(Store):
    name = "restic v2, compression auto"

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root.parent),
            "RESTIC_REPOSITORY": str(self.root / "repo"),
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_CACHE_DIR": str(self.root.parent / "restic-cache" / self.root.name),
        }

    def setup(self) -> None:
        super().setup()
        run(["restic", "init", "--repository-version", "2"], self.env())

    def size(self) -> int:
        return tree_bytes(self.root / "repo")

    def store(self, path: Path, when: datetime, index: int) -> Run:
        return run(
            ["restic", "backup", "--stdin", "--stdin-filename", "state.sqlite", "--host",
             "bench", "--tag", f"n{index}", "--compression", "auto", "--quiet", "--time",
             when.strftime("%Y-%m-%d %H:%M:%S")],
            self.env(), stdin=path,
        )  # fmt: skip

    def thin(self, now: datetime) -> None:
        run(["restic", "forget", "--prune", "--quiet", "--keep-hourly", str(GFS["hourly"]),
             "--keep-daily", str(GFS["daily"]), "--keep-weekly", str(GFS["weekly"])],
            self.env())  # fmt: skip

    def restore(self, which: str, index: int, target: Path) -> float:
        listing = subprocess.run(
            ["restic", "snapshots", "--json", "--host", "bench"],
            env=self.env(), capture_output=True, check=True,
        )  # fmt: skip
        snapshots = sorted(json.loads(listing.stdout), key=lambda item: item["time"])
        chosen = snapshots[-1] if which == "newest" else snapshots[0]
        return run(["restic", "dump", chosen["short_id"], "state.sqlite"], self.env(),
                   stdout=target).wall  # fmt: skip


class Borg(Store):
    def __init__(self, root: Path, chunker: str | None) -> None:
        self.chunker = chunker
        self.name = f"borg zstd3, {chunker or 'default chunker'}"
        super().__init__(root)

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root.parent),
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(self.root.parent / "borg-base" / self.root.name),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        }

    def repo(self) -> str:
        return str(self.root / "repo")

    def setup(self) -> None:
        super().setup()
        run(["borg", "init", "--encryption", "repokey-blake2", self.repo()], self.env())

    def size(self) -> int:
        return tree_bytes(self.root / "repo")

    def store(self, path: Path, when: datetime, index: int) -> Run:
        chunker = ["--chunker-params", self.chunker] if self.chunker else []
        return run(
            ["borg", "create", "--compression", "zstd,3", *chunker, "--stdin-name",
             "state.sqlite", "--timestamp", when.strftime("%Y-%m-%dT%H:%M:%S"),
             f"{self.repo()}::n{index:04d}", "-"],
            self.env(), stdin=path,
        )  # fmt: skip

    def thin(self, now: datetime) -> None:
        run(["borg", "prune", "--keep-hourly", str(GFS["hourly"]), "--keep-daily",
             str(GFS["daily"]), "--keep-weekly", str(GFS["weekly"]), self.repo()],
            self.env())  # fmt: skip
        run(["borg", "compact", self.repo()], self.env())

    def restore(self, which: str, index: int, target: Path) -> float:
        listing = subprocess.run(
            ["borg", "list", "--short", self.repo()], env=self.env(), capture_output=True,
            check=True, text=True,
        )  # fmt: skip
        names = sorted(listing.stdout.split())
        chosen = names[-1] if which == "newest" else names[0]
        return run(["borg", "extract", "--stdout", f"{self.repo()}::{chosen}"], self.env(),
                   stdout=target).wall  # fmt: skip


def make_stores(root: Path, page: int, engines: Sequence[str]) -> list[Store]:
    """`borg-fixed` chunks one page; `borg-fixedN`, N pages (still page-aligned)."""
    every: dict[str, Callable[[], Store]] = {
        "plain": lambda: PlainCopies(root),
        "zstd": lambda: ZstdCopies(root),
        "restic": lambda: Restic(root),
        "borg": lambda: Borg(root, None),
    }
    stores: list[Store] = []
    for name in engines:
        if name.startswith("borg-fixed"):
            pages = int(name.removeprefix("borg-fixed") or 1)
            stores.append(Borg(root, f"fixed,{page * pages}"))
        else:
            stores.append(every[name]())
    return stores


@dataclass
class Result:
    scenario: str
    method: str
    store: str
    snapshots: int
    db_bytes: int
    repo_bytes: int
    added_median: float
    wall_median: float
    cpu_median: float
    rss_peak_kib: int
    local_snapshot_s: float
    restore_newest_ratio: float | None = None
    restore_oldest_ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.repo_bytes / self.db_bytes


def scenario(work: Path, method: str, size_mb: int, days: int, per_day: int,
             growth: float, engines: Sequence[str], seed: int) -> list[Result]:  # fmt: skip
    """One database grown for `days`, `per_day` snapshots a day, into every store."""
    source = work / "live" / "state.sqlite"
    source.parent.mkdir(parents=True)
    sampledb.populate(source, size_mb * MIB, seed=seed)
    checkpoint(source)  # WAL mode as the app has it, checkpointed
    snaps = work / "snaps"
    snaps.mkdir()
    first = snapshot(source, snaps, method)
    stores = make_stores(work / "stores", page_size(first), engines)
    for store in stores:
        store.setup()
    count = days * per_day
    local_times: list[float] = []
    for index in range(count):
        when = START + timedelta(hours=24 * index / per_day)
        if index:
            target = int(source.stat().st_size * (1 + growth) ** (1 / per_day))
            grow(source, target, seed + 1000 * index)
        clock = time.monotonic()
        path = snapshot(source, snaps, method)
        local_times.append(time.monotonic() - clock)
        for store in stores:
            store.put(path, when, index)
            if per_day > 1 and (index + 1) % per_day == 0:
                store.thin(when)
        print(f"  {method} {index + 1}/{count} db={database_bytes(source) / MIB:.1f}MiB "
              + " ".join(f"{s.name}={s.size() / MIB:.1f}" for s in stores),
              file=sys.stderr, flush=True)  # fmt: skip
    newest = snapshot(source, snaps, method)
    db_bytes = newest.stat().st_size
    local = statistics.median(local_restore_seconds(newest, work) for _ in range(3))
    results = []
    for store in stores:
        newest_ratio = oldest_ratio = None
        if isinstance(store, Restic | Borg):
            target = work / "restored.sqlite"
            newest_ratio = store.restore("newest", count - 1, target) / local
            oldest_ratio = store.restore("oldest", 0, target) / local
            target.unlink()
        runs = store.runs[1:] or store.runs  # the first is a full upload, not a delta
        results.append(Result(
            scenario=f"{days} d x {per_day}/d", method=method, store=store.name,
            snapshots=count, db_bytes=db_bytes, repo_bytes=store.size(),
            added_median=statistics.median(store.added[1:] or store.added),
            wall_median=statistics.median(run.wall for run in runs),
            cpu_median=statistics.median(run.cpu for run in runs),
            rss_peak_kib=max(run.rss_kib for run in store.runs),
            local_snapshot_s=statistics.median(local_times),
            restore_newest_ratio=newest_ratio, restore_oldest_ratio=oldest_ratio,
        ))  # fmt: skip
    return results


def table(results: Sequence[Result]) -> str:
    lines = [
        "| scenario | method | store | repo / DB | added per snapshot | s per snapshot "
        "| CPU s per snapshot | peak RSS MiB | restore newest / local | restore oldest / local |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        restore_new = "" if r.restore_newest_ratio is None else f"{r.restore_newest_ratio:.1f}x"
        restore_old = "" if r.restore_oldest_ratio is None else f"{r.restore_oldest_ratio:.1f}x"
        lines.append(
            f"| {r.scenario} | {r.method} | {r.store} | **{r.ratio:.2f}x** | "
            f"{r.added_median / MIB:.2f} MiB | {r.wall_median:.2f} | {r.cpu_median:.2f} | "
            f"{r.rss_peak_kib / 1024:.0f} | {restore_new} | {restore_old} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/history.py", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=256, help="database size (MiB)")
    parser.add_argument("--days", type=int, default=14, help="simulated days, daily run")
    parser.add_argument("--hourly-days", type=int, default=0,
                        help="simulated days of hourly snapshots (0: skip)")  # fmt: skip
    parser.add_argument("--hourly-size-mb", type=int, default=64)
    parser.add_argument("--growth", type=float, default=0.02, help="daily growth fraction")
    parser.add_argument("--methods", default="backup,vacuum", help="daily runs ('' = none)")
    parser.add_argument("--engines", default="plain,zstd,restic,borg,borg-fixed")
    parser.add_argument("--hourly-engines", default="restic,borg-fixed")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    for tool in ("restic", "borg", "zstd"):
        if shutil.which(tool) is None:
            print(f"bench/history.py: {tool} not found (make bench-history installs it)",
                  file=sys.stderr)  # fmt: skip
            return 2
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="t3b-history-", dir="/var/tmp") as scratch:
        for number, method in enumerate(m for m in args.methods.split(",") if m):
            work = Path(scratch) / f"daily-{method}"
            results += scenario(work, method, args.size_mb, args.days, 1, args.growth,
                                args.engines.split(","), seed=11 + number)  # fmt: skip
            shutil.rmtree(work)
            save(results, args.json)
        if args.hourly_days:
            work = Path(scratch) / "hourly-backup"
            results += scenario(work, "backup", args.hourly_size_mb, args.hourly_days, 24,
                                args.growth, args.hourly_engines.split(","), seed=31)  # fmt: skip
            save(results, args.json)
    print(table(results))
    return 0


def save(results: Sequence[Result], path: Path | None) -> None:
    """Every number so far (a long run keeps what it measured if it is stopped)."""
    if path is not None:
        rows = [{**result.__dict__, "ratio": result.ratio} for result in results]
        path.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
