"""t3backupd benchmarks: `make bench` (or `python bench/run.py [--quick]`).

Four parts, each against the same realistic T3 database (t3backupd_dev.sampledb):

* throughput: our worker (both methods, copy stage alone and the whole pipeline with
  fsync, verification and checksum) vs the old script's `sqlite3 SRC "VACUUM INTO 'DST'"`
  vs `sqlite3 SRC ".backup DST"` vs `cp` + fsync, medians of N interleaved runs;
* impact: a live writer (fixed rate and as fast as it can) with no snapshot, during our
  snapshot and during the old command: commit latency, errors, WAL growth, and whether
  `.backup` ever finishes under load;
* fleet: one pass over many users (the real `run_pass`), concurrency 1 vs 2;
* daemon: idle RSS/CPU, /metrics scrape latency, exec -> READY=1, reload time.

Prints Markdown tables on stdout and writes every raw number to `--json`. Not run by
`make test`; `--quick` uses small sizes for a smoke run of a couple of minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t3backupd.core.config import Config, SnapshotConfig
from t3backupd.core.protocol import Report, SnapshotSpec
from t3backupd.core.retention import RetentionPolicy
from t3backupd.core.usermap import User
from t3backupd.root.log import configure_logging
from t3backupd.root.passes import run_pass
from t3backupd.root.spawn import run_worker
from t3backupd.worker import files as ops
from t3backupd_dev import sampledb

MIB = 1 << 20
MB = 1_000_000
DB_SUFFIXES = ("", "-journal", "-wal", "-shm")


@dataclass(frozen=True)
class Sizes:
    """What one mode measures."""

    db_mib: int
    runs: int
    impact_reps: int
    idle_seconds: float
    backup_cap_seconds: float
    fleet_users: int
    fleet_mib: int
    daemon_users: int
    daemon_idle_seconds: float


FULL = Sizes(
    db_mib=1000,
    runs=5,
    impact_reps=3,
    idle_seconds=4.0,
    backup_cap_seconds=60.0,
    fleet_users=200,
    fleet_mib=20,
    daemon_users=1000,
    daemon_idle_seconds=60.0,
)
QUICK = Sizes(
    db_mib=100,
    runs=5,
    impact_reps=2,
    idle_seconds=1.5,
    backup_cap_seconds=15.0,
    fleet_users=20,
    fleet_mib=5,
    daemon_users=100,
    daemon_idle_seconds=10.0,
)


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def remove_db(path: str | Path) -> None:
    for suffix in DB_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def settle() -> None:
    """Flush everything dirty so one run's writeback never lands in the next one's time."""
    os.sync()


def warm(path: str | Path) -> None:
    """Read a file once so it is in the page cache (every run is a warm-cache run)."""
    with open(path, "rb") as handle:
        while handle.read(8 * MIB):
            pass


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def machine() -> dict[str, Any]:
    """The machine's description for RESULTS.md and the JSON."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / (1 << 30), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite_library": sqlite3.sqlite_version,
        "sqlite_cli": _cli_version(),
        "uid": os.geteuid(),
    }


