"""Start-up of `t3backupd run` with many users holding snapshots: exec -> READY=1, and
exec -> every user's snapshots listed (STATUS without "listing snapshots"), medians of
several runs, against a baseline interpreter (a venv with the previous version) in the
same run, interleaved so both see the same machine load.

As root (real users: `newusers`, removed afterwards; each gets `<dest>/<user>` with
`--snapshots` snapshot files and checksums, owned by them, as the daemon leaves them):

    python bench/startup.py --users 1000 --snapshots 14 --runs 3 \
        --baseline-python /opt/t3backupd-dev/venv-main/bin/python --json bench/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from t3backupd.core.naming import format_name, parse_name

USER_PREFIX = "t3su"
TIMEOUT_SECONDS = 600.0


class Notify:
    """A NOTIFY_SOCKET recording (perf_counter, fields) per datagram."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            lines = data.decode("utf-8", "replace").splitlines()
            fields = dict(line.split("=", 1) for line in lines if "=" in line)
            self.messages.append((time.perf_counter(), fields))

    def first(self, predicate: Any, process: subprocess.Popen[bytes]) -> float | None:
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            for when, fields in list(self.messages):
                if predicate(fields):
                    return when
            time.sleep(0.002)
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        os.unlink(self.path)


def make_users(count: int, homes: Path) -> list[str]:
    names = [f"{USER_PREFIX}{index:04d}" for index in range(count)]
    homes.mkdir(mode=0o755, exist_ok=True)
    lines = "".join(
        f"{name}:{secrets.token_hex(16)}::::{homes / name}:/usr/sbin/nologin\n" for name in names
    )
    subprocess.run(["newusers"], input=lines.encode(), check=True, capture_output=True)
    return names


def remove_users(names: list[str]) -> None:
    for name in names:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def make_snapshots(dest: Path, names: list[str], count: int) -> None:
    """`count` daily snapshots (4 KiB each, with a checksum file) per user, user-owned."""
    import pwd

    dest.mkdir(mode=0o755)
    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    filenames = [format_name(newest - timedelta(days=day)) for day in range(count)]
    assert all(parse_name(name) is not None for name in filenames)
    for name in names:
        record = pwd.getpwnam(name)
        directory = dest / name
        directory.mkdir(mode=0o700)
        for filename in filenames:
            (directory / filename).write_bytes(b"\0" * 4096)
            (directory / (filename + ".sha256")).write_text(f"{'0' * 64}  {filename}\n")
        for path in [directory, *directory.iterdir()]:
            os.chown(path, record.pw_uid, record.pw_gid)


def write_config(directory: Path, names: list[str]) -> Path:
    usermap = directory / "usermap"
    usermap.write_text("".join(f"sso{index}={name}\n" for index, name in enumerate(names)))
    config = directory / "config.toml"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config.write_text(
        f'usermap = "{usermap}"\ndest = "{directory / "dest"}"\n'
        f'source = "{directory}/src/{{user}}.sqlite"\n'
        '[schedule]\ncron = "0 0 1 1 *"\ncatch_up = false\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n[log]\nformat = "json"\nlevel = "warning"\n'
    )
    return config


def one_start(python: str, config: Path, directory: Path) -> dict[str, float | None]:
    notify = Notify(directory / f"notify-{secrets.token_hex(3)}.sock")
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("NOTIFY_", "LISTEN_", "WATCHDOG_"))}  # fmt: skip
    environment["NOTIFY_SOCKET"] = notify.path
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            python,
            "-I",
            "-m",
            "t3backupd",
            "-c",
            str(config),
            "run",
            *([] if os.geteuid() == 0 else ["--unprivileged"]),
        ],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
    )
    try:
        ready = notify.first(lambda fields: fields.get("READY") == "1", process)
        listed = notify.first(
            lambda fields: "STATUS" in fields and "listing snapshots" not in fields["STATUS"],
            process,
        )
        return {
            "ready_s": None if ready is None else ready - started,
            # The previous version lists everyone before READY=1: listed = ready there.
            "listed_s": None if listed is None else listed - started,
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        notify.close()


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--snapshots", type=int, default=14)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-python", default="", help="a venv python of the old version")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root: real users own their snapshot directories", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="t3startup-", dir="/var/tmp"))
    directory.chmod(0o755)
    names: list[str] = []
    variants = {"current": sys.executable}
    if args.baseline_python:
        variants = {"baseline": args.baseline_python, **variants}
    runs: dict[str, list[dict[str, float | None]]] = {name: [] for name in variants}
    try:
        names = make_users(args.users, directory / "home")
        make_snapshots(directory / "dest", names, args.snapshots)
        config = write_config(directory, names)
        for _ in range(args.runs):
            for variant, python in variants.items():
                runs[variant].append(one_start(python, config, directory))
                print(variant, runs[variant][-1], file=sys.stderr, flush=True)
    finally:
        remove_users(names)
        shutil.rmtree(directory, ignore_errors=True)
    results: dict[str, Any] = {
        "users": args.users,
        "snapshots_per_user": args.snapshots,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "raw": runs,
    }
    for variant, items in runs.items():
        results[variant] = {
            "ready_s": median([item["ready_s"] for item in items]),
            "listed_s": median([item["listed_s"] for item in items]),
        }
    base, current = results.get("baseline"), results["current"]
    if base and base["ready_s"] and current["ready_s"]:
        results["ready_speedup"] = base["ready_s"] / current["ready_s"]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print("| version | exec->READY=1 s | exec->all listed s |\n|---|---:|---:|")
    for variant in runs:
        ready, listed = results[variant]["ready_s"], results[variant]["listed_s"]
        print(f"| {variant} | {ready if ready is None else round(ready, 2)} | "
              f"{listed if listed is None else round(listed, 2)} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
