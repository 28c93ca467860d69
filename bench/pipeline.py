"""Offsite copies through t3backupd's own pipeline, per engine (issues 13 and 14).

`python bench/pipeline.py [--size-mb N] [--days D] [--engines restic,borg] [--json FILE]`
(`make bench-pipeline`; as root: it creates a real user, removed afterwards). Not run by
`make test`.

Unlike bench/history.py (the engines driven directly, with simulated dates), every step
here is the real CLI, as an operator runs it: `t3backupd snapshot` (worker as the user),
`t3backupd offsite sync` (the worker streams, the daemon side pumps into the engine),
`t3backupd restore --to` and `restore --from offsite --to`. One database, grown by
`--growth` a day through the app's own small transactions; each simulated day every
engine gets its own snapshot and upload of the same file (so the engines are compared
in one run). Local retention is the documented hourly setup (`keep = 2`); offsite keeps
everything (keep_last = days + 1).

Reported per engine, as ratios measured in this run:
* repository bytes after the last day / one database;
* bytes added per day (median of days 2..D: the repository's growth on disk; restic
  0.14's `data_added`, which t3backup_offsite_bytes_added_total exports, counts bytes
  before compression, and is kept in the JSON as `reported_added`) / the daily growth;
* upload time per snapshot (median of days 2..D) / the local snapshot time (median);
* restore of the newest and the oldest copy from offsite / a local `restore --to` of the
  newest snapshot (median of --reps);
* an hourly pass (snapshot + upload of one user) in CPU seconds (this process's waited
  children: CLI, worker, engine) as % of one core over an hour;
* a live writer's p99 commit latency (200 commits/s) during that pass / idle.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from history import database_bytes, grow, tree_bytes
from run import Writer, bench_user, make_db, print_and_save

MIB = 1 << 20
USER = "t3bench-pipeline"
WRITER_RATE = 200.0


def log(message: str) -> None:
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)


@dataclass
class Timed:
    wall: float
    cpu: float  # user + system seconds of the command and everything it waited for
    stdout: str


def timed(command: list[str]) -> Timed:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    wall = time.monotonic() - clock
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[3:])}: {(result.stderr or result.stdout)[-400:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu, result.stdout)


@dataclass
class Engine:
    """One engine's config, repository and figures."""

    name: str
    root: Path
    config: Path = field(init=False)
    snapshot_s: list[float] = field(default_factory=list)
    upload_s: list[float] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    reported_added: list[int] = field(default_factory=list)
    pass_cpu: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config = self.root / "config.toml"

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-I", "-m", "t3backupd", "-c", str(self.config), *args]


def write_config(engine: Engine, keep_offsite: int) -> None:
    engine.root.mkdir(mode=0o755)  # the worker (as the user) reaches dest through it
    (engine.root / "dest").mkdir(mode=0o755)
    password = engine.root / "password"
    password.write_text(secrets.token_hex(16) + "\n")
    password.chmod(0o600)
    (engine.root / "usermap").write_text(f"sso-bench={USER}\n")
    engine.config.write_text(
        f'usermap = "{engine.root / "usermap"}"\ndest = "{engine.root / "dest"}"\n'
        'source = "{home}/.t3/userdata/state.sqlite"\nmin_uid = 1000\n'
        '[schedule]\ncron = "0 * * * *"\n[retention]\nkeep = 2\n[log]\nformat = "json"\n'
        f'[offsite]\nengine = "{engine.name}"\nrepository = "{engine.repository}"\n'
        f'password_file = "{password}"\ncache_dir = "{engine.root / "cache"}"\n'
        f"keep_last = {keep_offsite}\nkeep_hourly = 0\nkeep_daily = 0\nkeep_weekly = 0\n"
        "keep_monthly = 0\n"
    )


def added_bytes(sync_output: str) -> int:
    match = re.search(r"\((\d+) bytes added\)", sync_output)
    if match is None:
        raise RuntimeError(f"no 'bytes added' in: {sync_output.strip()}")
    return int(match.group(1))


def one_pass(engine: Engine) -> tuple[Timed, Timed]:
    snapshot = timed(engine.cli("snapshot", "--user", USER))
    time.sleep(1.05)  # snapshot names have whole seconds
    sync = timed(engine.cli("offsite", "sync", "--user", USER))
    return snapshot, sync


def restore_seconds(engine: Engine, home: Path, *args: str) -> float:
    target = home / "restored.sqlite"
    target.unlink(missing_ok=True)
    result = timed(engine.cli("restore", "--user", USER, *args, "--to", str(target)))
    target.unlink()
    return result.wall


def offsite_names(engine: Engine) -> list[str]:
    listing = json.loads(timed(engine.cli("list", "--offsite", "--json")).stdout)
    (user,) = listing["users"]
    return [copy["name"] for copy in user["snapshots"]]  # newest first