def _cli_version() -> str:
    try:
        output = subprocess.run(
            ["sqlite3", "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "missing"
    return output.split()[0]


def make_db(path: Path, mib: int, seed: int, reuse: bool) -> int:
    """A T3-shaped database of about `mib` MiB at `path` (reused if asked and present)."""
    meta = path.with_name(path.name + ".meta")
    wanted = {"mib": mib, "seed": seed, "sqlite": sqlite3.sqlite_version}
    if reuse and path.exists() and meta.exists() and json.loads(meta.read_text()) == wanted:
        log(f"reusing {path}")
    else:
        remove_db(path)
        log(f"generating {path} ({mib} MiB)")
        stats = sampledb.populate(path, mib * MIB, seed=seed)
        log(f"generated {stats.bytes / MIB:.0f} MiB in {stats.seconds:.1f} s")
        meta.write_text(json.dumps(wanted))
    return path.stat().st_size


def current_user(name: str, home: str) -> User:
    """A user record for this process's own uid (no uid switch needed or done)."""
    return User(name=name, uid=os.geteuid(), gid=os.getegid(), home=home)


def worker_spec(source: Path, dest_dir: Path, method: str, timeout: float) -> SnapshotSpec:
    return SnapshotSpec(
        user="bench",
        dest_dir=str(dest_dir),
        source=str(source),
        method=method,  # type: ignore[arg-type]  # bench passes the two valid names
        verify="quick",
        timeout_seconds=timeout,
        keep=1,
    )


def run_our_worker(source: Path, dest_dir: Path, method: str, timeout: float = 900.0) -> Report:
    """One snapshot through the real worker subprocess (as the daemon runs it)."""
    dest_dir.mkdir(mode=0o700, exist_ok=True)
    user = current_user("bench", str(dest_dir))
    return run_worker(worker_spec(source, dest_dir, method, timeout), user, timeout + 10)


@contextlib.contextmanager
def bench_user(name: str, prefix: str) -> Iterator[Path]:
    """A real user `name` (useradd; root only) whose home is `<work>/home`, in a fresh
    0755 work directory under /var/tmp (a worker, as the user, reaches files through it).
    Yields the work directory; the user and the directory are removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    work.chmod(0o755)
    try:
        subprocess.run(
            ["useradd", "--create-home", "--home-dir", str(work / "home"), "--shell",
             "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )  # fmt: skip
        yield work
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def print_and_save(text: str, results: dict[str, Any], path: Path | None) -> int:
    """Print the Markdown tables, keep the raw numbers in `path` (if given); exit 0."""
    print(text)
    if path is not None:
        path.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def clear_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


# --------------------------------------------------------------------------- throughput


def copy_cp(source: Path, target: Path) -> None:
    subprocess.run(["cp", str(source), str(target)], check=True)
    ops.fsync_path(str(target))


def copy_old(source: Path, target: Path) -> None:
    subprocess.run(["sqlite3", str(source), f"VACUUM INTO '{target}'"], check=True)


def copy_cli_backup(source: Path, target: Path, cap: float) -> bool:
    """`.backup` under a time cap. Returns whether it finished."""
    try:
        subprocess.run(
            ["sqlite3", str(source), f".backup '{target}'"],
            check=True,
            timeout=cap,
            stdout=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False
    return True


def our_copy_stage(method: str) -> Callable[[Path, Path], None]:
    def copy(source: Path, target: Path) -> None:
        target.touch(mode=0o600)
        ops.copy_database(str(source), str(target), method, 60.0, [])

    return copy


def our_pipeline(method: str, out: Path) -> Callable[[Path, Path], None]:
    def snapshot(source: Path, target: Path) -> None:
        report = run_our_worker(source, out, method)
        if not report.ok:
            raise RuntimeError(f"worker failed: {report.reason}: {report.message}")

    return snapshot


def bench_throughput(source: Path, work: Path, sizes: Sizes) -> dict[str, Any]:
    size = source.stat().st_size
    out = work / "out"
    clear_dir(out)
    cap = sizes.backup_cap_seconds
    methods: list[tuple[str, str, Callable[[Path, Path], None]]] = [
        ("cp", "`cp` + fsync (physical limit)", copy_cp),
        ("old", 'old command `sqlite3 SRC "VACUUM INTO"` (no fsync, no verify)', copy_old),
        ("cli_backup", f'`sqlite3 SRC ".backup DST"` (cap {cap:.0f} s)', lambda s, t: None),
        ("ours_backup_copy", "ours, backup API: copy stage", our_copy_stage("backup")),
        ("ours_vacuum_copy", "ours, VACUUM INTO: copy stage", our_copy_stage("vacuum")),
        ("ours_backup_pipeline", "ours, backup API: whole worker", our_pipeline("backup", out)),
        ("ours_vacuum_pipeline", "ours, VACUUM INTO: whole worker", our_pipeline("vacuum", out)),
    ]
    times: dict[str, list[float]] = {key: [] for key, _, _ in methods}
    finished_backup = 0
    warm(source)
    for run in range(sizes.runs):
        log(f"throughput run {run + 1}/{sizes.runs}")
        for key, _, action in methods:
            target = out / f"{key}.sqlite"
            settle()
            started = time.perf_counter()
            if key == "cli_backup":
                finished_backup += copy_cli_backup(source, target, cap)
            else:
                action(source, target)
            times[key].append(time.perf_counter() - started)
            remove_db(target)
            for entry in out.iterdir():
                if entry.name.startswith("state-") or entry.name.startswith(".t3backup"):
                    entry.unlink()
    old = median(times["old"])
    rows = []
    for key, label, _ in methods:
        seconds = median(times[key])
        rows.append(
            {
                "key": key,
                "label": label,
                "median_s": seconds,
                "runs_s": [round(value, 3) for value in times[key]],
                "mb_per_s": size / MB / seconds,
                "speedup_vs_old": old / seconds,
            }
        )
    shutil.rmtree(out, ignore_errors=True)
    return {
        "source_bytes": size,
        "runs": sizes.runs,
        "rows": rows,
        "cli_backup_finished": finished_backup,
    }


# --------------------------------------------------------------------------- impact


class Writer:
    """The live app: `python -m t3backupd_dev.sampledb write` in its own process."""

    def __init__(
        self, source: Path, work: Path, rate: float | None, user: str | None = None
    ) -> None:
        self.stats = work / "writer.json"
        self.ready = work / "writer.ready"
        self.stop = work / "writer.stop"
        for path in (self.stats, self.ready, self.stop):
            path.unlink(missing_ok=True)
        command = [sys.executable, "-I", "-m", "t3backupd_dev.sampledb", "write", str(source)]
        command += ["--stats", str(self.stats), "--ready-file", str(self.ready)]
        command += ["--stop-file", str(self.stop)]
        if rate is not None:
            command += ["--rate", str(rate)]
        # As the database's owner when given (as the app runs): files SQLite creates
        # beside the database (-wal, -shm) must be that user's, not root's.
        self.process = subprocess.Popen(
            command, cwd="/", stdout=subprocess.DEVNULL, user=user, group=user
        )
        deadline = time.monotonic() + 30
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("writer did not start")
            time.sleep(0.01)

    def finish(self) -> dict[str, Any]:
        self.stop.touch()
        self.process.wait(timeout=30)
        result: dict[str, Any] = json.loads(self.stats.read_text())
        return result


class WalWatcher:
    """Polls the size of SRC-wal every 20 ms while it runs."""

    def __init__(self, source: Path) -> None:
        self.path = Path(f"{source}-wal")
        self.start_bytes = self._size()
        self.peak_bytes = self.start_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_bytes = max(self.peak_bytes, self._size())

    def finish(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes - self.start_bytes


def impact_window(
    source: Path, work: Path, rate: float | None, phase: str, sizes: Sizes, check: bool
) -> dict[str, Any]:
    """Run the writer around one phase ("idle", "ours", "old", "cli_backup")."""
    out = work / "impact-out"
    clear_dir(out)
    settle()
    writer = Writer(source, work, rate)
    time.sleep(0.3)
    wal = WalWatcher(source)
    started = time.perf_counter()
    outcome: dict[str, Any] = {"phase": phase, "rate": rate}
    snapshot_path: Path | None = None
    if phase == "idle":
        time.sleep(sizes.idle_seconds)
    elif phase == "ours":
        report = run_our_worker(source, out, "backup")
        outcome["ok"] = report.ok
        if report.snapshot is not None:
            snapshot_path = out / report.snapshot.name
    elif phase == "old":
        snapshot_path = out / "old.sqlite"
        copy_old(source, snapshot_path)
        outcome["ok"] = True
    else:
        outcome["ok"] = copy_cli_backup(source, out / "cli.sqlite", sizes.backup_cap_seconds)
    outcome["snapshot_s"] = time.perf_counter() - started
    outcome["wal_growth_bytes"] = wal.finish()
    outcome["wal_start_bytes"] = wal.start_bytes
    stats = writer.finish()
    outcome.update(
        commits=stats["commits"],
        errors=stats["errors"],
        error_messages=stats["error_messages"],
        p50_ms=stats["latency_ms"]["p50"],
        p99_ms=stats["latency_ms"]["p99"],
        max_ms=stats["latency_ms"]["max"],
        commits_per_s=stats["commits_per_s"],
    )
    if check and snapshot_path is not None:
        try:
            outcome["consistent_last_sequence"] = sampledb.check_consistent_prefix(
                snapshot_path, integrity=False
            )
        except (AssertionError, ValueError, sqlite3.Error) as error:
            outcome["consistent_last_sequence"] = None
            outcome["consistency_error"] = str(error)
    shutil.rmtree(out, ignore_errors=True)
    return outcome


def bench_impact(original: Path, work: Path, sizes: Sizes) -> dict[str, Any]:
    # The writer appends: work on a copy, so the throughput file (--reuse) keeps its size.
    source = work / "impact.sqlite"
    remove_db(source)
    shutil.copyfile(original, source)
    try:
        return _impact(source, work, sizes)
    finally:
        remove_db(source)


def _impact(source: Path, work: Path, sizes: Sizes) -> dict[str, Any]:
    warm(source)
    results: dict[str, Any] = {"windows": []}
    for rate in (200.0, None):
        label = f"{rate:.0f}/s" if rate else "max"
        for rep in range(sizes.impact_reps):
            for phase in ("idle", "ours", "old"):
                log(f"impact writer {label} rep {rep + 1}/{sizes.impact_reps}: {phase}")
                window = impact_window(source, work, rate, phase, sizes, check=rep == 0)
                results["windows"].append(window)
    log(f"impact: `.backup` under a 200/s writer (cap {sizes.backup_cap_seconds:.0f} s)")
    results["cli_backup_under_load"] = impact_window(
        source, work, 200.0, "cli_backup", sizes, check=False
    )
    summary = {}
    for rate in (200.0, None):
        for phase in ("idle", "ours", "old"):
            windows = [w for w in results["windows"] if w["rate"] == rate and w["phase"] == phase]
            summary[f"{rate or 'max'}:{phase}"] = {
                key: median([float(w[key]) for w in windows if w[key] is not None])
                for key in ("p50_ms", "p99_ms", "max_ms", "wal_growth_bytes", "snapshot_s")
            } | {
                "errors": sum(w["errors"] for w in windows),
                "worst_max_ms": max(float(w["max_ms"] or 0) for w in windows),
                "commits_per_s": median([float(w["commits_per_s"]) for w in windows]),
            }
    results["summary"] = summary
    return results


# --------------------------------------------------------------------------- fleet


def bench_fleet(work: Path, sizes: Sizes, reuse: bool) -> dict[str, Any]:
    """`run_pass` over N users of M MiB each, concurrency 1 then 2.

    The users are records for this process's own uid with their own home and backup
    directories (a usermap names each OS user once, so 200 "users" of one uid cannot
    come from a usermap): everything from `run_pass` down (prepare_user_dir, the worker
    subprocess, its report) is the real path; only the passwd lookup is skipped.
    """
    fleet = work / "fleet"
    template = work / f"fleet-template-{sizes.fleet_mib}.sqlite"
    make_db(template, sizes.fleet_mib, seed=7, reuse=reuse)
    homes = fleet / "home"
    users = []
    log(f"fleet: {sizes.fleet_users} users x {sizes.fleet_mib} MiB")
    for index in range(sizes.fleet_users):
        name = f"t3bench{index:03d}"
        home = homes / name
        userdata = home / ".t3" / "userdata"
        userdata.mkdir(parents=True, exist_ok=True)
        database = userdata / "state.sqlite"
        if not database.exists():
            shutil.copyfile(template, database)
        users.append(current_user(name, str(home)))
        warm(database)
    results: dict[str, Any] = {"users": sizes.fleet_users, "mib_each": sizes.fleet_mib}
    for concurrency in (1, 2):
        dest = fleet / f"dest-{concurrency}"
        shutil.rmtree(dest, ignore_errors=True)
        config = Config(
            dest=str(dest),
            source="{home}/.t3/userdata/state.sqlite",
            snapshot=SnapshotConfig(method="backup", verify="quick", concurrency=concurrency),
            retention=RetentionPolicy(keep=2),
        )
        settle()
        log(f"fleet pass, concurrency {concurrency}")
        started = time.perf_counter()
        outcome = run_pass(config, users)
        wall = time.perf_counter() - started
        failures = [r for r in outcome if not r.report.ok]
        overheads = [r.duration_s - r.report.duration_s for r in outcome if r.report.ok]
        results[f"concurrency_{concurrency}"] = {
            "wall_s": wall,
            "failures": len(failures),
            "failure_reasons": sorted({str(r.report.reason) for r in failures}),
            "per_user_s": median([r.duration_s for r in outcome]),
            "worker_s": median([r.report.duration_s for r in outcome if r.report.ok]),
            "spawn_overhead_s": median(overheads),
        }
        shutil.rmtree(dest, ignore_errors=True)
    results["speedup"] = results["concurrency_1"]["wall_s"] / results["concurrency_2"]["wall_s"]
    shutil.rmtree(fleet, ignore_errors=True)
    return results


# --------------------------------------------------------------------------- daemon


def daemon_available() -> bool:
    return importlib.util.find_spec("t3backupd.root.daemon") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NotifyListener:
    """A NOTIFY_SOCKET that records when each message arrived."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.perf_counter(), data.decode("utf-8", "replace")))

    def wait_for(
        self, field: str, after: float, timeout: float, process: subprocess.Popen[bytes]
    ) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            for when, text in list(self.messages):
                if when >= after and field in text.split("\n"):
                    return when
            time.sleep(0.005)
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _process_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_daemon(work: Path, sizes: Sizes) -> dict[str, Any]:
    """Footprint of `t3backupd run` with N users in the usermap (as this uid: the users
    are real passwd entries only when run as root, see fleet_users())."""
    if not daemon_available():
        return {"measured": False, "why": "t3backupd.root.daemon is not there yet"}
    directory = Path(tempfile.mkdtemp(prefix="daemon-", dir=work))
    users = _daemon_users(sizes.daemon_users, directory / "home")
    try:
        return _measure_daemon(directory, users, sizes)
    finally:
        _remove_daemon_users(users)
        shutil.rmtree(directory, ignore_errors=True)


DAEMON_USER_PREFIX = "t3bd"
READY_TIMEOUT_SECONDS = 600


def _daemon_users(count: int, homes: Path) -> list[str]:
    """As root: `count` real users (useradd, removed afterwards), so every usermap line
    resolves. Otherwise: the usermap names only this user (the rest cannot be served)."""
    if os.geteuid() != 0:
        return []
    names = [f"{DAEMON_USER_PREFIX}{index:04d}" for index in range(count)]
    log(f"daemon: creating {count} users (newusers)")
    homes.mkdir(mode=0o755, exist_ok=True)
    lines = "".join(
        f"{name}:{secrets.token_hex(16)}::::{homes / name}:/usr/sbin/nologin\n" for name in names
    )
    subprocess.run(["newusers"], input=lines.encode(), check=True, capture_output=True)
    return names


def _remove_daemon_users(names: list[str]) -> None:
    if names:
        log(f"daemon: removing {len(names)} users")
    for name in names:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def _measure_daemon(directory: Path, users: list[str], sizes: Sizes) -> dict[str, Any]:
    usermap = directory / "usermap"
    if users:
        usermap.write_text("".join(f"sso{index}={name}\n" for index, name in enumerate(users)))
    else:
        me = os.environ.get("USER") or str(os.geteuid())
        usermap.write_text(f"sso={me}\n")
    port = _free_port()
    config = directory / "config.toml"
    config.write_text(
        f'usermap = "{usermap}"\n'
        f'dest = "{directory / "dest"}"\n'
        f'source = "{directory}/src/{{user}}.sqlite"\n'
        "[schedule]\n"
        'cron = "0 0 1 1 *"\n'
        "catch_up = false\n"
        "[metrics]\n"
        f'listen = "127.0.0.1:{port}"\n'
        "[log]\n"
        'format = "json"\n'
        'level = "warning"\n'
    )
    notify = NotifyListener(directory)
    environment = dict(os.environ, NOTIFY_SOCKET=notify.path)
    command = [sys.executable, "-m", "t3backupd", "-c", str(config), "run"]
    if os.geteuid() != 0:
        command.append("--unprivileged")  # as this uid: only its own usermap entry
    results: dict[str, Any] = {"measured": True, "usermap_users": max(len(users), 1)}
    exec_at = time.perf_counter()
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        ready_at = notify.wait_for("READY=1", exec_at, READY_TIMEOUT_SECONDS, process)
        results["exec_to_ready_s"] = None if ready_at is None else ready_at - exec_at
        if ready_at is None:
            results["error"] = (
                f"no READY=1 within {READY_TIMEOUT_SECONDS} s (exit status {process.poll()})"
            )
            return results
        url = f"http://127.0.0.1:{port}/metrics"
        scrapes = []
        body = b""
        for _ in range(21):
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read()
            scrapes.append(time.perf_counter() - started)
        results["scrape_ms"] = median(scrapes[1:]) * 1000
        results["scrape_bytes"] = len(body)
        results["metrics_users"] = body.count(b"t3backup_last_success_timestamp_seconds{")
        time.sleep(2)
        cpu_before = _process_cpu_seconds(process.pid)
        rss = []
        idle_started = time.perf_counter()
        while time.perf_counter() - idle_started < sizes.daemon_idle_seconds:
            rss.append(_process_rss_bytes(process.pid))
            time.sleep(1)
        idle = time.perf_counter() - idle_started
        results["idle_seconds"] = idle
        results["idle_rss_mib"] = max(rss) / MIB
        results["idle_cpu_percent"] = (_process_cpu_seconds(process.pid) - cpu_before) / idle * 100
        reloads = []
        for _ in range(3):
            sent = time.perf_counter()
            process.send_signal(1)  # SIGHUP
            done = notify.wait_for("READY=1", sent, READY_TIMEOUT_SECONDS, process)
            if done is not None:
                reloads.append(done - sent)
            time.sleep(0.5)
        results["reload_s"] = median(reloads) if reloads else None
        return results
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        notify.close()


# --------------------------------------------------------------------------- report


@dataclass
class Check:
    target: str
    measured: str
    met: bool | None


def checks(results: dict[str, Any]) -> list[Check]:
    found: list[Check] = []
    if "throughput" in results:
        rows = {row["key"]: row for row in results["throughput"]["rows"]}
        old = rows["old"]["median_s"]
        for method in ("backup", "vacuum"):
            copy = rows[f"ours_{method}_copy"]
            found.append(
                Check(
                    f"copy stage ({method}) >= 1.3x the old command",
                    f"{copy['speedup_vs_old']:.2f}x",
                    copy["speedup_vs_old"] >= 1.3,
                )
            )
            whole = rows[f"ours_{method}_pipeline"]
            found.append(
                Check(
                    f"whole worker ({method}) <= old bare copy",
                    f"{whole['median_s']:.2f} s vs {old:.2f} s "
                    f"({whole['median_s'] / old:.2f}x the time)",
                    whole["median_s"] <= old,
                )
            )
    if "impact" in results:
        summary = results["impact"]["summary"]
        for rate in ("200.0", "max"):
            idle, ours, old = (summary[f"{rate}:{phase}"] for phase in ("idle", "ours", "old"))
            name = "200/s" if rate == "200.0" else "max rate"
            found.append(
                Check(
                    f"writer {name}: worst stall ours <= 0.5x old",
                    f"{ours['max_ms']:.0f} ms vs {old['max_ms']:.0f} ms "
                    f"({ours['max_ms'] / old['max_ms']:.2f}x)",
                    ours["max_ms"] <= 0.5 * old["max_ms"],
                )
            )
            found.append(
                Check(
                    f"writer {name}: p99 ours <= 1.5x idle",
                    f"{ours['p99_ms']:.1f} ms vs {idle['p99_ms']:.1f} ms "
                    f"({ours['p99_ms'] / idle['p99_ms']:.2f}x)",
                    ours["p99_ms"] <= 1.5 * idle["p99_ms"],
                )
            )
            found.append(
                Check(
                    f"writer {name}: zero errors",
                    f"{ours['errors']} during ours, {old['errors']} during old",
                    ours["errors"] == 0,
                )
            )
            found.append(
                Check(
                    f"writer {name}: WAL growth ours <= old",
                    f"{ours['wal_growth_bytes'] / MIB:.1f} MiB vs "
                    f"{old['wal_growth_bytes'] / MIB:.1f} MiB",
                    ours["wal_growth_bytes"] <= old["wal_growth_bytes"],
                )
            )
    if "fleet" in results:
        fleet = results["fleet"]
        found.append(
            Check(
                "fleet: concurrency 2 >= 1.6x concurrency 1",
                f"{fleet['speedup']:.2f}x",
                fleet["speedup"] >= 1.6,
            )
        )
    if "daemon" in results:
        daemon = results["daemon"]
        if daemon.get("measured") and "idle_rss_mib" in daemon:
            found.append(
                Check(
                    "daemon idle RSS <= 60 MB",
                    f"{daemon['idle_rss_mib']:.1f} MiB",
                    daemon["idle_rss_mib"] * MIB <= 60 * MB,
                )
            )
            found.append(
                Check(
                    f"scrape <= 50 ms at {daemon['usermap_users']} users",
                    f"{daemon['scrape_ms']:.1f} ms",
                    daemon["scrape_ms"] <= 50,
                )
            )
        else:
            found.append(Check("daemon idle RSS / scrape", "not measured", None))
    return found


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    info = results["machine"]
    lines.append(
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"Linux {info['kernel']}, Python {info['python']}, SQLite {info['sqlite_library']} "
        f"(CLI {info['sqlite_cli']}); mode {results['mode']}."
    )
    if "throughput" in results:
        throughput = results["throughput"]
        lines += [
            "",
            f"### Snapshot throughput ({throughput['source_bytes'] / MIB:.0f} MiB database, "
            f"warm cache, median of {throughput['runs']})",
            "",
            "| method | median s | MB/s | speed vs old command |",
            "|---|---:|---:|---:|",
        ]
        for row in throughput["rows"]:
            lines.append(
                f"| {row['label']} | {fmt(row['median_s'])} | {fmt(row['mb_per_s'], 0)} "
                f"| {fmt(row['speedup_vs_old'])}x |"
            )
    if "impact" in results:
        impact = results["impact"]
        lines += [
            "",
            "### Live writer during a snapshot (medians over repetitions)",
            "",
            "| writer | phase | commits/s | p50 ms | p99 ms | max ms (worst) | errors "
            "| WAL growth MiB | snapshot s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        names = {"idle": "no snapshot", "ours": "our worker", "old": "old command"}
        for key, row in impact["summary"].items():
            rate, phase = key.split(":")
            writer = "200/s" if rate == "200.0" else "max"
            lines.append(
                f"| {writer} | {names[phase]} | {fmt(row['commits_per_s'], 0)} "
                f"| {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} "
                f"| {fmt(row['max_ms'], 0)} ({fmt(row['worst_max_ms'], 0)}) | {row['errors']} "
                f"| {fmt(row['wal_growth_bytes'] / MIB, 1)} "
                f"| {fmt(row['snapshot_s']) if phase != 'idle' else '-'} |"
            )
        backup = impact["cli_backup_under_load"]
        verdict = "finished" if backup["ok"] else "did NOT finish"
        lines.append("")
        lines.append(
            f"`sqlite3 .backup` under a 200/s writer: {verdict} in "
            f"{backup['snapshot_s']:.1f} s (cap {results['sizes']['backup_cap_seconds']:.0f} s)."
        )
    if "fleet" in results:
        fleet = results["fleet"]
        lines += [
            "",
            f"### Fleet pass ({fleet['users']} users x {fleet['mib_each']} MiB, real run_pass)",
            "",
            "| concurrency | wall s | per user s | in worker s | spawn overhead s | failures |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for concurrency in (1, 2):
            row = fleet[f"concurrency_{concurrency}"]
            lines.append(
                f"| {concurrency} | {fmt(row['wall_s'])} | {fmt(row['per_user_s'], 3)} "
                f"| {fmt(row['worker_s'], 3)} | {fmt(row['spawn_overhead_s'], 3)} "
                f"| {row['failures']} |"
            )
    if "daemon" in results:
        daemon = results["daemon"]
        lines += ["", "### Daemon footprint", ""]
        if daemon.get("measured") and "idle_rss_mib" in daemon:
            lines += [
                "| users | exec->READY=1 s | idle RSS MiB | idle CPU % | scrape ms "
                "| scrape bytes | reload s |",
                "|---:|---:|---:|---:|---:|---:|---:|",
                f"| {daemon['usermap_users']} | {fmt(daemon['exec_to_ready_s'])} "
                f"| {fmt(daemon['idle_rss_mib'], 1)} | {fmt(daemon['idle_cpu_percent'])} "
                f"| {fmt(daemon['scrape_ms'], 1)} | {daemon['scrape_bytes']} "
                f"| {fmt(daemon['reload_s'])} |",
            ]
        else:
            lines.append(f"Not measured: {daemon.get('why') or daemon.get('error')}.")
    lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for check in checks(results):
        met = "n/a" if check.met is None else ("yes" if check.met else "**no**")
        lines.append(f"| {check.target} | {check.measured} | {met} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


PARTS = ("throughput", "impact", "fleet", "daemon")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--json", default="bench/results.json", help="write raw results here")
    parser.add_argument("--workdir", default="/var/tmp/t3bench", help="scratch (deleted)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--runs", type=int, default=None, help="throughput runs (median)")
    parser.add_argument("--reuse", action="store_true", help="reuse generated DBs, keep them")
    return parser.parse_args(argv)


@contextlib.contextmanager
def workdir(path: Path, keep: bool) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # run_pass logs one event per user: keep stdout for the tables.
    configure_logging("json", "warning", stream=sys.stderr)
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs})
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "sizes": sizes.__dict__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with workdir(Path(args.workdir), keep=args.reuse) as work:
        source = work / f"source-{sizes.db_mib}.sqlite"
        if {"throughput", "impact"} & set(args.only):
            make_db(source, sizes.db_mib, seed=1, reuse=args.reuse)
        if "throughput" in args.only:
            results["throughput"] = bench_throughput(source, work, sizes)
        if "impact" in args.only:
            results["impact"] = bench_impact(source, work, sizes)
        if "fleet" in args.only:
            results["fleet"] = bench_fleet(work, sizes, args.reuse)
        if "daemon" in args.only:
            results["daemon"] = bench_daemon(work, sizes)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
