"""`make demo`: a sandbox with a live, T3-shaped database, snapshotted by the real code.

As root it creates a dedicated demo user (home inside the sandbox) and shows the real
privilege drop; as a normal user it runs in non-root mode for that user. Steps: build a
WAL database of realistic shape, start a live writer as the owner, take a snapshot pass,
list it, then run the daemon in the foreground (every minute, catch-up on) until Ctrl-C.
`--clean` removes the demo user and the sandbox.

The demo user (`--user`, default `t3demo`) belongs to one sandbox: its home is inside it.
A user of that name whose home is elsewhere (another sandbox, or a real account) is
refused, never adopted, and `--clean` removes only a user whose home is in its sandbox,
so demos with different `--dir` and `--user` (the test's) never meet.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# t3backupd's default ledger_dir (root's record of what it published, one file per user).
LEDGER_DIR = "/var/lib/t3backupd/published"

DEMO_USER = "t3demo"
PROG = "t3backupd_dev.demo"
PYTHON = sys.executable


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


class _Refused(Exception):
    pass


def _home_is_in(record: pwd.struct_passwd, sandbox: Path) -> bool:
    return Path(os.path.abspath(record.pw_dir)).is_relative_to(sandbox / "home")


def _existing_user(sandbox: Path, name: str) -> pwd.struct_passwd | None:
    """The demo user if it exists and is this sandbox's; raises _Refused if it is not."""
    try:
        record = pwd.getpwnam(name)
    except KeyError:
        return None
    if not _home_is_in(record, sandbox):
        raise _Refused(
            f"user {name} exists with home {record.pw_dir}, outside {sandbox}: not a demo"
            f" user of this sandbox (clean its demo with --dir <its sandbox> --clean,"
            f" or pick another --user)"
        )
    return record


def _create_user(sandbox: Path, name: str) -> pwd.struct_passwd:
    home = sandbox / "home" / name
    home.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["useradd", "--create-home", "--home-dir", str(home), "--user-group",
         "--shell", "/usr/sbin/nologin", name],
        check=True,
    )  # fmt: skip
    return pwd.getpwnam(name)


def _as(record: pwd.struct_passwd) -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    return {"user": record.pw_uid, "group": record.pw_gid, "extra_groups": []}