def writer_p99(source: Path, work: Path, during: Engine | None) -> tuple[float, float]:
    """p99 commit latency (ms) of a 200/s writer over one pass of `during` (or idle for
    as long), and the pass's wall seconds."""
    writer = Writer(source, work, WRITER_RATE, user=USER)
    clock = time.monotonic()
    if during is None:
        time.sleep(20)
    else:
        one_pass(during)
    seconds = time.monotonic() - clock
    stats = writer.finish()
    return float(stats["latency_ms"]["p99"]), seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(args: argparse.Namespace, work: Path, home: Path) -> dict[str, Any]:
    source = home / ".t3" / "userdata" / "state.sqlite"
    source.parent.mkdir(parents=True)
    make_db(source, args.size_mb, seed=7, reuse=False)
    source.with_name(source.name + ".meta").unlink()
    for directory in (home / ".t3", source.parent):
        shutil.chown(directory, USER, USER)
    engines = [Engine(name, work / name) for name in args.engines]
    for engine in engines:
        write_config(engine, keep_offsite=args.days + 1)
        timed(engine.cli("offsite", "init"))
    sizes = [database_bytes(source)]
    for day in range(args.days):
        if day:
            grow(source, int(sizes[-1] * (1 + args.growth)), seed=100 + day)
            sizes.append(database_bytes(source))
        shutil.chown(source, USER, USER)
        for engine in engines:
            snapshot, sync = one_pass(engine)
            engine.snapshot_s.append(snapshot.wall)
            engine.upload_s.append(sync.wall)
            engine.reported_added.append(added_bytes(sync.stdout))
            engine.added.append(tree_bytes(engine.repository) - sum(engine.added))
            engine.pass_cpu.append(snapshot.cpu + sync.cpu)
            log(
                f"day {day + 1}/{args.days} {engine.name}: snapshot {snapshot.wall:.1f} s, "
                f"upload {sync.wall:.1f} s, added {engine.added[-1] / MIB:.1f} MiB, "
                f"CPU {snapshot.cpu + sync.cpu:.1f} s"
            )
    growth = [after - before for before, after in itertools.pairwise(sizes)]
    results: dict[str, Any] = {
        "database_bytes": sizes[-1],
        "first_database_bytes": sizes[0],
        "daily_growth_bytes_median": median([float(g) for g in growth]) if growth else 0,
        "engines": {},
    }
    writer_work = work / "writer"
    writer_work.mkdir(mode=0o700)
    shutil.chown(writer_work, USER, USER)
    idle_p99 = [writer_p99(source, writer_work, None)[0] for _ in range(args.reps)]
    for engine in engines:
        names = offsite_names(engine)
        local = [restore_seconds(engine, home) for _ in range(args.reps)]
        newest = [
            restore_seconds(engine, home, "--from", "offsite", "--snapshot", names[0])
            for _ in range(args.reps)
        ]
        oldest = [
            restore_seconds(engine, home, "--from", "offsite", "--snapshot", names[-1])
            for _ in range(args.reps)
        ]
        busy = [writer_p99(source, writer_work, engine) for _ in range(args.reps)]
        later = slice(1, None) if len(engine.added) > 1 else slice(None)
        results["engines"][engine.name] = {
            "repository_bytes": tree_bytes(engine.repository),
            "copies": len(names),
            "added_bytes": engine.added,
            "reported_added_bytes": engine.reported_added,
            "snapshot_s": engine.snapshot_s,
            "upload_s": engine.upload_s,
            "pass_cpu_s": engine.pass_cpu,
            "first_upload_s": engine.upload_s[0],
            "upload_s_median": median(engine.upload_s[later]),
            "snapshot_s_median": median(engine.snapshot_s),
            "added_median": median([float(a) for a in engine.added[later]]),
            "restore_local_s": median(local),
            "restore_newest_s": median(newest),
            "restore_oldest_s": median(oldest),
            "pass_cpu_s_median": median(engine.pass_cpu[later]),
            "writer_idle_p99_ms": median(idle_p99),
            "writer_pass_p99_ms": median([p99 for p99, _ in busy]),
        }
    return results


def table(results: dict[str, Any]) -> str:
    db = results["database_bytes"]
    growth = results["daily_growth_bytes_median"] or float("nan")
    lines = [
        f"Database {results['first_database_bytes'] / MIB:.0f} MiB grown to {db / MIB:.0f} MiB"
        f" (median daily growth {growth / MIB:.1f} MiB).",
        "",
        "| engine | repo / DB | added per day / growth | upload / local snapshot "
        "| first upload / local snapshot | restore newest / local | restore oldest / local "
        "| hourly pass CPU (% of a core) | writer p99 pass / idle |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["engines"].items():
        local = row["restore_local_s"]
        lines.append(
            f"| {name} | {row['repository_bytes'] / db:.2f}x | {row['added_median'] / growth:.2f}x"
            f" | {row['upload_s_median'] / row['snapshot_s_median']:.2f}x"
            f" | {row['first_upload_s'] / row['snapshot_s_median']:.2f}x"
            f" | {row['restore_newest_s'] / local:.2f}x | {row['restore_oldest_s'] / local:.2f}x"
            f" | {100 * row['pass_cpu_s_median'] / 3600:.2f} % ({row['pass_cpu_s_median']:.1f} s)"
            f" | {row['writer_pass_p99_ms'] / row['writer_idle_p99_ms']:.2f}x"
            f" ({row['writer_pass_p99_ms']:.1f} / {row['writer_idle_p99_ms']:.1f} ms) |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--growth", type=float, default=0.02)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--engines", default="restic,borg", type=lambda t: t.split(","))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/pipeline.py: needs root (it creates a real user)", file=sys.stderr)
        return 2
    with bench_user(USER, "t3bench-pipeline-") as work:
        results = measure(args, work, work / "home")
    return print_and_save(table(results), results, args.json)


if __name__ == "__main__":
    sys.exit(main())
