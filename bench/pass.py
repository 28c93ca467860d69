"""The pass against the old script and `cp` + `sync` (issue 23): `make bench-pass`, or
`python bench/pass.py` as root (it creates a real user and removes it afterwards).

* throughput: `t3backupd snapshot --user U` (the real CLI; its worker runs as the user)
  against the old script's `sqlite3 SRC "VACUUM INTO 'DST'"` and against `cp SRC DST` +
  `sync DST`, at 20 MB, 100 MB and 1 GB, idle and with one CPU-burning loop beside it.
  Runs are interleaved (old, cp, pass, old, cp, pass, ...); the ratios are medians of the
  per-run ratios, so the machine's drift hits every command alike;
* writer: a 200 commits/s app writer (`python -m t3backupd_dev.sampledb write`, as the
  user) during a pass against idle, interleaved: p99 and worst commit, SQLITE_BUSY count;
* memory: the worker's and the CLI's peak anonymous memory (RssAnon, sampled from /proc
  every 5 ms; the source and the checks are file mappings, not counted);
* fixed cost: a bare interpreter, the CLI's start (`--version`), the worker's imports.

The load average is printed beside every table. Databases are generated once into
`--dbdir` (kept with `--reuse`, deleted otherwise). Prints Markdown; `--json` keeps the
raw numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import Timed
from pipeline import timed as run_timed
from run import Writer, bench_user, log, make_db, median, print_and_save, remove_db, warm

USER = "t3bench-pass"
SIZES_MIB = (20, 100, 1000)
PYTHON = [sys.executable, "-I"]


def timed(*commands: list[str]) -> Timed:
    """Run the commands one after another; their wall and CPU time together."""
    each = [run_timed(command) for command in commands]
    return Timed(sum(t.wall for t in each), sum(t.cpu for t in each), "")


def load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


@contextlib.contextmanager
def busy_core(on: bool) -> Iterator[None]:
    """One CPU-burning loop beside the runs (another process, as another tenant's job)."""
    if not on:
        yield
        return
    burner = subprocess.Popen([*PYTHON, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        burner.kill()
        burner.wait()


class Setup:
    """The user, their home with the database, the config, the output directories."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.home = work / "home"
        self.source = self.home / ".t3" / "userdata" / "state.sqlite"
        self.dest = work / "dest"
        self.out = work / "out"
        self.config = work / "config.toml"
        self.dest.mkdir(mode=0o755)
        self.out.mkdir(mode=0o700)
        self.writer_dir = work / "writer"  # the writer (as the user) writes its stats here
        self.writer_dir.mkdir(mode=0o700)
        shutil.chown(self.writer_dir, USER, USER)
        (work / "usermap").write_text(f"sso-bench={USER}\n")
        self.config.write_text(
            f'usermap = "{work / "usermap"}"\ndest = "{self.dest}"\n'
            'source = "{home}/.t3/userdata/state.sqlite"\nmin_uid = 1000\n'
            '[schedule]\ncron = "0 * * * *"\n[retention]\nkeep = 1\n[log]\nformat = "json"\n'
        )

    def use(self, database: Path) -> None:
        """Put a copy of `database` in the user's home, owned by them, in the page cache."""
        remove_db(self.source)
        self.source.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(database, self.source)
        subprocess.run(["chown", "-R", f"{USER}:{USER}", str(self.home)], check=True)
        warm(self.source)

    def snapshot(self) -> list[str]:
        return [*PYTHON, "-m", "t3backupd", "-c", str(self.config), "snapshot", "--user", USER]

    def old(self) -> list[str]:
        return ["sqlite3", str(self.source), f"VACUUM INTO '{self.out / 'old.sqlite'}'"]

    def cp_sync(self) -> list[list[str]]:
        target = str(self.out / "cp.sqlite")
        return [["cp", str(self.source), target], ["sync", target]]

    def clean_out(self) -> None:
        for entry in self.out.iterdir():
            entry.unlink()
        os.sync()  # no run pays for the previous run's writeback


def throughput(setup: Setup, runs: int, busy: bool) -> dict[str, Any]:
    """Interleaved runs of the three commands on the database in `setup`."""
    rows: list[dict[str, float]] = []
    with busy_core(busy):
        for _ in range(runs):
            row: dict[str, float] = {}
            for name, commands in (
                ("old", [setup.old()]),
                ("cp", setup.cp_sync()),
                ("pass", [setup.snapshot()]),
            ):
                setup.clean_out()
                result = timed(*commands)
                row[name], row[f"{name}_cpu"] = result.wall, result.cpu
            rows.append(row)
    return {
        "busy": busy,
        "load": load(),
        "runs": rows,
        "pass_s": median([r["pass"] for r in rows]),
        "old_s": median([r["old"] for r in rows]),
        "cp_s": median([r["cp"] for r in rows]),
        "pass_cpu_s": median([r["pass_cpu"] for r in rows]),
        "old_cpu_s": median([r["old_cpu"] for r in rows]),
        "pass_vs_old": median([r["pass"] / r["old"] for r in rows]),
        "pass_vs_cp": median([r["pass"] / r["cp"] for r in rows]),
    }


def _anon_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def peak_memory(setup: Setup) -> dict[str, float]:
    """One pass with its CLI and worker sampled every 5 ms: peak RssAnon of each, MiB."""
    setup.clean_out()
    cli = subprocess.Popen(setup.snapshot(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"cli": 0, "worker": 0}
    while cli.poll() is None:
        peaks["cli"] = max(peaks["cli"], _anon_kib(cli.pid))
        for child in _children(cli.pid):
            peaks["worker"] = max(peaks["worker"], _anon_kib(child))
        time.sleep(0.005)
    if cli.returncode != 0:
        raise RuntimeError(f"snapshot failed: {cli.stderr.read() if cli.stderr else ''}")
    return {name: kib / 1024 for name, kib in peaks.items()}


def writer_impact(setup: Setup, reps: int, rate: float, idle_s: float) -> dict[str, Any]:
    """The app writer's latency during a pass against idle, interleaved, per-rep ratios."""
    windows: list[dict[str, Any]] = []
    for rep in range(reps):
        for phase in ("idle", "pass"):
            setup.clean_out()
            writer = Writer(setup.source, setup.writer_dir, rate, user=USER)
            time.sleep(0.3)
            if phase == "idle":
                time.sleep(idle_s)
            else:
                timed(setup.snapshot())
            stats = writer.finish()
            latency = stats["latency_ms"]
            windows.append(
                {"rep": rep, "phase": phase, "p99_ms": latency["p99"], "max_ms": latency["max"],
                 "errors": stats["errors"], "commits": stats["commits"]}
            )  # fmt: skip
    idle = {w["rep"]: w for w in windows if w["phase"] == "idle"}
    during = [w for w in windows if w["phase"] == "pass"]
    return {
        "load": load(),
        "windows": windows,
        "idle_p99_ms": median([w["p99_ms"] for w in idle.values()]),
        "pass_p99_ms": median([w["p99_ms"] for w in during]),
        "p99_ratio": median([w["p99_ms"] / idle[w["rep"]]["p99_ms"] for w in during]),
        "idle_max_ms": max(w["max_ms"] for w in idle.values()),
        "pass_max_ms": max(w["max_ms"] for w in during),
        "errors": sum(w["errors"] for w in windows),
    }


def fixed_cost(runs: int) -> dict[str, float]:
    """Interpreter, CLI start and worker imports: what a pass pays before any byte moves."""
    commands = {
        "interpreter": [*PYTHON, "-c", "pass"],
        "cli_version": [*PYTHON, "-m", "t3backupd", "--version"],
        "worker_imports": [*PYTHON, "-c", "import t3backupd.worker.main"],
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            walls[name].append(timed(command).wall)
    return {name: median(values) for name, values in walls.items()}


def markdown(results: dict[str, Any]) -> str:
    lines = ["### The pass against the old command and `cp` + `sync` (medians of ratios)", ""]
    lines += [
        "| size | other core | pass s | old s | cp+sync s | pass / old | pass / cp+sync "
        "| pass CPU s | old CPU s | load avg 1/5/15 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, parts in results["throughput"].items():
        for row in parts:
            lines.append(
                f"| {size} MiB | {'busy' if row['busy'] else 'idle'} | {row['pass_s']:.2f} "
                f"| {row['old_s']:.2f} | {row['cp_s']:.2f} | **{row['pass_vs_old']:.2f}x** "
                f"| {row['pass_vs_cp']:.2f}x | {row['pass_cpu_s']:.2f} | {row['old_cpu_s']:.2f} "
                f"| {row['load']} |"
            )
    if "writer" in results:
        w = results["writer"]
        lines += [
            "",
            f"### App writer ({w['rate']:.0f} commits/s) during a {w['size']} MiB pass",
            "",
            "| idle p99 ms | pass p99 ms | p99 / idle | idle max ms | pass max ms "
            "| SQLITE_BUSY | load avg 1/5/15 |",
            "|---|---|---|---|---|---|---|",
            f"| {w['idle_p99_ms']:.1f} | {w['pass_p99_ms']:.1f} | **{w['p99_ratio']:.2f}x** "
            f"| {w['idle_max_ms']:.1f} | {w['pass_max_ms']:.1f} | {w['errors']} | {w['load']} |",
        ]
    lines += ["", "### Peak anonymous memory (RssAnon) of one pass", ""]
    lines += ["| size | worker MiB | CLI MiB | load avg 1/5/15 |", "|---|---|---|---|"]
    for size, memory in results["memory"].items():
        lines.append(
            f"| {size} MiB | {memory['worker']:.1f} | {memory['cli']:.1f} | {memory['load']} |"
        )
    fixed = results["fixed_cost"]
    lines += [
        "",
        "### Fixed cost (medians)",
        "",
        "| bare interpreter s | CLI start (`--version`) s | worker imports s | load avg |",
        "|---|---|---|---|",
        f"| {fixed['interpreter']:.3f} | {fixed['cli_version']:.3f} "
        f"| {fixed['worker_imports']:.3f} | {fixed['load']} |",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES_MIB)),
                        type=lambda text: [int(part) for part in text.split(",")])  # fmt: skip
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--writer-reps", type=int, default=5)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--no-busy", action="store_true", help="skip the busy-core runs")
    parser.add_argument("--no-writer", action="store_true")
    parser.add_argument("--dbdir", type=Path, default=Path("/var/tmp/t3bench-pass-dbs"))
    parser.add_argument("--reuse", action="store_true", help="keep/reuse generated databases")
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    results: dict[str, Any] = {"throughput": {}, "memory": {}}
    results["fixed_cost"] = fixed_cost(args.runs) | {"load": load()}
    for size in args.sizes:
        database = args.dbdir / f"pass-{size}.sqlite"
        make_db(database, size, seed=1, reuse=args.reuse)
        setup.use(database)
        log(f"{size} MiB: memory")
        results["memory"][size] = peak_memory(setup) | {"load": load()}
        parts = []
        for busy in (False,) if args.no_busy else (False, True):
            log(f"{size} MiB: throughput, other core {'busy' if busy else 'idle'}")
            parts.append(throughput(setup, args.runs, busy))
        results["throughput"][size] = parts
    if not args.no_writer:
        size = max(args.sizes)
        setup.use(args.dbdir / f"pass-{size}.sqlite")
        log(f"{size} MiB: writer at {args.rate:.0f}/s, idle vs during a pass")
        impact = writer_impact(setup, args.writer_reps, args.rate, idle_s=2.5)
        results["writer"] = impact | {"size": size, "rate": args.rate}
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/pass.py: needs root (it creates a real user)", file=sys.stderr)
        return 2
    args.dbdir.mkdir(parents=True, exist_ok=True)
    try:
        with bench_user(USER, "t3bench-pass-") as work:
            results = measure(args, Setup(work))
    finally:
        if not args.reuse:
            shutil.rmtree(args.dbdir, ignore_errors=True)
    return print_and_save(markdown(results), results, args.json)


if __name__ == "__main__":
    sys.exit(main())