def _environment(record: pwd.struct_passwd) -> dict[str, str]:
    return {"HOME": record.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def _write_config(sandbox: Path, record: pwd.struct_passwd, source: str, listen: str) -> Path:
    usermap = sandbox / "ttyd-user-map"
    usermap.write_text(f"# demo usermap: authentik_name=os_user\ndemo={record.pw_name}\n")
    config = sandbox / "config.toml"
    config.write_text(
        f'usermap = "{usermap}"\n'
        f'dest = "{sandbox / "backups"}"\n'
        f'source = "{source}"\n'
        f"min_uid = {min(1000, max(1, record.pw_uid))}\n"
        "[schedule]\n"
        'cron = "* * * * *"\n'
        "catch_up = true\n"
        "[retention]\n"
        "keep = 5\n"
        "[metrics]\n"
        f'listen = "{listen}"\n'
        "[log]\n"
        'format = "console"\n'
    )
    return config


def clean(sandbox: Path, name: str) -> int:
    if os.geteuid() == 0:
        try:
            record = pwd.getpwnam(name)
        except KeyError:
            record = None
        if record is not None and _home_is_in(record, sandbox):
            # The user exists only for this demo: end whatever still runs as it.
            subprocess.run(["pkill", "-u", str(record.pw_uid)], check=False)
            subprocess.run(["userdel", "--remove", name], check=False,
                           stderr=subprocess.DEVNULL)  # fmt: skip
            # And root's record of the snapshots it published for them (the ledger).
            for suffix in (".json", ".hold"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(LEDGER_DIR, name + suffix))
            print(f"removed user {name}")
        elif record is not None:
            print(f"kept user {name}: home {record.pw_dir} is not in {sandbox}")
    shutil.rmtree(sandbox, ignore_errors=True)
    print(f"removed {sandbox}")
    return 0


def _user_name(text: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,30}", text):
        raise argparse.ArgumentTypeError(f"not a valid user name: {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # A fixed, world-traversable place (workers run as another user); checked below.
    default_dir = "/var/tmp/t3backupd-demo"
    parser.add_argument("--dir", default=default_dir, help="sandbox directory")
    parser.add_argument("--size-mb", type=float, default=200, help="database size")
    parser.add_argument("--listen", default="127.0.0.1:9745", help="metrics address")
    parser.add_argument("--no-serve", action="store_true", help="stop after the first pass")
    parser.add_argument(
        "--user",
        default=DEMO_USER,
        type=_user_name,
        help=f"demo user as root (default {DEMO_USER})",
    )
    parser.add_argument("--clean", action="store_true", help="remove demo user and sandbox")
    args = parser.parse_args(argv)
    sandbox = Path(os.path.abspath(args.dir))
    if args.clean:
        return clean(sandbox, args.user)

    existing = None
    if os.geteuid() == 0:  # before anything is made: a refused demo leaves nothing behind
        try:
            existing = _existing_user(sandbox, args.user)
        except _Refused as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
    sandbox.mkdir(parents=True, exist_ok=True)
    info = os.lstat(sandbox)
    if info.st_uid != os.geteuid() or not Path(sandbox).is_dir() or Path(sandbox).is_symlink():
        print(f"{PROG}: {sandbox} exists and is not our directory", file=sys.stderr)
        return 2
    sandbox.chmod(0o755)  # workers (as the demo user) must traverse it
    if os.geteuid() == 0:
        record = existing or _create_user(sandbox, args.user)
        source = "{home}/.t3/userdata/state.sqlite"
        database = Path(record.pw_dir) / ".t3" / "userdata" / "state.sqlite"
        _say(f"running as root: demo user {record.pw_name} (uid {record.pw_uid}), "
             "workers drop to it")  # fmt: skip
    else:
        record = pwd.getpwuid(os.geteuid())
        source = f"{sandbox}/home/{{user}}/.t3/userdata/state.sqlite"
        database = sandbox / "home" / record.pw_name / ".t3" / "userdata" / "state.sqlite"
        _say(f"not root: non-root mode for {record.pw_name} (no uid switch)")
    config = _write_config(sandbox, record, source, args.listen)
    user_kwargs = _as(record)
    environment = _environment(record)

    if not database.exists():
        _say(f"building a {args.size_mb:.0f} MB T3-shaped WAL database at {database}")
        subprocess.run(["mkdir", "-p", str(database.parent)], check=True, cwd="/",
                       env=environment, **user_kwargs)  # type: ignore[call-overload]  # fmt: skip
        subprocess.run(
            [PYTHON, "-I", "-m", "t3backupd_dev.sampledb", "create", str(database),
             "--size-mb", str(args.size_mb)],
            check=True, cwd="/", env=environment, **user_kwargs,
        )  # type: ignore[call-overload]  # fmt: skip
    _say(f"starting the live writer (as {record.pw_name}, 50 commits/s)")
    writer = subprocess.Popen(
        [PYTHON, "-I", "-m", "t3backupd_dev.sampledb", "write", str(database), "--rate", "50"],
        cwd="/", env=environment, **user_kwargs,
    )  # type: ignore[call-overload]  # fmt: skip
    cli = [PYTHON, "-m", "t3backupd", "-c", str(config)]
    try:
        time.sleep(1)
        _say("one snapshot pass while the app writes: t3backupd snapshot")
        status = subprocess.run([*cli, "snapshot"], check=False).returncode
        _say("t3backupd list")
        subprocess.run([*cli, "list"], check=False)
        _say("t3backupd verify --latest (sha256 against NAME.sha256, then integrity_check)")
        status = subprocess.run([*cli, "verify", "--latest"], check=False).returncode or status
        if args.no_serve or status != 0:
            return status
        _say(f"the daemon, every minute; metrics at http://{args.listen}/metrics (Ctrl-C stops)")
        # Not root: the daemon serves only this user's entry, and must be told so.
        unprivileged = [] if os.geteuid() == 0 else ["--unprivileged"]
        daemon = subprocess.Popen([*cli, "run", *unprivileged])
        try:
            return daemon.wait()
        except KeyboardInterrupt:
            daemon.send_signal(signal.SIGTERM)
            return daemon.wait()
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(timeout=30)
        again = f"python -m {PROG} --dir {sandbox} --user {args.user} --clean"
        print(f"\nsandbox kept in {sandbox}; `{again}` (make demo-clean) removes it", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
